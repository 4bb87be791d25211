"""Every cross-process operation of the project, and the process group's life.

Under torchrun or accelerate the process group is set up by `TrainingArguments.device`
(through accelerate's PartialState); `process_group()` wraps an entry point so that it is
torn down on every exit path (success, user error, exception): without that, gloo's
threads can abort the interpreter at exit ("terminate called without an active
exception"). When one rank fails, torchrun stops the others with SIGTERM and kills them
30 s later (its grace period), so no rank waits for a dead peer longer than that.

Two rules hold here, because breaking them cannot show on a CPU with gloo:

- Every tensor handed to a collective lives on `collective_device()`, the device the
  process group's backend serves: NCCL serves only this process's GPU, so a tensor made
  without a device (on the CPU) fails there ("No backend type associated with device type
  cpu") although it works under gloo. No other module calls `torch.distributed`.
- A decision every process must share (is a stage done, is an embedding cached, where to
  resume) is taken once, on rank 0, and broadcast (`decided_by_main`): on a network
  filesystem ranks can see different files for a while, and ranks that disagree enter
  different collectives and hang until the NCCL timeout.

Why rank, world size, `barrier`, `main_process_first`, `gather_objects` and
`broadcast_object` read torch.distributed instead of calling accelerate's (PartialState's
`process_index`, `num_processes`, `is_main_process`, `wait_for_everyone`,
`main_process_first`; `accelerate.utils.gather_object`, `broadcast_object_list`, `reduce`):
those read the PartialState singleton, which does not always describe the group there is
(accelerate 1.16, accelerate/state.py; measured under torchrun with 2 CPU processes):

- Without an accelerator and without `cpu=True` it records one process (state.py:284-288)
  even inside a gloo group of two set up by `torch.distributed.init_process_group` (as
  tests/test_augment_stage.py's two-process script and tests/scripts/cpu_tensor_collective.py
  do): every rank is then "main", and `gather_object` / `broadcast_object_list` return the
  local value without exchanging anything (utils/operations.py:508, 674; rank 1's
  `broadcast_object_list(["from1"])` returned `["from1"]`).
- `PartialState()` is no query: its first call under torchrun initialises a process group
  when there is none (state.py:241; none before, a 2-process `cpu:gloo` group after, while
  it reports 1 process), sets the CUDA device (state.py:806), and with `cpu=True` rewrites
  RANK/WORLD_SIZE/LOCAL_RANK (state.py:246-249). A helper asked before
  `TrainingArguments.device` would set the group up without --ddp_timeout: transformers
  resets the singleton (training_args.py:1872) but keeps the group (state.py:218).
- It is filled once and never re-read (state.py:175-176): after `process_group()` tears the
  group down it still reports 2 processes, and its barrier and object collectives raise
  "Default process group has not been initialized", where these helpers answer as one
  process.

Where the singleton is right (set up by the Trainer, or one process without torchrun's
environment) both give the same guarantees: the same torch.distributed object collectives
on the current CUDA device, and no-ops for one process; so nothing is lost here.

What accelerate has no counterpart for stays too, one reason each:

- `collective_device`: accelerate's tensor operations take the caller's tensor where it lies
  and name no device a backend serves (`cpu:gloo,cuda:nccl` serves the CPU).
- `any_process`: `accelerate.utils.reduce(..., "max")` goes through the same singleton.
- `decided_by_main`: accelerate broadcasts values, not a decision together with the error
  raised while taking it.
- `checked_everywhere`: accelerate cannot stop every process with the line of the one whose
  check failed.
- `check_shared_directory`: accelerate assumes every node sees the same files and never
  checks it.
- `gather_with_local_grad`: `accelerate.utils.gather` needs the same rows on every process
  and carries no gradient; this keeps the local rows' gradient, scaled by the world size.
- `process_group`: `PartialState().destroy_process_group()` would first build the singleton
  (the side effects above) and skips the teardown under FORK_LAUNCHED.
- `check_one_process_per_gpu`, `run_torchrun`, `record_error_line`: the project's own launch
  policy (one process per GPU, one line at the end of a failed run).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist

from src.errors import (
    INTERRUPTED_EXIT_STATUS,
    USAGE_EXIT_STATUS,
    ArgumentError,
    ExperimentError,
    UsageError,
)

T = TypeVar("T")

# How long a process waits for the others' files to appear in a shared directory: network
# filesystems cache directory listings for a few seconds (NFS: acdirmax, 60 s at most;
# CIR_SHARED_DIRECTORY_WAIT_S sets it for a filesystem slower than that).
SHARED_DIRECTORY_WAIT_ENV = "CIR_SHARED_DIRECTORY_WAIT_S"
SHARED_DIRECTORY_WAIT_S = 20.0


def shared_directory_wait_s() -> float:
    """SHARED_DIRECTORY_WAIT_S, or the seconds CIR_SHARED_DIRECTORY_WAIT_S gives."""
    value = os.environ.get(SHARED_DIRECTORY_WAIT_ENV)
    try:
        seconds = float(value) if value else SHARED_DIRECTORY_WAIT_S
    except ValueError:
        raise ArgumentError(f"{SHARED_DIRECTORY_WAIT_ENV}={value!r}: give seconds, e.g. 60") from None
    if seconds <= 0:
        raise ArgumentError(f"{SHARED_DIRECTORY_WAIT_ENV}={value!r}: must be > 0")
    return seconds
SHARED_CHECK_DIR = ".shared_check"


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if initialized() else 1


def rank() -> int:
    return dist.get_rank() if initialized() else 0


def is_main() -> bool:
    return rank() == 0


def collective_device() -> torch.device:
    """The device whose tensors the default process group's backend takes.

    The CPU when the backend serves it (gloo, or a group configured with a CPU backend);
    otherwise this process's current accelerator (NCCL: its GPU, set up by accelerate from
    LOCAL_RANK).
    """
    if not initialized():
        return torch.device("cpu")
    served = [part.split(":")[0] for part in str(dist.get_backend_config()).split(",")]
    if "cpu" in served:
        return torch.device("cpu")
    accelerator = served[0]
    return torch.device(accelerator, getattr(torch, accelerator).current_device())


def barrier() -> None:
    """Wait for every process (no-op with one)."""
    if world_size() > 1:
        dist.barrier()


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """Run a block, then tear the process group down whatever happened."""
    try:
        yield
    finally:
        if initialized():
            dist.destroy_process_group()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. a build other ranks then reuse); the others after it."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def gather_objects(local: object) -> list:
    """Every process's `local`, in rank order (picklable objects)."""
    if world_size() == 1:
        return [local]
    parts = [None] * world_size()
    dist.all_gather_object(parts, local)
    return parts


