"""One round's training: an IterativeTrainer over the round's dataset, resumable mid-round.

Each Trainer checkpoint `checkpoint-N` gets `checkpoint_files.json`, the size and hash of
every file in it, once the Trainer has finished saving it (a callback); a resumed round
starts from the newest checkpoint whose files all match, so one cut off while being saved
or damaged afterwards is never resumed from. SIGTERM (a cluster's preemption, or torchrun
stopping the job) makes the Trainer save a checkpoint at the end of the current step and
stop; the round then ends with `TrainingInterrupted` instead of a half-trained checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import shutil
import signal
import time
from pathlib import Path

from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback

from src.arguments import IterativeTrainingArguments
from src.data.collator import ContrastiveCollator
from src.data.dataset.composed_retrieval_dataset import ComposedRetrievalDataset
from src.data.image_store import ModelImages
from src.distributed import (
    any_process,
    barrier,
    decided_by_main,
    shared_directory_wait_s,
    world_size,
)
from src.errors import TrainingInterrupted
from src.experiment_io import read_json, write_json_atomic
from src.faults import fault_point
from src.integrity import DigestCache
from src.model.encoder import VLM2VecEncoder
from src.records import TrainSummary
from src.trainer_iterative import IterativeTrainer

logger = logging.getLogger(__name__)

CHECKPOINT_FILES_NAME = "checkpoint_files.json"


class RecordCheckpointFiles(TrainerCallback):
    """After the Trainer saved checkpoint-N: record its files (rank 0), then the fault point.

    Every process writes its own files into checkpoint-N (`rng_state_{rank}.pth`), and the
    Trainer does not wait for them before the callbacks run; so every process waits here
    first (a barrier), and rank 0 then waits until it sees every process's file (a network
    filesystem may list a new name late, src/distributed.py `shared_directory_wait_s`). A file
    recorded late would be "added after" its record, and a resume would discard the
    checkpoint and restart the round.
    """

    def __init__(self, iteration: int):
        self.iteration = iteration

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        barrier()  # every process has written its part of checkpoint-N
        if state.is_world_process_zero and checkpoint.is_dir():
            _wait_for_every_process_file(checkpoint)
            records = DigestCache().directory(checkpoint, skip=(CHECKPOINT_FILES_NAME,))
            write_json_atomic(checkpoint / CHECKPOINT_FILES_NAME, records)
        fault_point("training", state.global_step, self.iteration)


def _wait_for_every_process_file(checkpoint: Path) -> None:
    """Until every process's RNG state is listed in `checkpoint` (several processes only)."""
    processes = world_size()
    if processes == 1:
        return
    expected = {f"rng_state_{r}.pth" for r in range(processes)}
    deadline = time.monotonic() + shared_directory_wait_s()
    while missing := expected - {path.name for path in checkpoint.iterdir()}:
        if time.monotonic() > deadline:
            logger.warning("%s: %s not seen before recording its files", checkpoint, sorted(missing))
            return
        time.sleep(0.2)


class StopOnSigterm(TrainerCallback):
    """On SIGTERM: save a checkpoint at the end of the current step and stop training."""

    def __init__(self):
        self.received = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        self.received = True

    def on_train_begin(self, args, state, control, **kwargs):
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def on_step_end(self, args, state, control, **kwargs):
        if any_process(self.received):  # every process stops at the same step
            self.received = True
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def optimizer_steps(args: IterativeTrainingArguments, samples: int, processes: int) -> int:
    """Optimizer steps of a round over `samples` triplets on `processes` processes."""
    if args.max_steps > 0:
        return args.max_steps
    per_step = args.per_device_train_batch_size * processes * args.gradient_accumulation_steps
    return math.ceil(math.ceil(samples / per_step) * args.num_train_epochs)


