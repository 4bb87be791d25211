"""IterativeTrainer: cached mode equals plain mode, each backbone trains, grouped batches."""

import copy

import pytest
import torch

from src.arguments import IterativeTrainingArguments, ModelArguments
from src.data.collator import ContrastiveCollator
from src.data.dataset.composed_retrieval_dataset import ComposedRetrievalDataset
from src.data.grouped_sampler import GroupedBatchSampler
from src.data.records import Split, Triplet
from src.model.encoder import build_encoder, resolve_dtype
from src.trainer_iterative import IterativeTrainer


def trainer_args(tmp_path, **kw):
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        report_to="none",
        remove_unused_columns=False,
        per_device_train_batch_size=4,
        max_steps=1,
        save_strategy="no",
        dataloader_num_workers=0,
        use_cpu=True,
    )
    return IterativeTrainingArguments(**(defaults | kw))


def hard_negative_dataset(split: Split, num_hard_negatives=2, seed=0):
    triplets = split.triplets[:8]
    names = sorted(split.images)
    negatives = {
        t.pairid: [n for n in names if n not in (t.target, t.reference)][:3] for t in triplets
    }
    return ComposedRetrievalDataset(split, triplets, negatives, num_hard_negatives, seed=seed)


def test_cached_mode_matches_plain_loss_and_gradients(tiny_qwen, small_train_split, tmp_path):
    """GradCache gives the same loss and parameter gradients (max abs diff < 1e-5)."""
    torch.manual_seed(0)
    encoder = build_encoder(tiny_qwen, dtype="float32")
    dataset = hard_negative_dataset(small_train_split)
    features = [dataset[i] for i in range(6)]
    results = {}
    for cached in (False, True):
        model = copy.deepcopy(encoder)
        collator = ContrastiveCollator(
            model.processor, model.backbone, chunk_size=4 if cached else None
        )
        args = trainer_args(
            tmp_path, grad_cache=cached, temperature=0.05, group_by_reference=True, group_loss_weight=0.5
        )
        trainer = IterativeTrainer(model=model, args=args, data_collator=collator)
        inputs = trainer._prepare_inputs(collator(features))
        assert len(inputs["query_chunks"]) == (2 if cached else 1)
        loss = trainer.compute_loss(model, inputs)
        (loss * 0.5).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[cached] = (loss.item(), grads)
    (plain_loss, plain_grads), (cached_loss, cached_grads) = results[False], results[True]
    assert cached_loss == pytest.approx(plain_loss, abs=1e-5)
    assert plain_grads.keys() == cached_grads.keys() and len(plain_grads) > 10
    for name, grad in plain_grads.items():
        assert torch.allclose(grad, cached_grads[name], atol=1e-5), name


@pytest.mark.parametrize("backbone", ["qwen2_vl", "qwen2_5_vl", "llava_next"])
def test_each_backbone_runs_a_training_step(tiny_model_dirs, small_train_split, tmp_path, backbone):
    encoder = build_encoder(tiny_model_dirs[backbone], ModelArguments(lora=backbone == "llava_next", lora_r=4))
    before = {n: p.detach().clone() for n, p in encoder.named_parameters() if p.requires_grad}
    trainer = IterativeTrainer(
        model=encoder,
        args=trainer_args(tmp_path, learning_rate=1e-2),
        train_dataset=hard_negative_dataset(small_train_split),
        data_collator=ContrastiveCollator(encoder.processor, encoder.backbone),
    )
    result = trainer.train()
    assert result.global_step == 1 and result.training_loss > 0
    changed = [
        n
        for n, p in encoder.named_parameters()
        if p.requires_grad and not torch.equal(p, before[n])
    ]
    assert changed


def test_grouped_sampler_keeps_groups_whole_and_covers_every_sample_once():
    group_ids = [i // 3 for i in range(30)] + [100 + i for i in range(17)]
    sampler = GroupedBatchSampler(group_ids, batch_size=8, seed=1)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(len(group_ids)))
        for batch in batches:
            for group in {group_ids[i] for i in batch}:
                members = [i for i, g in enumerate(group_ids) if g == group]
                assert set(members) <= set(batch)
        epochs.append(batches)
    assert epochs[0] != epochs[1]


