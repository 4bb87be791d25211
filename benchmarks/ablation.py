"""Does each idea of the method help? One command: arms x seeds, with confidence intervals.

    python -m benchmarks.ablation --jobs 2 --output_dir benchmarks/results/ablation -- --max_steps 157

Arms (each a normal experiment under the output folder; every flag of train_iterative.py
can be added after `--` and applies to all of them):

- A  in-batch negatives only;
- B  random extra negatives, as many per query as C uses;
- C  mined hard negatives, re-mined each round with the current checkpoint;
- S  mined hard negatives, mined once with checkpoint_iter_0 and reused every round;
- D  C plus new texts for the mined hard pairs (the full method);
- E  like D, but the new texts are written for random gallery images instead of the
     mined ones (same count, same captioner).

Every arm trains the same optimizer steps per round (`--max_steps`) and, where arms differ
in negatives, gives each query the same number of extra candidates. Round 0 does not
depend on the arm: it is trained once per seed and copied into each arm's experiment,
which then resumes from it (its config records the arm's flags as a change). The arms of
a seed share one embedding cache, so round 1's mining encodes once per seed.

Writes `ablation.json` (every metric of every arm, seed and round; per arm and round the
mean and standard deviation over seeds; the paired differences C-B, C-S, D-C, D-E with a
95% confidence interval over seeds, t-distribution, paired by seed), `ablation.md` (the
table) and `ablation_{metric}.png` (R@5 and Rsubset@1 against the round, error bars:
one standard deviation over seeds). Without a scene oracle and without
`--foundation_model_path`, the arms that write new texts (D, E) are left out.

Cost on the default benchmark, 2 CPU cores: in one process round 0 takes about 1 min and
an arm about 3.5 (A, B) to 5 min (mining arms) per seed, from the default run's stage times,
so about 28 min a seed; `--jobs 2` (one thread each) ran two seeds of all six arms in
36.5 min, about 1.5 times that throughput, so the five default seeds take about 1.5 hours.
Rerunning the same command continues an interrupted ablation (finished arms are skipped);
`--add_results` joins new seeds to an earlier ablation.json without rerunning its seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from scipy import stats  # noqa: E402

from src.cli import train_main  # noqa: E402
from src.experiment import Experiment  # noqa: E402
from src.offline.scene_oracle import SCENE_ORACLE  # noqa: E402

ARMS = {
    "A": ("in-batch negatives only", ["--num_hard_negatives", "0", "--foundation_model_backbone", "none"]),
    "B": ("random extra negatives", ["--negative_source", "random", "--foundation_model_backbone", "none"]),
    "C": ("mined, re-mined each round", ["--foundation_model_backbone", "none"]),
    "S": ("mined once with checkpoint_iter_0", ["--mining_checkpoint", "first", "--foundation_model_backbone", "none"]),
    "D": ("mined + new texts for mined pairs (full method)", []),
    "E": ("mined + new texts for random pairs", ["--augment_negatives", "random"]),
}  # fmt: skip
TEXT_ARMS = ("D", "E")
COMPARISONS = (("C", "B"), ("C", "S"), ("D", "C"), ("D", "E"))
METRICS = ("recall@1", "recall@5", "recall@10", "recall_subset@1", "recall_subset@2", "avg")
PLOTTED = ("recall@5", "recall_subset@1")


def confidence_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of the mean of `values`, Student's t with n - 1 degrees of freedom."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = (
        stats.t.ppf(0.5 + level / 2, len(values) - 1)
        * statistics.stdev(values)
        / math.sqrt(len(values))
    )
    return mean, mean - half, mean + half


def summarise(results: dict[str, dict[int, dict[str, dict[str, float]]]]) -> dict:
    """results[arm][seed]["iter_i"][metric] -> per arm and round: mean and sd over seeds;
    per comparison and round: the paired differences' mean and 95% interval."""
    arms = sorted(results)
    seeds = sorted({seed for arm in arms for seed in results[arm]})
    rounds = sorted({key for arm in arms for seed in results[arm] for key in results[arm][seed]},
                    key=lambda key: int(key.split("_")[1]))  # fmt: skip
    summary = {"arms": {}, "differences": {}}
    for arm in arms:
        summary["arms"][arm] = {}
        for key in rounds:
            runs = [results[arm][s][key] for s in seeds if key in results[arm].get(s, {})]
            summary["arms"][arm][key] = {
                metric: {
                    "mean": statistics.fmean(r[metric] for r in runs),
                    "sd": statistics.stdev([r[metric] for r in runs]) if len(runs) > 1 else 0.0,
                    "n": len(runs),
                }
                for metric in METRICS
                if runs and metric in runs[0]
            }
    for first, second in COMPARISONS:
        if first not in results or second not in results:
            continue
        name = f"{first}-{second}"
        summary["differences"][name] = {}
        for key in rounds:
            paired = [
                s
                for s in seeds
                if key in results[first].get(s, {}) and key in results[second].get(s, {})
            ]
            if not paired:
                continue
            summary["differences"][name][key] = {}
            for metric in METRICS:
                values = [
                    results[first][s][key][metric] - results[second][s][key][metric] for s in paired
                ]
                mean, low, high = confidence_interval(values)
                summary["differences"][name][key][metric] = {
                    "mean": mean,
                    "ci95": [low, high],
                    "n": len(values),
                }
    return summary