def merge_dicts(local: dict) -> dict:
    """The union of every process's dict (the same on every process)."""
    return {key: value for part in gather_objects(local) for key, value in part.items()}


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is true on any (a collective: call it on all)."""
    if world_size() == 1:
        return flag
    value = torch.tensor([1 if flag else 0], device=collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast_object(value: object) -> object:
    """Rank 0's `value`, on every process."""
    if world_size() == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def decided_by_main(decide: Callable[[], T]) -> T:
    """`decide()` run on rank 0 only, its result (or the error it raised) on every process.

    For decisions every process must share. An exception on rank 0 is raised on every
    process: the same one where it pickles (user errors do), else a RuntimeError naming it.
    """
    if world_size() == 1:
        return decide()
    outcome: tuple[str, object] | None = None
    if is_main():
        try:
            outcome = ("value", decide())
        except Exception as error:  # every rank must leave the collective, then raise
            outcome = ("error", error)
    try:
        kind, payload = broadcast_object(outcome)
    except Exception as unpicklable:  # rank 0's error could not be sent
        kind, payload = "error", RuntimeError(f"rank 0 failed: {unpicklable}")
    if kind == "error":
        raise payload
    return payload


def checked_everywhere(check: Callable[[], T]) -> T:
    """`check()` run on every process; if it failed on any, every process stops, with the
    same line (a collective: call it on all).

    A check that fails on one node only (a model, split or image path that node cannot
    see) would stop that node with its line while the others waited at their next
    collective until the NCCL timeout. Every process's outcome is gathered, as
    `check_shared_directory` does: a user error on any process is raised on every process,
    the first failing rank's, naming that rank and its host; any other error is raised
    where it happened and, naming it, as a RuntimeError on the others.
    """
    if world_size() == 1:
        return check()
    value, failure, report = None, None, None
    try:
        value = check()
    except Exception as error:  # every rank must reach the gather, then raise
        failure = error
        kind = type(error) if isinstance(error, UsageError) else None
        report = (kind, f"{type(error).__name__}: {error}" if kind is None else str(error))
    reports = gather_objects((socket.gethostname(), report))
    failed = [(r, host, found) for r, (host, found) in enumerate(reports) if found is not None]
    if not failed:
        return value
    first, host, (kind, message) = failed[0]
    where = f"rank {first} on {host}" + (
        f", and {len(failed) - 1} other process(es)" if len(failed) > 1 else ""
    )
    if kind is not None:
        raise kind(f"{message} ({where})")
    if failure is not None:
        raise failure
    raise RuntimeError(f"{where} failed: {message}")