def train_round(
    encoder: VLM2VecEncoder,
    dataset: ComposedRetrievalDataset,
    training_args: IterativeTrainingArguments,
    instruction_set: str,
    output_dir: Path,
    iteration: int = 0,
    tensorboard_dir: Path | None = None,
    image_store: str | Path | None = None,
) -> TrainSummary:
    """Train `encoder` in place; resumes from the last complete `checkpoint-N` in `output_dir`.
    With `--report_to tensorboard`, the round's logs go to `tensorboard_dir`; with
    `image_store` (a directory), the dataset's images come from the image store at the
    encoder's pixel budget (src/data/image_store.py: the same pixel values)."""
    args = dataclasses.replace(training_args, output_dir=str(output_dir))
    dataset.use_images(ModelImages(encoder.processor, image_store))
    collator = ContrastiveCollator(
        encoder.processor,
        encoder.backbone,
        instruction_set,
        chunk_size=args.gc_mini_batch_size if args.grad_cache else None,
    )
    stop = StopOnSigterm()
    trainer = IterativeTrainer(
        model=encoder,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        callbacks=[RecordCheckpointFiles(iteration), stop],
    )
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback):  # one TensorBoard run per round
            callback.logging_dir = str(tensorboard_dir or output_dir / "runs")
    last = last_complete_checkpoint(output_dir)
    if last:
        logger.info("resuming training from %s", last)
    result = trainer.train(resume_from_checkpoint=last)
    release_trainer(trainer)
    if stop.received:
        raise TrainingInterrupted(
            f"stopped by SIGTERM after saving {output_dir}/checkpoint-{result.global_step}; "
            "continue with --auto_resume"
        )
    return TrainSummary(
        train_loss=result.training_loss,
        steps=result.global_step,
        resumed_from=last,
        processes=trainer.args.world_size,  # DDP really spans them (docs/notes.md)
        num_samples=len(dataset),
    )


def release_trainer(trainer: IterativeTrainer) -> None:
    """Let the trained model go as soon as its last holder drops it.

    Under mixed precision accelerate replaces the prepared model's `forward` with a wrapper
    bound to the model (kept in the model's own `__dict__`, beside `_original_forward`): a
    reference cycle, which only the garbage collector frees, so the model (and on a GPU its
    memory) would stay into mining and evaluation. The wrapper is removed (the class's own
    forward serves again) and accelerate drops its references to models, optimizers and
    loaders (`free_memory`).
    """
    for module in {id(m): m for m in (trainer.model_wrapped, *trainer.model.modules())}.values():
        if "_original_forward" in module.__dict__:
            module.__dict__.pop("forward", None)
            module.__dict__.pop("_original_forward", None)
    trainer.accelerator.free_memory()


def last_complete_checkpoint(output_dir: Path) -> str | None:
    """The newest `checkpoint-N` whose files match their records, the same on every process.

    Rank 0 decides; it removes the newer checkpoints that do not match (cut off while being
    saved, or damaged since: they hold nothing that can be resumed).
    """
    return decided_by_main(lambda: _newest_complete_checkpoint(output_dir))


def _newest_complete_checkpoint(output_dir: Path) -> str | None:
    if not output_dir.is_dir():
        return None
    numbered = sorted(
        (
            (int(match.group(1)), path)
            for path in output_dir.iterdir()
            if (match := re.fullmatch(r"checkpoint-(\d+)", path.name)) and path.is_dir()
        ),
        reverse=True,
    )
    for _, path in numbered:
        reason = _incomplete(path)
        if reason is None:
            return str(path)
        logger.warning("removing %s: %s", path, reason)
        shutil.rmtree(path)
    return None


def _incomplete(checkpoint: Path) -> str | None:
    """Why a Trainer checkpoint cannot be resumed from (None: every file matches its record)."""
    records_file = checkpoint / CHECKPOINT_FILES_NAME
    if not records_file.is_file():
        return "interrupted while it was being saved (no record of its files)"
    try:
        records = read_json(records_file)
    except ValueError as error:
        return str(error)
    return DigestCache().directory_mismatch(checkpoint, records, skip=(CHECKPOINT_FILES_NAME,))
