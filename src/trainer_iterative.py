"""IterativeTrainer: the Hugging Face Trainer with a contrastive loss.

It overrides `compute_loss` (the loss), `_save` / `_load_from_checkpoint` (an embedder
checkpoint is a standard checkpoint plus embedder_config.json) and, for grouped batches
only, `get_train_dataloader`. Backward, optimizer, schedule, logging and checkpoints are
the Trainer's own.

Cached mode (GradCache, Gao et al. 2021) runs the model chunk by chunk without a graph,
computes the loss and its gradient with respect to every embedding, and returns a
detached loss with a backward hook. When the Trainer calls backward on it, the hook
replays each chunk with the same random state and back-propagates the cached embedding
gradients, so the contrastive batch can be far larger than what fits through the model
at once while the Trainer's backward, gradient accumulation and DDP still apply.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from functools import partial

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from src.arguments import IterativeTrainingArguments, resolve_bf16
from src.data.grouped_sampler import GroupedBatchSampler
from src.data.loader_memory import fit_loader
from src.distributed import data_parallel_refusal, gather_with_local_grad
from src.loss import ContrastiveBatch, contrastive_loss
from src.model.encoder import VLM2VecEncoder, load_weights_into

logger = logging.getLogger("training")


class RandomState:
    """The CPU and current-device RNG states, to replay a forward pass identically."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def restored(self) -> Iterator[None]:
        devices = [self.device] if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