def markdown(summary: dict, descriptions: dict[str, str]) -> str:
    lines = []
    last = max(
        (key for arm in summary["arms"].values() for key in arm), key=lambda k: int(k.split("_")[1])
    )
    lines.append(f"Mean (sd) over seeds at {last.replace('_', ' ')}, percent:\n")
    lines.append("| arm | " + " | ".join(METRICS) + " |")
    lines.append("|---|" + "---|" * len(METRICS))
    for arm, rounds in sorted(summary["arms"].items()):
        cells = [f"{rounds[last][m]['mean']:.2f} ({rounds[last][m]['sd']:.2f})" for m in METRICS]
        lines.append(f"| {arm}: {descriptions[arm]} | " + " | ".join(cells) + " |")
    lines.append("\nPaired differences (same seed), mean [95% CI], percentage points:\n")
    lines.append("| comparison | round | " + " | ".join(METRICS) + " |")
    lines.append("|---|---|" + "---|" * len(METRICS))
    for name, rounds in summary["differences"].items():
        for key, metrics in sorted(rounds.items(), key=lambda item: int(item[0].split("_")[1])):
            if key == "iter_0":
                continue
            cells = [
                f"{v['mean']:+.2f} [{v['ci95'][0]:+.2f}, {v['ci95'][1]:+.2f}]"
                for v in (metrics[m] for m in METRICS)
            ]
            lines.append(f"| {name} | {key.split('_')[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, metric: str, output: Path) -> None:
    figure, axis = plt.subplots(figsize=(6, 4))
    for arm, rounds in sorted(summary["arms"].items()):
        keys = sorted(rounds, key=lambda k: int(k.split("_")[1]))
        axis.errorbar(
            [int(k.split("_")[1]) for k in keys],
            [rounds[k][metric]["mean"] for k in keys],
            yerr=[rounds[k][metric]["sd"] for k in keys],
            marker="o",
            capsize=3,
            label=arm,
        )
    axis.set_xticks(
        sorted({int(k.split("_")[1]) for rounds in summary["arms"].values() for k in rounds})
    )
    axis.set_xlabel("round")
    axis.set_ylabel(f"{metric} (%)")
    axis.set_title(f"{metric}: mean and sd over seeds")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(output, dpi=120)
    plt.close(figure)


def share_round0(round0: Experiment, arm: Experiment, shared_cache: Path) -> None:
    """The arm's experiment starts as a copy of the seed's round 0 (checkpoint, evaluation,
    their records), with the seed's embedding cache shared."""
    arm.dir.mkdir(parents=True)
    for path in (round0.config_file, round0.stages_file, round0.evaluation("val", 0), round0.evaluation_results):
        shutil.copy2(path, arm.dir / path.name)
    shutil.copytree(round0.checkpoint(0), arm.checkpoint(0))
    arm.embeddings_dir.symlink_to(shared_cache.resolve(), target_is_directory=True)


def run_seed(
    seed: int, arms: list[str], flags: list[str], output: Path, threads: int | None
) -> dict:
    """Round 0 once, then every arm from it; {arm: evaluation_results} of this seed."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    seed_dir = output / "experiments" / f"seed{seed}"
    round0 = Experiment(seed_dir / "round0")
    common = [*flags, "--seed", str(seed), "--no_report"]
    if not round0.evaluation("val", 0).is_file():
        status = train_main([*common, "--num_iterations", "0", "--experiment_dir", str(round0.dir)])
        assert status == 0, f"round 0 of seed {seed} failed"
    results = {}
    for arm in arms:
        experiment = Experiment(seed_dir / arm)
        if not experiment.dir.exists():
            share_round0(round0, experiment, round0.embeddings_dir)
        argv = [*common, *ARMS[arm][1], "--experiment_dir", str(experiment.dir),
                "--auto_resume", "--allow_config_change"]  # fmt: skip
        assert train_main(argv) == 0, f"arm {arm}, seed {seed} failed"
        results[arm] = json.loads(experiment.evaluation_results.read_text())
        print(f"seed {seed} arm {arm}: {results[arm]}", flush=True)
    return results


def add_earlier_results(
    results: dict, seeds: list[int], path: Path, flags: list[str], arms: list[str]
) -> tuple[dict, list[int]]:
    """Join the seeds of an earlier ablation.json to this run's (a seed run now wins), so
    seeds can be added without rerunning the others; one made with other flags or arms is
    refused."""
    earlier = json.loads(path.read_text())
    if earlier["flags"] != flags or sorted(earlier["arms"]) != sorted(arms):
        raise SystemExit(
            f"--add_results {path}: made with flags {earlier['flags']} and arms "
            f"{sorted(earlier['arms'])}; this run has flags {flags} and arms {sorted(arms)}"
        )
    for arm in arms:
        for seed, runs in earlier["results"][arm].items():
            results[arm].setdefault(int(seed), runs)
    return results, sorted({*seeds, *(int(seed) for seed in earlier["seeds"])})


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--arms", default=None, help="comma-separated (default: all that apply)")
    parser.add_argument("--output_dir", default="benchmarks/results/ablation")
    parser.add_argument("--keep_experiments", action="store_true", help="keep every arm's folder")
    parser.add_argument(
        "--jobs", type=int, default=1,
        help="seeds run at once, in separate processes sharing the cores (torch threads split)",
    )  # fmt: skip
    parser.add_argument(
        "--add_results", default=None,
        help="ablation.json of an earlier run with the same flags and arms: its seeds join this run's",
    )  # fmt: skip
    args, flags = parser.parse_known_args(argv)
    flags = [f for f in flags if f != "--"]
    output = Path(args.output_dir)
    seeds = [int(s) for s in args.seeds.split(",")]
    dataset = flags[flags.index("--dataset_path") + 1] if "--dataset_path" in flags else None
    has_texts = (
        "--foundation_model_path" in flags
        or dataset is None
        or SCENE_ORACLE.works_on(Path(dataset))
    )
    arms = (
        args.arms.split(",") if args.arms else [a for a in ARMS if has_texts or a not in TEXT_ARMS]
    )
    start = time.perf_counter()
    if args.jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        if dataset is None:  # build the offline assets once, before the seeds race for them
            train_main([*flags, "--plan", "--experiment_dir", str(output / "plan_only")])
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            per_seed = pool.starmap(run_seed, [(s, arms, flags, output, threads) for s in seeds])
    else:
        per_seed = [run_seed(s, arms, flags, output, None) for s in seeds]
    results = {
        arm: {seed: runs[arm] for seed, runs in zip(seeds, per_seed, strict=True)} for arm in arms
    }
    if args.add_results:
        results, seeds = add_earlier_results(results, seeds, Path(args.add_results), flags, arms)
    summary = summarise(results)
    descriptions = {arm: ARMS[arm][0] for arm in arms}
    payload = {
        "command": " ".join(
            ["python -m benchmarks.ablation", *(argv if argv is not None else sys.argv[1:])]
        ),
        "flags": flags,
        "seeds": seeds,
        "arms": descriptions,
        # arms finished by an earlier invocation are skipped, not counted
        "minutes_this_invocation": round((time.perf_counter() - start) / 60, 1),
        "jobs": args.jobs,
        "results": results,
        "summary": summary,
    }
    output.mkdir(parents=True, exist_ok=True)
    (output / "ablation.json").write_text(json.dumps(payload, indent=1))
    (output / "ablation.md").write_text(markdown(summary, descriptions))
    for metric in PLOTTED:
        plot(summary, metric, output / f"ablation_{metric.replace('@', '_at_')}.png")
    if not args.keep_experiments:
        shutil.rmtree(output / "experiments")
        shutil.rmtree(output / "plan_only", ignore_errors=True)
    print((output / "ablation.md").read_text())
    print(f"{payload['minutes_this_invocation']} min; {output}")
    return output


if __name__ == "__main__":
    main()
