"""One IterativeTrainer step (SGD) under 1 or N processes, in plain and in GradCache mode,
InfoNCE with the triplet term; rank 0 saves the loss and the updated weights of each.

Run by tests/test_distributed.py in the test's own process (1 process, batch 2B) and under
`torchrun --nproc_per_node 2` (2 processes, batch B each): the global batch is the same,
so the updated weights must be the same.
"""

import os
import sys

import torch

from src.arguments import IterativeTrainingArguments
from src.data.collator import ContrastiveCollator
from src.data.dataset.composed_retrieval_dataset import ComposedRetrievalDataset
from src.data.loading import load_split
from src.distributed import process_group, rank
from src.model.encoder import build_encoder
from src.trainer_iterative import IterativeTrainer

model_dir, dataset_dir, per_device_batch, output = sys.argv[1:5]
split = load_split("cirr", dataset_dir, "train")
names = sorted(split.images)
triplets = split.triplets[:16]
negatives = {t.pairid: [n for n in names if n not in (t.target, t.reference)][:2] for t in triplets}


def one_step(grad_cache: bool) -> dict:
    """One SGD step from the same initial weights; the loss and the weights after it."""
    torch.manual_seed(0)
    dataset = ComposedRetrievalDataset(split, triplets, negatives, num_hard_negatives=1, seed=0)
    encoder = build_encoder(model_dir, dtype="float32")
    initial = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    args = IterativeTrainingArguments(
        output_dir=output + ".trainer",
        report_to="none",
        remove_unused_columns=False,
        per_device_train_batch_size=int(per_device_batch),
        max_steps=1,
        optim="sgd",
        learning_rate=1.0,
        lr_scheduler_type="constant",
        save_strategy="no",
        dataloader_num_workers=0,
        use_cpu=True,
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        seed=0,
        grad_cache=grad_cache,
        temperature=0.05,
        triplet_loss_weight=0.5,  # the triplet term's negatives are gathered by owner
        triplet_margin=0.2,
    )
    trainer = IterativeTrainer(
        model=encoder,
        args=args,
        train_dataset=dataset,
        data_collator=ContrastiveCollator(
            encoder.processor, encoder.backbone, chunk_size=3 if grad_cache else None
        ),
    )
    result = trainer.train()
    weights = {n: p.detach() for n, p in encoder.named_parameters()}
    # DDP's own setting (None with one process, which has no DDP wrapper)
    find_unused = getattr(trainer.model_wrapped, "find_unused_parameters", None)
    return {"loss": result.training_loss, "weights": weights, "initial": initial, "find_unused": find_unused}


with process_group():  # torn down at the end, as the entry points do
    outcome = {mode: one_step(mode == "grad_cache") for mode in ("plain", "grad_cache")}
    if rank() == 0:
        torch.save(outcome, output)