def gather_with_local_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every process (rank order), rows may differ in number.

    Other processes' rows carry no gradient; this process's rows keep theirs. Every
    process then computes the same global loss, and DDP averages gradients over the
    processes, so the local rows' gradient is scaled by the world size here to turn that
    average into the gradient of the global loss (the loss value itself stays unscaled).
    The result lives on `tensor`'s device; the exchange runs on `collective_device()`.
    """
    world = world_size()
    if world == 1:
        return tensor
    device = collective_device()
    local_rows = torch.tensor([tensor.shape[0]], device=device)
    all_rows = [torch.zeros_like(local_rows) for _ in range(world)]
    dist.all_gather(all_rows, local_rows)
    max_rows = int(max(r.item() for r in all_rows))
    padded = torch.zeros((max_rows, *tensor.shape[1:]), dtype=tensor.dtype, device=device)
    padded[: tensor.shape[0]] = tensor.detach().to(device)
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    if tensor.requires_grad:
        tensor = tensor * 1.0
        tensor.register_hook(lambda grad: grad * world)
    parts = [g[: int(r.item())].to(tensor.device) for g, r in zip(gathered, all_rows, strict=True)]
    parts[rank()] = tensor
    return torch.cat(parts, dim=0)


def launched_processes() -> int:
    """How many processes the launcher started (torchrun / accelerate set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def visible_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def data_parallel_refusal(gpus: int, why: str = "") -> ArgumentError:
    """The one line for a process that would drive several GPUs with nn.DataParallel."""
    return ArgumentError(
        f"{why}this process sees {gpus} GPUs and would train with nn.DataParallel, which this "
        f"toolkit does not support: run ./run_iterative_training.sh --nproc {gpus} ... "
        "(one process per GPU), or CUDA_VISIBLE_DEVICES=0 python train_iterative.py ... "
        "for one GPU"
    )


def check_one_process_per_gpu() -> None:
    """Refuse one process that sees several GPUs: the Trainer would wrap the model in
    nn.DataParallel, which splits `pixel_values` (rows per image patch) and
    `image_grid_thw` (rows per image) differently and replays only cuda:0's random state.

    A process is one of several (DDP) only with LOCAL_RANK: accelerate and transformers read
    it, not WORLD_SIZE, so a launcher that exports WORLD_SIZE alone gets DataParallel too.
    `IterativeTrainer` refuses `args.n_gpu > 1` itself, for the doors that skip this check
    (the benchmark scripts build it directly)."""
    gpus = visible_gpus()
    if gpus > 1 and "LOCAL_RANK" not in os.environ:
        launched = launched_processes()
        why = (
            f"WORLD_SIZE={launched} is set but LOCAL_RANK is not, so the processes do not run "
            "DDP and "
            if launched > 1
            else ""
        )
        raise data_parallel_refusal(gpus, why)


def check_shared_directory(directory: Path, flag: str = "--experiment_dir") -> None:
    """Every process must see the files every other process writes in `directory`.

    Only rank 0 writes artifacts and every rank reads them back, so a directory local to
    each node fails later on missing files, or hangs. Each process writes a token, and
    each waits up to shared_directory_wait_s() for all of them; if any process misses one,
    every process stops with the same one-line error.
    """
    if world_size() == 1:
        return
    run = broadcast_object(uuid.uuid4().hex if is_main() else None)
    folder = Path(directory) / SHARED_CHECK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{run}.{rank()}").write_text(socket.gethostname())
    expected = {f"{run}.{r}" for r in range(world_size())}
    wait = shared_directory_wait_s()
    deadline = time.monotonic() + wait
    while True:
        missing = expected - {path.name for path in folder.glob(f"{run}.*")}
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    reports = gather_objects((socket.gethostname(), sorted(missing)))
    barrier()
    (folder / f"{run}.{rank()}").unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()  # the last process to get here removes it
    blind = [(r, host) for r, (host, seen_missing) in enumerate(reports) if seen_missing]
    if blind:
        where = ", ".join(f"rank {r} on {host}" for r, host in blind)
        raise ExperimentError(
            f"{flag} {directory} is not shared by every process ({where} cannot see the "
            f"files the others write there within {wait:.0f} s); put it on "
            "a filesystem that every node mounts at the same path"
        )


# Set by the launcher for the processes torchrun starts: where each writes the one line that
# ends it (a user error, an interruption), so that the launcher ends with that line.
ERROR_LINE_DIR_ENV = "CIR_ERROR_LINE_DIR"


def record_error_line(line: str) -> bool:
    """Under the launcher, leave the line that ends this process for the launcher to print
    last; False when not under it (the caller prints the line itself)."""
    directory = os.environ.get(ERROR_LINE_DIR_ENV)
    if not directory:
        return False
    try:
        (Path(directory) / f"rank{os.environ.get('RANK', '0')}").write_text(line)
    except OSError:
        return False
    return True


def run_torchrun(arguments: list[str]) -> int:
    """torchrun (`torch.distributed.run`) in this process, with `arguments` as on its
    command line; returns the exit status.

    When the workers end with one of the project's statuses (a user error: 2; SIGTERM after
    saving: 143) the agent's ChildFailedError traceback is not printed: the run ends with
    the workers' one line (recorded by `record_error_line`) and their status. The same when
    the agent itself is stopped by a signal (a preemption: it stops the workers, which save
    and record their line, before it raises). Any other failure keeps torchrun's report and
    traceback.
    """
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    project_statuses = (USAGE_EXIT_STATUS, INTERRUPTED_EXIT_STATUS)

    def recorded(lines: str) -> str | None:
        said = sorted(Path(lines).glob("rank*"), key=lambda path: int(path.name[4:]))
        return said[0].read_text().rstrip("\n") if said else None

    with tempfile.TemporaryDirectory(prefix="cir_lines_") as lines:
        os.environ[ERROR_LINE_DIR_ENV] = lines
        try:
            run(parse_args(arguments))
        except ChildFailedError as failed:
            ours = [f.exitcode for f in failed.failures.values() if f.exitcode in project_statuses]
            line = recorded(lines)
            if line is None or not ours:
                raise
            print(line, file=sys.stderr, flush=True)
            return min(ours)
        except SignalException:
            line = recorded(lines)
            if line is None:
                raise
            print(line, file=sys.stderr, flush=True)
            return INTERRUPTED_EXIT_STATUS if line.startswith("interrupted:") else USAGE_EXIT_STATUS
        finally:
            os.environ.pop(ERROR_LINE_DIR_ENV, None)
    return 0
