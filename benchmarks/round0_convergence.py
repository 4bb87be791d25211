"""How many round-0 steps until more stop helping? Judged on a held-out part of *training*.

    python -m benchmarks.round0_convergence --output_dir benchmarks/results/round0_convergence_shapes
    python -m benchmarks.round0_convergence --output_dir benchmarks/results/round0_convergence_garments \
        -- --synthetic_domain garments --image_size 84 --synthetic_train_images 4200 \
        --synthetic_val_images 1800 --synthetic_test_images 300

The refinement experiment (docs/results.md) starts every arm from a round 0 trained until
more steps stop helping. Deciding that on the validation split would tune on what the
experiment reports, so this script holds out a part of the training split instead: every
`--holdout_every`-th image set of the benchmark's training split (whole sets, so no held-out
query shares an image with a training one) becomes the "val" split of a derived copy of
the benchmark (annotation files rewritten, the images linked, not copied). Round 0 then
trains on the rest with the run's own flags (after `--`) for `--epochs` epochs, its
constant learning rate making the checkpoint after N steps the model a run of N steps
gives; every `--every` steps a checkpoint is kept and evaluated on the held-out sets.

The chosen step count is the smallest checkpoint that no later checkpoint beats by more
than `--tolerance` points of held-out Avg (the mean of the split's recalls, as the
experiment's primary measure). The experiment then trains round 0 that many steps per
epoch-equivalent on the *whole* training split (`--round0_max_steps`, scaled by the
training triplets it has: the held-out sets are a fifth of them).

Writes `round0_convergence.json` (every checkpoint's held-out metrics, the rule, the
chosen steps for the held-out run and scaled to the full split) and a plot into
`--output_dir`; the derived benchmark and the run's experiment go to `--work_dir`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks import parse_known_options  # noqa: E402
from src.arguments import check_flags, flag, parse_arguments  # noqa: E402
from src.cli import train_main  # noqa: E402
from src.data.loading import load_split  # noqa: E402
from src.experiment import Experiment  # noqa: E402
from src.integrity import DigestCache  # noqa: E402
from src.offline import OFFLINE_DEFAULTS  # noqa: E402
from src.retrieval.checkpoint_encoding import CheckpointEncoder, EncodeSettings  # noqa: E402
from src.retrieval.evaluate import split_metrics  # noqa: E402

CIRR_FILES = {"captions": "cap.rc2.{}.json", "image_splits": "split.rc2.{}.json"}


def holdout_benchmark(source: Path, target: Path, every: int) -> dict[str, int]:
    """A CIRR-format copy of `source` whose val split is every `every`-th training image set
    (its train split the others); images are linked. Returns the two splits' sizes."""
    if target.exists():
        shutil.rmtree(target)
    for folder in CIRR_FILES:
        (target / folder).mkdir(parents=True)
    for entry in source.iterdir():
        if entry.is_dir() and entry.name not in CIRR_FILES:
            (target / entry.name).symlink_to(entry.resolve(), target_is_directory=True)
    captions = json.loads((source / "captions" / CIRR_FILES["captions"].format("train")).read_text())
    images = json.loads((source / "image_splits" / CIRR_FILES["image_splits"].format("train")).read_text())
    held = [c for c in captions if c["img_set"]["id"] % every == every - 1]
    kept = [c for c in captions if c["img_set"]["id"] % every != every - 1]
    held_images = {m for c in held for m in c["img_set"]["members"]}
    splits = {
        "train": (kept, {n: p for n, p in images.items() if n not in held_images}),
        "val": (held, {n: p for n, p in images.items() if n in held_images}),
    }
    for name, (rows, paths) in splits.items():
        (target / "captions" / CIRR_FILES["captions"].format(name)).write_text(json.dumps(rows))
        (target / "image_splits" / CIRR_FILES["image_splits"].format(name)).write_text(json.dumps(paths))
    for folder, pattern in CIRR_FILES.items():
        shutil.copy2(source / folder / pattern.format("test1"), target / folder / pattern.format("test1"))
    return {"train_triplets": len(kept), "holdout_triplets": len(held), "holdout_images": len(held_images)}


