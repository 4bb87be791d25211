"""The two entry points, `train_iterative.py` and `eval_iterative.py`, as testable functions."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from pathlib import Path

from src.arguments import parse_arguments
from src.data.loading import load_split
from src.distributed import rank
from src.experiment import CONFIG_NAME, Experiment
from src.experiment_io import read_json, write_json_atomic
from src.model.encoder import default_device, load_encoder
from src.report import format_table, plot_results
from src.retrieval.encode import EmbeddingCache
from src.retrieval.evaluate import encode_split, split_metrics, submission_files
from src.rounds import checkpoint_meta, resolve_job, run_job

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


def train_main(argv: list[str] | None = None) -> int:
    setup_logging()
    start = time.perf_counter()
    model_args, data_args, iter_args, training_args = parse_arguments(argv)
    training_args.device  # noqa: B018  (sets up the process group under torchrun / accelerate)
    job = resolve_job(model_args, data_args, iter_args, training_args)
    results = run_job(job)
    if rank() == 0:
        print("\n" + format_table(results))
        plot = plot_results(
            results, job.experiment.dir / "evaluation_results.png", str(job.experiment.dir)
        )
        elapsed = time.perf_counter() - start
        print(f"\nexperiment directory: {job.experiment.dir} (plot: {plot.name}); {elapsed:.0f} s")
    return 0


def _checkpoints(experiment: Experiment) -> list[int]:
    found = []
    for path in experiment.dir.glob("checkpoint_iter_*"):
        match = re.fullmatch(r"checkpoint_iter_(\d+)", path.name)
        if match and (path / "stage.json").is_file():
            found.append(int(match.group(1)))
    return sorted(found)


def eval_main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)
    setup_logging()
    experiment = Experiment(args.experiment_dir)
    if not experiment.config_file.is_file():
        raise SystemExit(f"{experiment.dir}: no {CONFIG_NAME}; is this an experiment directory?")
    saved = read_json(experiment.config_file)["arguments"]
    dataset_name, split_name = EVAL_DATASETS[args.eval_dataset]
    if dataset_name != saved["dataset_name"]:
        raise SystemExit(
            f"--eval_dataset {args.eval_dataset} does not match the experiment's dataset "
            f"{saved['dataset_name']!r}"
        )
    available = _checkpoints(experiment)
    iterations = [int(i) for i in args.iterations.split(",")] if args.iterations else available
    missing = sorted(set(iterations) - set(available))
    if missing:
        raise SystemExit(
            f"{experiment.dir}: no finished checkpoint_iter_{missing} (have {available})"
        )
    split = load_split(dataset_name, args.dataset_path or saved["dataset_path"], split_name)
    output = Path(args.output_file) if args.output_file else experiment.evaluation_results
    results = read_json(output) if output.is_file() else {}
    for iteration in iterations:
        checkpoint = experiment.checkpoint(iteration)
        encoder = load_encoder(checkpoint, dtype=saved.get("torch_dtype", "auto")).to(
            default_device()
        )
        encoded = encode_split(
            encoder,
            split,
            split.triplets,
            dataset_name,
            EmbeddingCache(experiment.embeddings_dir),
            checkpoint_meta(checkpoint)["fingerprint"],
            args.batch_size,
        )
        if split.has_labels:
            results[f"iter_{iteration}"] = split_metrics(encoded, split, dataset_name)
            write_json_atomic(output, results)
        else:
            for payload in submission_files(encoded):
                path = (
                    experiment.dir
                    / f"cirr_test_submission_iter_{iteration}_{payload['metric']}.json"
                )
                write_json_atomic(path, payload)
                logging.info("wrote %s", path)
    if results:
        print("\n" + format_table(results))
        plot = plot_results(results, output.with_suffix(".png"), str(experiment.dir))
        print(f"\nresults: {output}; plot: {plot}")
    return 0
