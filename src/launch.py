"""`./run_iterative_training.sh`: start train_iterative.py on one or more processes and nodes.

    ./run_iterative_training.sh [--nproc N] [--nnodes M --node_rank R
        (--master_addr HOST [--master_port P] | --rdzv_endpoint HOST:PORT)] [flags...]

One process per GPU: `--nproc` defaults to the GPUs this node sees (CUDA_VISIBLE_DEVICES
counts), 1 without a GPU; more than it sees is refused. More than one process, or more
than one node, goes through torchrun, whose agent runs inside this launcher (under the
interpreter that runs it): a run its workers end with a user error or an interruption
ends with their one line, last, and their exit status (2, 143), not with the agent's
traceback. Every other flag goes to train_iterative.py. On several nodes, run the same
command on each with its own `--node_rank` (static rendezvous at
--master_addr:--master_port), or give every node the same `--rdzv_endpoint` (c10d
rendezvous; ranks are assigned on arrival). The experiment directory must be on a
filesystem every node mounts (checked at start).
"""

from __future__ import annotations

import argparse
import os
import sys

TRAIN_SCRIPT = "train_iterative.py"
DEFAULT_MASTER_PORT = 29500


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_iterative_training.sh", description=__doc__.split("\n\n")[0], add_help=False
    )
    parser.add_argument("--nproc", type=int, default=None)
    parser.add_argument("--nnodes", type=int, default=1)
    parser.add_argument("--node_rank", type=int, default=None)
    parser.add_argument("--master_addr", default=None)
    parser.add_argument("--master_port", type=int, default=DEFAULT_MASTER_PORT)
    parser.add_argument("--rdzv_endpoint", default=None)
    return parser


def launch_command(argv: list[str], visible_gpus: int, python: str = sys.executable) -> list[str]:
    """The command that runs train_iterative.py with `argv` (launcher flags taken out).

    Raises SystemExit(2) with one line for launcher flags that do not go together.
    """
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    nproc = args.nproc if args.nproc is not None else max(1, visible_gpus)

    def refuse(message: str) -> None:
        parser.exit(2, f"error: {message}\n")

    if nproc < 1 or args.nnodes < 1:
        refuse(f"--nproc {nproc} / --nnodes {args.nnodes}: must be >= 1")
    if visible_gpus and nproc > visible_gpus:  # each process takes one GPU (LOCAL_RANK)
        refuse(
            f"--nproc {nproc}: this node sees {visible_gpus} GPU(s) and each process takes one; "
            f"use --nproc {visible_gpus} or fewer (CUDA_VISIBLE_DEVICES says which)"
        )
    if args.nnodes == 1:
        if args.node_rank not in (None, 0) or args.master_addr or args.rdzv_endpoint:
            refuse("--node_rank, --master_addr and --rdzv_endpoint need --nnodes > 1")
        if nproc == 1:
            return [python, TRAIN_SCRIPT, *rest]
        return [python, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", str(nproc), TRAIN_SCRIPT, *rest]  # fmt: skip
    command = [python, "-m", "torch.distributed.run", "--nnodes", str(args.nnodes),
               "--nproc_per_node", str(nproc)]  # fmt: skip
    if args.rdzv_endpoint:
        command += ["--rdzv_backend", "c10d", "--rdzv_endpoint", args.rdzv_endpoint]
    elif args.master_addr and args.node_rank is not None:
        if not 0 <= args.node_rank < args.nnodes:
            refuse(f"--node_rank {args.node_rank}: must be in 0 .. {args.nnodes - 1}")
        command += ["--node_rank", str(args.node_rank), "--master_addr", args.master_addr,
                    "--master_port", str(args.master_port)]  # fmt: skip
    else:
        refuse(
            f"--nnodes {args.nnodes}: give each node --node_rank and the same --master_addr "
            "(and --master_port), or the same --rdzv_endpoint HOST:PORT"
        )
    return [*command, TRAIN_SCRIPT, *rest]


def main() -> None:
    from src.distributed import run_torchrun, visible_gpus

    command = launch_command(sys.argv[1:], visible_gpus())
    print(f"launching: {' '.join(command)}", file=sys.stderr, flush=True)
    if command[1:3] == ["-m", "torch.distributed.run"]:
        # torchrun's agent runs in this process, so that a run its workers refuse ends with
        # their one line and exit status 2, not with the agent's ChildFailedError traceback
        sys.exit(run_torchrun(command[3:]))
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
