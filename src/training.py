"""One round's training: an IterativeTrainer over the round's dataset, resumable mid-round."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
from pathlib import Path

from transformers import TrainingArguments

from src.data.collator import ContrastiveCollator
from src.data.dataset.composed_retrieval_dataset import ComposedRetrievalDataset
from src.model.encoder import VLM2VecEncoder
from src.trainer_iterative import IterativeTrainer

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class LossOptions:
    temperature: float = 0.02
    group_loss_weight: float = 0.0
    grad_cache: bool = False
    gc_mini_batch_size: int = 32
    group_by_reference: bool = False


def train_round(
    encoder: VLM2VecEncoder,
    dataset: ComposedRetrievalDataset,
    training_args: TrainingArguments,
    loss: LossOptions,
    instruction_set: str,
    output_dir: Path,
) -> dict:
    """Train `encoder` in place; resumes from the last `checkpoint-N` in `output_dir` if any."""
    args = dataclasses.replace(training_args, output_dir=str(output_dir))
    collator = ContrastiveCollator(
        encoder.processor,
        encoder.backbone,
        instruction_set,
        chunk_size=loss.gc_mini_batch_size if loss.grad_cache else None,
    )
    trainer = IterativeTrainer(
        model=encoder,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        temperature=loss.temperature,
        group_loss_weight=loss.group_loss_weight,
        grad_cache=loss.grad_cache,
        group_by_reference=loss.group_by_reference,
    )
    last = last_complete_checkpoint(output_dir)
    if last:
        logger.info("resuming training from %s", last)
    result = trainer.train(resume_from_checkpoint=last)
    return {"train_loss": result.training_loss, "steps": result.global_step, "resumed_from": last}


def last_complete_checkpoint(output_dir: Path) -> str | None:
    """The newest `checkpoint-N` that the Trainer finished writing, or None.

    The Trainer writes trainer_state.json last, so a checkpoint without a readable one was
    interrupted mid-save: it is removed (it holds nothing that can be resumed) and the
    previous one is used.
    """
    if not output_dir.is_dir():
        return None
    numbered = []
    for path in output_dir.iterdir():
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and path.is_dir():
            numbered.append((int(match.group(1)), path))
    for _, path in sorted(numbered, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text())
            return str(path)
        except (OSError, ValueError):
            logger.warning("removing %s: interrupted while it was being saved", path)
            shutil.rmtree(path)
    return None
