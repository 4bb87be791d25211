"""The two entry points, `train_iterative.py` and `eval_iterative.py`, as testable functions.

This module wires the product to the offline defaults (src/offline/) and turns a user
error (`UsageError`) into one line on stderr and exit status 2; `--debug` or CIR_DEBUG=1
shows its traceback too. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from src.arguments import (
    EVAL_DATASETS,
    EvalFlags,
    Flags,
    parse_arguments,
    parse_eval_arguments,
    resolve_bf16,
)
from src.artifacts import Evaluation
from src.data.loading import load_split
from src.devices import freeze_long_lived_objects
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
from src.report.query_page import check_output_file, write_query_outputs
from src.report.table import format_modality_table, format_table, plot_results
from src.retrieval.checkpoint_encoding import EncodeSettings
from src.retrieval.retriever import check_query
from src.rounds import run_job
from src.stages.evaluate import evaluate_step
from src.use.export import check_new_folder, export_index, export_round
from src.use.trained_round import TrainedRound, ask, gallery_source

DEBUG_ENV = "CIR_DEBUG"
# HF TrainingArguments has a `--debug <option>` of its own; only a bare --debug is ours.
HF_DEBUG_OPTIONS = ("underflow_overflow", "tpu_metrics_debug")


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
    freeze_long_lived_objects()
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


def modality_table(experiment: Experiment, split_name: str, results: dict) -> str:
    """The table printed under the metric table: whether the model composes, for the
    rounds of `results` ({"iter_i": metrics}) whose evaluation file is in `experiment`;
    "" when there is none."""
    rounds = sorted(int(key.rsplit("_", 1)[-1]) for key in results)
    paths = {i: experiment.evaluation(split_name, i) for i in rounds}
    blocks = {i: Evaluation.read(path).modalities for i, path in paths.items() if path.is_file()}
    table = format_modality_table(blocks)
    return f"\nwhether {split_name} queries need both the image and the text\n{table}" if table else ""


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
        if table := modality_table(experiment, "val", results):
            print(table)
        plot = plot_results(results, experiment.evaluation_plot, str(experiment.dir))
        if not flags.run.no_report:
            print(f"report: {build_report(experiment.dir, flags.report.report_queries)}")
        elapsed = time.perf_counter() - start
        print(f"\nexperiment directory: {experiment.dir} (plot: {plot.name}); {elapsed:.0f} s")
    return 0


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


def _encode_settings(flags: EvalFlags, saved: Flags) -> EncodeSettings:
    """How eval_iterative.py encodes: its encoding flags (the run's own group), and the
    run's dtype and image store (the same pixel values, decoded once)."""
    return EncodeSettings(flags.encode, 0, saved.model.torch_dtype, image_store_dir(saved.data))


def _one_round(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise UsageError(
            f"--iterations {text!r}: one round (a number) with --export, --query_image or "
            "--export_index"
        ) from None


def _use(flags: EvalFlags) -> int:
    """--export / --query_image / --export_index: every check first, then the work, through
    the Python API (src/use/, src/retrieval/retriever.py)."""
    args, use = flags.eval, flags.use
    if args.report:
        raise UsageError("--report does not go with --export, --query_image or --export_index")
    asking = use.query_image is not None or use.query_text is not None
    if asking:
        if use.query_image is None or use.query_text is None:
            raise UsageError("a query needs both --query_image and --query_text")
        check_query(use.query_image, use.query_text)
        if args.output_file:
            check_output_file(args.output_file)
    for flag_name, folder in (("--export", use.export), ("--export_index", use.export_index)):
        if folder is not None:
            check_new_folder(flag_name, folder)
    trained = TrainedRound.open(args.experiment_dir, _one_round(args.iterations))
    needs_gallery = asking or use.export_index is not None
    source = gallery_source(trained, use.gallery, args.dataset_path) if needs_gallery else None
    print(f"using {trained.describe()}")
    if use.export is not None:
        print(f"exported: {export_round(trained, use.export, use.export_dtype)}")
    if source is None:
        return 0
    with trained.retriever(_encode_settings(flags, trained.flags)) as retriever:
        gallery = source.encode(retriever)
        how = "read from the embedding cache" if gallery.from_cache else "encoded and cached"
        print(f"gallery: {source.description}: {len(gallery.names)} images, {how}")
        if use.export_index is not None:
            print(f"index: {export_index(trained, gallery, source, use.export_index)}")
        if asking:
            answer = ask(trained, retriever, gallery, source, use.query_image, use.query_text, use.top_k)
            print("\n".join(["rank\timage\tscore", *answer.lines()]))
            if args.output_file:
                print("ranking: {}; page: {}".format(*write_query_outputs(answer, args.output_file)))
    return 0


def _evaluate(argv: list[str]) -> int:
    flags = parse_eval_arguments(argv)  # the declarations of src/arguments.py
    args = flags.eval
    setup_logging()
    if flags.use.requested:
        return _use(flags)
    experiment = Experiment(args.experiment_dir)
    if args.report and not experiment.config.exists():  # a folder of experiments
        print(f"report: {build_report(experiment.dir, flags.report.report_queries)}")
        return 0
    saved = experiment.config.record().flags
    dataset_name, split_name = EVAL_DATASETS[args.eval_dataset]
    if dataset_name != saved.data.dataset_name:
        raise UsageError(
            f"--eval_dataset {args.eval_dataset} does not match the experiment's dataset "
            f"{saved.data.dataset_name!r}"
        )
    iterations = _iterations(args.iterations, experiment.finished_checkpoints(), experiment)
    split = load_split(
        dataset_name,
        args.dataset_path or saved.data.dataset_path,
        split_name,
        allow_external_images=saved.data.allow_external_images,
    )
    settings = _encode_settings(flags, saved)
    evaluations = {
        i: evaluate_step(experiment, i, split, dataset_name, settings).run() for i in iterations
    }
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
    if table := modality_table(experiment, split_name, results):
        print(table)
    plot = plot_results(results, output.with_suffix(".png"), str(experiment.dir))
    print(f"\nresults: {output}; plot: {plot}")
    if args.report:
        print(f"report: {build_report(experiment.dir, flags.report.report_queries)}")
    return 0