class EpochCallback(TrainerCallback):
    """Tells the dataset the epoch, so that it rotates each query's hard negatives."""

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        dataset = kwargs.get("train_dataset") or getattr(train_dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(int(state.epoch or 0))


class IterativeTrainer(Trainer):
    """The Trainer with the contrastive loss; its settings come with the arguments
    (`IterativeTrainingArguments`: temperature, grad_cache, group_by_reference, ...)."""

    args: IterativeTrainingArguments

    def __init__(self, model: VLM2VecEncoder, args: IterativeTrainingArguments, **kwargs):
        if args.n_gpu > 1:  # the Trainer would wrap the model in nn.DataParallel
            raise data_parallel_refusal(args.n_gpu)
        fallback = resolve_bf16(args)  # --bf16 from this process's own GPU (CLI: done already)
        if fallback:
            logger.warning(fallback)
        if args.ddp_find_unused_parameters is None:
            # Otherwise DDP walks the graph after every backward (the encoder is no
            # PreTrainedModel, so the Trainer would assume unused parameters).
            args.ddp_find_unused_parameters = not model.backbone.runs_every_parameter
        super().__init__(model=model, args=args, **kwargs)
        self._shapes_logged = False
        self._loader_fitted = False
        self.add_callback(EpochCallback())

    def _encoder(self) -> VLM2VecEncoder:
        return self.accelerator.unwrap_model(self.model)

    def _loss(self, queries: torch.Tensor, candidates: torch.Tensor, inputs: dict) -> torch.Tensor:
        num_positives = inputs["positive_ids"].shape[0]
        batch = ContrastiveBatch(
            query=gather_with_local_grad(queries),
            positive=gather_with_local_grad(candidates[:num_positives]),
            negative=gather_with_local_grad(candidates[num_positives:]),
            positive_ids=gather_with_local_grad(inputs["positive_ids"]),
            negative_ids=gather_with_local_grad(inputs["negative_ids"]),
            group_ids=gather_with_local_grad(inputs["group_ids"]),
            query_ids=gather_with_local_grad(inputs["query_ids"]),
            negative_owners=gather_with_local_grad(inputs["negative_owners"]),
        )
        args = self.args
        return contrastive_loss(
            batch, args.temperature, args.group_loss_weight, args.triplet_loss_weight, args.triplet_margin
        )

    def _log_shapes_once(self, inputs: dict) -> None:
        """Image tokens per image and sequence lengths of the round's first batch, once."""
        if self._shapes_logged:
            return
        self._shapes_logged = True
        encoder = self._encoder()
        image_id = encoder.processor.tokenizer.convert_tokens_to_ids(encoder.backbone.image_token)
        chunks = inputs["query_chunks"] + inputs["candidate_chunks"]
        tokens = torch.cat([(c["input_ids"] == image_id).sum(1) for c in chunks]).float()
        lengths = torch.cat([c["attention_mask"].sum(1) for c in chunks]).float()
        logger.info(
            "first batch: %d sequences; image tokens per image mean %.1f, max %d; sequence "
            "length mean %.1f, max %d",
            len(lengths),
            tokens.mean(),
            tokens.max(),
            lengths.mean(),
            lengths.max(),
        )

    def compute_loss(
        self, model: nn.Module, inputs: dict, return_outputs: bool = False, num_items_in_batch=None
    ):
        self._log_shapes_once(inputs)
        if self.args.grad_cache:
            loss = self._cached_loss(model, inputs)
        else:
            queries = torch.cat([model(**chunk) for chunk in inputs["query_chunks"]])
            candidates = torch.cat([model(**chunk) for chunk in inputs["candidate_chunks"]])
            loss = self._loss(queries, candidates, inputs)
        return (loss, None) if return_outputs else loss

    def _cached_loss(self, model: nn.Module, inputs: dict) -> torch.Tensor:
        chunks = inputs["query_chunks"] + inputs["candidate_chunks"]
        states, embeddings = [], []
        with torch.no_grad():
            for chunk in chunks:
                states.append(RandomState(self.args.device))
                embeddings.append(model(**chunk))
        embeddings = [e.detach().requires_grad_() for e in embeddings]
        num_query_chunks = len(inputs["query_chunks"])
        loss = self._loss(
            torch.cat(embeddings[:num_query_chunks]),
            torch.cat(embeddings[num_query_chunks:]),
            inputs,
        )
        loss.backward()
        cached = [e.grad for e in embeddings]
        loss = loss.detach().requires_grad_()
        loss.register_hook(partial(_replay_chunks, model, chunks, states, cached))
        return loss

    def _fit_workers_to_memory(self) -> None:
        """DataLoader workers and prefetch from one batch collated here, as the workers would
        collate it, and this node's free shared and host memory (src/data/loader_memory.py)."""
        args, dataset = self.args, self.train_dataset
        if args.dataloader_num_workers < 1 or self._loader_fitted or not len(dataset):
            return
        self._loader_fitted = True
        rows = min(len(dataset), self._train_batch_size)
        first = self.data_collator([dataset[i] for i in range(rows)])
        plan = fit_loader(args.dataloader_num_workers, args.dataloader_prefetch_factor, first)
        args.dataloader_num_workers = plan.workers
        args.dataloader_prefetch_factor = plan.prefetch if plan.workers else None

    def get_train_dataloader(self):
        self._fit_workers_to_memory()
        if not self.args.group_by_reference:
            return super().get_train_dataloader()
        dataset = self.train_dataset
        sampler = GroupedBatchSampler(
            [dataset.group_of(i) for i in range(len(dataset))],
            batch_size=self._train_batch_size,
            seed=self.args.seed,
        )
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            prefetch_factor=self.args.dataloader_prefetch_factor,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        self._encoder().save(output_dir or self.args.output_dir)

    def _load_from_checkpoint(
        self, resume_from_checkpoint: str, model: nn.Module | None = None
    ) -> None:
        load_weights_into(self._encoder(), resume_from_checkpoint)


def _replay_chunks(model, chunks, states, cached_grads, grad_output: torch.Tensor) -> None:
    """Second GradCache pass: forward each chunk with a graph, back-propagate its cached gradient.

    Under DDP, gradients are synchronised only with the last chunk's backward.
    """
    last = len(chunks) - 1
    for i, (chunk, state, grad) in enumerate(zip(chunks, states, cached_grads, strict=True)):
        sync = (
            contextlib.nullcontext()
            if i == last or not hasattr(model, "no_sync")
            else model.no_sync()
        )
        with sync, state.restored(), torch.enable_grad():
            embeddings = model(**chunk)
            embeddings.backward(grad * grad_output)