def test_grouped_training_runs_through_the_trainer(tiny_qwen, small_train_split, tmp_path):
    encoder = build_encoder(tiny_qwen, dtype="float32")
    trainer = IterativeTrainer(
        model=encoder,
        args=trainer_args(tmp_path, max_steps=2, group_by_reference=True, group_loss_weight=1.0),
        train_dataset=hard_negative_dataset(small_train_split),
        data_collator=ContrastiveCollator(encoder.processor, encoder.backbone),
    )
    assert trainer.train().global_step == 2


def test_hard_negatives_rotate_per_epoch_with_a_seed(small_train_split):
    dataset = hard_negative_dataset(small_train_split, num_hard_negatives=1, seed=3)
    seen = set()
    for epoch in range(3):
        dataset.set_epoch(epoch)
        seen.add(dataset.negatives_of(0)[0])
    assert len(seen) == 3
    again = hard_negative_dataset(small_train_split, num_hard_negatives=1, seed=3)
    again.set_epoch(2)
    assert again.negatives_of(0) == dataset.negatives_of(0)


def test_training_refuses_unlabelled_triplets(small_train_split):
    split = Split("test", [Triplet("1", "a", "x")], {"a": "a.png"})
    with pytest.raises(ValueError, match="no target"):
        ComposedRetrievalDataset(split, split.triplets)
    assert small_train_split.has_labels


@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_gives_the_same_step(tiny_qwen, small_train_split, tmp_path, lora):
    losses = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        encoder = build_encoder(tiny_qwen, ModelArguments(lora=lora, lora_r=4, lora_dropout=0.0))
        trainer = IterativeTrainer(
            model=encoder,
            args=trainer_args(tmp_path, max_steps=2, gradient_checkpointing=checkpointing),
            train_dataset=hard_negative_dataset(small_train_split),
            data_collator=ContrastiveCollator(encoder.processor, encoder.backbone),
        )
        hf_model = encoder.model.get_base_model() if lora else encoder.model
        backward_calls: list[int] = []
        hf_model.model.visual.patch_embed.register_full_backward_hook(
            lambda *args, calls=backward_calls: calls.append(1)
        )
        losses.append(trainer.train().training_loss)
        assert hf_model.is_gradient_checkpointing == checkpointing
        # Under LoRA Qwen2-VL's vision tower is frozen: no gradient runs through it.
        assert bool(backward_calls) == (not lora), (lora, checkpointing, len(backward_calls))
    assert losses[1] == pytest.approx(losses[0], abs=1e-5)