def evaluate_checkpoints(experiment: Experiment, dataset: Path, settings: EncodeSettings) -> list[dict]:
    """Held-out metrics of every kept Trainer checkpoint of round 0, by step."""
    split = load_split("cirr", dataset, "val", allow_external_images=True)  # linked images
    rows = []
    checkpoints = sorted(experiment.train_dir(0).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    for checkpoint in checkpoints:
        fingerprint = json.dumps(DigestCache().directory(checkpoint), sort_keys=True)
        with CheckpointEncoder(checkpoint, fingerprint, None, settings) as encoder:
            encoded = encoder.encode_split(split, split.triplets, "cirr")
        metrics = split_metrics(encoded, split, "cirr")
        rows.append({"steps": int(checkpoint.name.split("-")[1]), **metrics})
        print(f"{checkpoint.name}: avg {metrics['avg']:.2f}, recall@1 {metrics['recall@1']:.2f}", flush=True)
    return rows


def converged_at(rows: list[dict], tolerance: float) -> int:
    """The smallest step count that no later checkpoint beats by more than `tolerance` Avg."""
    for i, row in enumerate(rows):
        if all(later["avg"] <= row["avg"] + tolerance for later in rows[i + 1 :]):
            return row["steps"]
    return rows[-1]["steps"]


def plot(rows: list[dict], chosen: int, output: Path) -> None:
    figure, axis = plt.subplots(figsize=(6, 4))
    steps = [r["steps"] for r in rows]
    for metric in ("avg", "recall@1", "recall_subset@1"):
        axis.plot(steps, [r[metric] for r in rows], marker="o", label=metric)
    axis.axvline(chosen, color="grey", linestyle="--", label=f"chosen: {chosen} steps")
    axis.set_xlabel("round-0 optimizer steps")
    axis.set_ylabel("held-out training sets (%)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(output, dpi=120)
    plt.close(figure)


@dataclasses.dataclass
class ConvergenceOptions:
    """The check's own options; every other flag goes to the round-0 run (after `--`)."""

    output_dir: str = flag(dataclasses.MISSING, "Where round0_convergence.json and its plot go. Required.", results=False)
    holdout_every: int = flag(5, "Hold out every N-th image set of the training split.", at_least=2)
    epochs: int = flag(16, "Epochs of the held-out run's training split.", at_least=1)
    every: int | None = flag(None, "Steps between checkpoints (default: one epoch).", at_least=1)
    tolerance: float = flag(1.0, "Held-out Avg points more steps must add.", at_least=0)
    work_dir: str | None = flag(
        None,
        "Where the derived benchmark and the run go (default: .cache/round0_convergence/NAME).",
        results=False,
    )

    def __post_init__(self) -> None:
        check_flags(self)


def main(argv: list[str] | None = None) -> dict:
    args, flags = parse_known_options(ConvergenceOptions, argv, __doc__.split("\n\n")[0])
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    work = Path(args.work_dir or Path(".cache") / "round0_convergence" / output.name)
    parsed = parse_arguments(flags)
    source = Path(parsed.data.dataset_path or OFFLINE_DEFAULTS.dataset_path(parsed.data))
    dataset = work / "holdout_benchmark"
    sizes = holdout_benchmark(source, dataset, args.holdout_every)
    batch = parsed.training.per_device_train_batch_size
    per_epoch = math.ceil(sizes["train_triplets"] / batch)
    every = args.every or per_epoch
    total = args.epochs * per_epoch
    experiment = Experiment(work / "round0")
    if experiment.dir.exists():
        shutil.rmtree(experiment.dir)
    start = time.perf_counter()
    argv_run = [*flags, "--dataset_path", str(dataset), "--allow_external_images", "--num_iterations", "0",
                "--foundation_model_backbone", "none", "--max_steps", str(total), "--save_steps", str(every),
                "--save_total_limit", "1000", "--no_report", "--experiment_dir", str(experiment.dir)]  # fmt: skip
    if train_main(argv_run) != 0:
        raise SystemExit("round 0 failed")
    trained = time.perf_counter() - start
    settings = EncodeSettings(parsed.encode)
    rows = evaluate_checkpoints(experiment, dataset, settings)
    chosen = converged_at(rows, args.tolerance)
    full = len(load_split("cirr", source, "train").triplets)
    payload = {
        "command": "python -m benchmarks.round0_convergence " + " ".join(sys.argv[1:] if argv is None else argv),
        "flags": flags,
        "sizes": sizes | {"full_train_triplets": full},
        "batch_size": batch,
        "steps_per_epoch_holdout_run": per_epoch,
        "rule": f"smallest checkpoint that no later one beats by more than {args.tolerance} held-out Avg",
        "checkpoints": rows,
        "chosen_steps_holdout_run": chosen,
        "chosen_epochs": chosen / per_epoch,
        # the same number of passes over the whole training split
        "round0_max_steps": math.ceil(chosen / per_epoch * math.ceil(full / batch)),
        "minutes": {"train": round(trained / 60, 1), "all": round((time.perf_counter() - start) / 60, 1)},
    }
    (output / "round0_convergence.json").write_text(json.dumps(payload, indent=1))
    plot(rows, chosen, output / "round0_convergence.png")
    shutil.rmtree(work)
    print(json.dumps({k: payload[k] for k in ("chosen_steps_holdout_run", "chosen_epochs", "round0_max_steps")}))
    return payload


if __name__ == "__main__":
    main()
