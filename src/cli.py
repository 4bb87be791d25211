"""The two entry points, `train_iterative.py` and `eval_iterative.py`, as testable functions.

This module wires the product to the offline defaults (src/offline/) and turns a user
error (`UsageError`) into one line on stderr and exit status 2; `--debug` or CIR_DEBUG=1
shows its traceback too. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from src.arguments import parse_arguments, resolve_bf16
from src.data.loading import load_split
from src.distributed import (
    check_one_process_per_gpu,
    check_shared_directory,
    checked_everywhere,
    is_main,
    process_group,
    record_error_line,
)
from src.errors import (
    INTERRUPTED_EXIT_STATUS,
    USAGE_EXIT_STATUS,
    ExperimentError,
    TrainingInterrupted,
    UsageError,
)
from src.experiment import Experiment
from src.experiment_io import read_json, write_json_atomic
from src.job import image_store_dir, resolve_job
from src.offline import OFFLINE_DEFAULTS
from src.plan import format_plan
from src.preflight import preflight
from src.report.html import build_report
from src.report.table import format_table, plot_results
from src.retrieval.checkpoint_encoding import EncodeSettings
from src.rounds import run_job
from src.stages.evaluate import evaluate_stage

DEBUG_ENV = "CIR_DEBUG"
# HF TrainingArguments has a `--debug <option>` of its own; only a bare --debug is ours.
HF_DEBUG_OPTIONS = ("underflow_overflow", "tpu_metrics_debug")
EVAL_DATASETS = {
    "cirr_val": ("cirr", "val"),
    "cirr_test": ("cirr", "test1"),
    "fashioniq_val": ("fashioniq", "val"),
}


def setup_logging() -> None:
    """INFO on the main process; other processes (torchrun ranks) report warnings only."""
    main_process = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(
        level=logging.INFO if main_process else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stdout,
        force=True,
    )
    for noisy in ("httpx", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _take_debug_flag(argv: list[str]) -> tuple[list[str], bool]:
    """argv without our bare `--debug`, and whether tracebacks of user errors are wanted."""
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    kept = []
    for i, item in enumerate(argv):
        following = argv[i + 1] if i + 1 < len(argv) else None
        if item == "--debug" and following not in HF_DEBUG_OPTIONS:
            debug = True
        else:
            kept.append(item)
    return kept, debug


def run_entry(main: Callable[[list[str]], int], argv: list[str] | None) -> int:
    """Run an entry point; a UsageError becomes one line on stderr and exit status 2."""
    argv, debug = _take_debug_flag(list(sys.argv[1:] if argv is None else argv))
    try:
        with process_group():
            return main(argv)
    except UsageError as error:
        if debug:
            raise
        say(f"error: {error}")
        return USAGE_EXIT_STATUS
    except TrainingInterrupted as interrupted:
        say(f"interrupted: {interrupted}")
        return INTERRUPTED_EXIT_STATUS


def say(line: str) -> None:
    """The one line that ends the process: on stderr, or, under the launcher's torchrun,
    left for the launcher to print last (src/launch.py)."""
    if not record_error_line(line):
        print(line, file=sys.stderr)


def train_main(argv: list[str] | None = None) -> int:
    return run_entry(_train, argv)


def eval_main(argv: list[str] | None = None) -> int:
    return run_entry(_evaluate, argv)


def _train(argv: list[str]) -> int:
    setup_logging()
    start = time.perf_counter()
    check_one_process_per_gpu()
    flags = parse_arguments(argv)
    # Sets up the process group under torchrun / accelerate and this process's GPU, then
    # --bf16 from that GPU's own capability.
    fallback = resolve_bf16(flags.training)
    if fallback and is_main():
        logging.getLogger("cli").warning(fallback)
    # Every process reads the model, splits and images itself; one that cannot see a path
    # stops every process with the same line (src/distributed.py `checked_everywhere`).
    job = checked_everywhere(lambda: resolve_job(flags, OFFLINE_DEFAULTS))
    if not flags.run.plan:
        check_shared_directory(job.experiment.dir)
    image_sizes = preflight(job)
    if flags.run.plan:
        if is_main():
            print(format_plan(job, image_sizes))
        return 0
    results = run_job(job)
    if is_main():
        experiment = job.experiment
        print("\n" + format_table(results))
        plot = plot_results(results, experiment.evaluation_plot, str(experiment.dir))
        if not flags.run.no_report:
            print(f"report: {build_report(experiment.dir, flags.run.report_queries)}")
        elapsed = time.perf_counter() - start
        print(f"\nexperiment directory: {experiment.dir} (plot: {plot.name}); {elapsed:.0f} s")
    return 0


def _eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Evaluate the checkpoints of an iterative experiment."
    )
    parser.add_argument("--experiment_dir", required=True, help="The experiment directory.")
    parser.add_argument(
        "--eval_dataset",
        default="cirr_val",
        choices=sorted(EVAL_DATASETS),
        help="Split to evaluate (the synthetic benchmark answers to the cirr_* names).",
    )
    parser.add_argument(
        "--iterations",
        default=None,
        help='Comma-separated, e.g. "1,3,5". Default: every checkpoint.',
    )
    parser.add_argument(
        "--dataset_path", default=None, help="Dataset root. Default: the experiment's own."
    )
    parser.add_argument(
        "--output_file",
        default=None,
        help="Results JSON to update. Default: evaluation_results.json in the experiment.",
    )
    parser.add_argument("--batch_size", type=int, default=64, help="Encoding batch size.")
    parser.add_argument(
        "--max_pixels",
        type=int,
        default=None,
        help="Pixel budget per image (Qwen2-VL / Qwen2.5-VL). Default: each checkpoint's own.",
    )
    parser.add_argument(
        "--min_pixels", type=int, default=None, help="Smallest pixel count. Default: the checkpoint's."
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="Write the HTML report (report/index.html) of the experiment, or of a folder of "
        "experiments (an ablation: one column per experiment).",
    )
    parser.add_argument("--report_queries", type=int, default=24, help="Queries shown per round.")
    parser.add_argument("--debug", action="store_true", help="Show tracebacks of user errors.")
    return parser


def _iterations(text: str | None, available: list[int], experiment: Experiment) -> list[int]:
    if text is None:
        return available
    try:
        iterations = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise UsageError(f'--iterations {text!r}: expected numbers such as "1,3,5"') from None
    missing = sorted(set(iterations) - set(available))
    if missing:
        raise ExperimentError(
            f"{experiment.dir}: no finished checkpoint_iter_{missing} (have {available})"
        )
    return iterations


def _evaluate(argv: list[str]) -> int:
    args = _eval_parser().parse_args(argv)
    setup_logging()
    if args.batch_size < 1:
        raise UsageError(f"--batch_size {args.batch_size}: must be >= 1")
    experiment = Experiment(args.experiment_dir)
    if args.report and not experiment.config.exists():  # a folder of experiments
        print(f"report: {build_report(experiment.dir, args.report_queries)}")
        return 0
    saved = experiment.config.arguments()
    dataset_name, split_name = EVAL_DATASETS[args.eval_dataset]
    if dataset_name != saved["dataset_name"]:
        raise UsageError(
            f"--eval_dataset {args.eval_dataset} does not match the experiment's dataset "
            f"{saved['dataset_name']!r}"
        )
    iterations = _iterations(args.iterations, experiment.finished_checkpoints(), experiment)
    split = load_split(
        dataset_name,
        args.dataset_path or saved["dataset_path"],
        split_name,
        allow_external_images=saved.get("allow_external_images", False),
    )
    settings = EncodeSettings(
        args.batch_size,
        0,
        saved.get("torch_dtype", "auto"),
        args.min_pixels,
        args.max_pixels,
        image_store_dir(saved),  # the run's own store (same pixel values, decoded once)
    )
    evaluations = {i: evaluate_stage(experiment, i, split, dataset_name, settings) for i in iterations}
    if not is_main():
        return 0
    if not split.has_labels:
        print(f"\n{split_name} has no labels: no metrics. Submission files (upload them to the "
              "CIRR evaluation server):")
        for evaluation in evaluations.values():
            for name in evaluation.submission_files:
                print(f"  {experiment.dir / name}")
        return 0
    results = {f"iter_{i}": evaluation.metrics for i, evaluation in evaluations.items()}
    output = experiment.evaluation_results
    if args.output_file:
        output = Path(args.output_file)
        results = (read_json(output) if output.is_file() else {}) | results
        write_json_atomic(output, results)
    else:
        results = read_json(output)
    print(f"\n{split_name} metrics\n" + format_table(results))
    plot = plot_results(results, output.with_suffix(".png"), str(experiment.dir))
    print(f"\nresults: {output}; plot: {plot}")
    if args.report:
        print(f"report: {build_report(experiment.dir, args.report_queries)}")
    return 0