@pytest.mark.parametrize("even_batches", [True, False])
def test_grouped_batches_stay_whole_when_accelerate_shards_them_over_two_processes(even_batches):
    from accelerate.data_loader import BatchSamplerShard

    group_ids = [i // 3 for i in range(30)] + [100 + i for i in range(11)]
    sampler = GroupedBatchSampler(group_ids, batch_size=6, seed=0)
    seen = []
    for process in range(2):
        shard = BatchSamplerShard(
            sampler, num_processes=2, process_index=process, even_batches=even_batches
        )
        for batch in shard:
            groups = {group_ids[i] for i in batch}
            assert all(
                set(batch) >= {i for i, g in enumerate(group_ids) if g == group} for group in groups
            )
            seen.extend(batch)
    assert set(seen) == set(range(len(group_ids)))
    if not even_batches:
        assert sorted(seen) == list(range(len(group_ids)))


def test_the_trainer_tells_the_dataset_each_epoch(tiny_qwen, small_train_split, tmp_path):
    encoder = build_encoder(tiny_qwen, dtype="float32")
    dataset = hard_negative_dataset(small_train_split, num_hard_negatives=1)
    epochs = []
    original = dataset.set_epoch
    dataset.set_epoch = lambda epoch: (epochs.append(epoch), original(epoch))
    trainer = IterativeTrainer(
        model=encoder,
        args=trainer_args(tmp_path, max_steps=-1, num_train_epochs=3),
        train_dataset=dataset,
        data_collator=ContrastiveCollator(encoder.processor, encoder.backbone),
    )
    trainer.train()
    assert epochs[-1] == 2 and dataset.epoch == 2 and sorted(set(epochs)) == [0, 1, 2]


def test_full_fine_tuning_keeps_float32_weights_so_small_updates_land(
    tiny_qwen, small_train_split, tmp_path, monkeypatch
):
    """On a GPU with bfloat16, `--torch_dtype auto` still loads the weights a full fine-tuning
    updates in float32 (simulated GPU below); one AdamW step at lr 1e-5 then moves the norm
    weights. The same step on bfloat16 weights leaves them where they were: 1.0 +- 1e-5
    rounds back to 1.0 (bfloat16's step near 1.0 is 2^-7)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert resolve_dtype("auto") == torch.bfloat16  # inference and a frozen LoRA base
    assert resolve_dtype("auto", trains_all_weights=True) == torch.float32
    monkeypatch.undo()

    def norm_weights_after_one_step(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        encoder = build_encoder(tiny_qwen, dtype="float32")
        encoder.to(dtype)
        norms = [p for n, p in encoder.named_parameters() if n.endswith("norm.weight") and p.requires_grad]
        before = torch.cat([p.detach().flatten().float() for p in norms])
        trainer = IterativeTrainer(
            model=encoder,
            args=trainer_args(tmp_path, learning_rate=1e-5, lr_scheduler_type="constant", optim="adamw_torch"),
            train_dataset=hard_negative_dataset(small_train_split, num_hard_negatives=0),
            data_collator=ContrastiveCollator(encoder.processor, encoder.backbone),
        )
        trainer.train()
        return before, torch.cat([p.detach().flatten().float() for p in norms])

    before, after = norm_weights_after_one_step(torch.float32)
    assert (after != before).float().mean() > 0.9
    before, after = norm_weights_after_one_step(torch.bfloat16)
    assert torch.equal(after, before)


def test_the_trainer_refuses_to_drive_several_gpus_with_data_parallel(tiny_qwen, tmp_path):
    """Built directly (the GPU check, the benchmark scripts) on a node whose process sees
    several GPUs, the Trainer would wrap the model in nn.DataParallel; it refuses instead."""
    from src.errors import ArgumentError

    args = trainer_args(tmp_path)
    assert args.n_gpu == 0  # the CPU here
    args._n_gpu = 4  # what TrainingArguments finds without LOCAL_RANK on a 4-GPU node
    with pytest.raises(ArgumentError, match="sees 4 GPUs and would train with nn.DataParallel"):
        IterativeTrainer(model=build_encoder(tiny_qwen, dtype="float32"), args=args)


def test_checkpoint_records_wait_for_every_process_files(tmp_path, monkeypatch):
    """Every process writes its own RNG state into checkpoint-N and the Trainer does not wait
    for them before its callbacks: the record is written only after a barrier, so a file of
    another process is never "added after" it (a resume would otherwise discard the
    checkpoint and restart the round)."""
    from types import SimpleNamespace

    from src import training

    checkpoint = tmp_path / "checkpoint-2"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    (checkpoint / "rng_state_0.pth").write_bytes(b"rank 0")
    arrived = []

    def other_process_finishes_saving():
        (checkpoint / "rng_state_1.pth").write_bytes(b"rank 1")
        arrived.append(True)

    monkeypatch.setattr(training, "barrier", other_process_finishes_saving, raising=False)
    state = SimpleNamespace(global_step=2, is_world_process_zero=True)
    training.RecordCheckpointFiles(0).on_save(SimpleNamespace(output_dir=str(tmp_path)), state, None)
    if not arrived:  # nothing waited: rank 1's file lands after rank 0 recorded the folder
        other_process_finishes_saving()
    assert training._incomplete(checkpoint) is None
    assert training.last_complete_checkpoint(tmp_path) == str(checkpoint)


def test_the_trained_model_is_freed_when_the_round_drops_it(tiny_qwen, small_train_split, tmp_path):
    """Under mixed precision accelerate wraps the model's forward in a method bound to the
    model: a reference cycle that kept the trained model (on a GPU: its memory) alive into
    mining and evaluation, until a garbage collection that nothing ran. bf16 autocast on the
    CPU installs the same wrapper."""
    import gc
    import weakref

    from src.training import train_round

    def train_and_drop() -> weakref.ref:
        encoder = build_encoder(tiny_qwen, ModelArguments(lora=True, lora_r=4))
        dataset = ComposedRetrievalDataset(small_train_split, small_train_split.triplets[:8])
        train_round(encoder, dataset, trainer_args(tmp_path, bf16=True), "cirr", tmp_path / "round")
        return weakref.ref(encoder)

    gc.collect()
    gc.disable()
    try:
        trained = train_and_drop()
        assert trained() is None
    finally:
        gc.enable()
