"""Does each idea of the method help? One command: arms x seeds, with confidence intervals.

    python -m benchmarks.ablation --jobs 2 --output_dir benchmarks/results/ablation -- --max_steps 157
    python -m benchmarks.ablation --jobs 2 --arms C,D,Dsim,Dcons,Dverify,Esim,Depoch,Clong \
        --output_dir benchmarks/results/ablation_texts -- --max_steps 157

Arms (each a normal experiment under the output folder; every flag of train_iterative.py
can be added after `--` and applies to all of them, the arm's own flags after it):

- A  in-batch negatives only;
- B  random extra negatives, as many per query as C uses;
- C  mined hard negatives, re-mined each round with the current checkpoint;
- S  mined hard negatives, mined once with checkpoint_iter_0 and reused every round;
- D  C plus new texts for the mined hard pairs from the scene oracle (a perfect captioner);
- E  like D, but the new texts are written for random gallery images instead (same count);
- Dsim, Esim  D and E with the simulated captioner (it describes any pair and errs at the
     published rates of --simulated_*), no filter;
- Dcons, Dverify  Dsim with --consistency_filter / --verify_augmented;
- Depoch  Dsim on the default schedule: one epoch over original + new triplets (more
     steps than --max_steps); Clong  C given about as many steps (188: one epoch of 5,000
     original + 1,000 new triplets at batch 32; the steps each arm took are recorded).

Every other arm trains the same optimizer steps per round (`--max_steps`) and, where arms
differ in negatives, gives each query the same number of extra candidates. Round 0 does not
depend on the arm: it is trained once per seed and copied into each arm's experiment, which
then resumes from it (its config records the arm's flags as a change). The arms of a seed
share one embedding cache, so round 1's mining encodes once per seed.

- RC, RD, RDsim, RDcons, RDfile  the pre-registered refinement experiment (docs/results.md,
     "Do new texts help? The pre-registered experiment"): ReCALL's regime (REFINE: each
     round continues the trained retriever on a cosine schedule, new triplets accumulate,
     batches keep a reference's queries together, a triplet term beside InfoNCE), from a
     round 0 trained to convergence (`--round0_max_steps`): RC mined negatives and no new
     texts; RD the scene oracle's texts for the model's failures, hardest first; RDsim the
     simulated captioner; RDcons RDsim with --consistency_filter; RDfile RD with the earlier
     file-order selection.

Replicates differ in the seed only: every process runs this machine's own kernels (a
claim that they also varied float order was dropped: the setting used for it changed no
bit here, docs/results.md "How far numbers move"). Each (seed, arm) with `--jobs` above 1
runs in a fresh process, with the cores split over the jobs.

Testing: per comparison and round, a paired t-test over seeds; at the last round the
comparisons of Avg form one family, Holm-corrected, except the `--primary` comparison,
which a pre-registered design tests alone. Besides the 95% interval of the mean
difference, `pi95` is a prediction interval for the mean another run of as many seeds
should give on this machine (about 1.4 times wider).

Writes `ablation.json` (every metric of every arm, seed and round; the optimizer steps and
the new texts' counts and filter diagnostics of every arm, seed and round; per arm and
round the mean and sd over seeds; the paired differences of COMPARISONS with a 95%
t-interval over seeds, paired by seed, and, where it includes 0, how many seeds the
measured spread would need to resolve the measured mean), `ablation.md` (the tables) and
`ablation_{metric}.png` (against the round; error bars: one sd over seeds). Without a scene
oracle and without `--foundation_model_path`, the arms that write new texts are left out.
A seed that fails does not lose the others: the summary covers the seeds that finished,
and the command then exits with an error naming the failed ones. Rerunning the same
command continues an interrupted ablation (finished arms are skipped); `--add_results`
joins new seeds to an earlier ablation.json without rerunning its seeds.

Cost on the default benchmark, 2 CPU cores: docs/results.md gives the measured minutes of
each ablation there.
"""

from __future__ import annotations

import contextlib
import dataclasses
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

from benchmarks import listed_integers, parse_known_options  # noqa: E402
from src.arguments import check_flags, flag  # noqa: E402
from src.artifacts import AugmentedSamples  # noqa: E402
from src.cli import train_main  # noqa: E402
from src.experiment import Experiment  # noqa: E402
from src.offline.scene_oracle import SCENE_ORACLE  # noqa: E402
from src.records import AugmentSkipped, TrainSummary, dump  # noqa: E402

SIMULATED = ["--foundation_model_backbone", "simulated_captioner"]
NO_TEXTS = ["--foundation_model_backbone", "none"]
CLONG_STEPS = 188  # one epoch of 5,000 original + 1,000 new triplets at batch 32
ARMS = {
    "A": ("in-batch negatives only", ["--num_hard_negatives", "0", *NO_TEXTS]),
    "B": ("random extra negatives", ["--negative_source", "random", *NO_TEXTS]),
    "C": ("mined, re-mined each round", NO_TEXTS),
    "S": ("mined once with checkpoint_iter_0", ["--mining_checkpoint", "first", *NO_TEXTS]),
    "D": ("mined + oracle texts for mined pairs (full method, perfect captioner)", []),
    "E": ("mined + oracle texts for random pairs", ["--augment_negatives", "random"]),
    "Dsim": ("mined + simulated texts for mined pairs, no filter", SIMULATED),
    "Esim": ("mined + simulated texts for random pairs, no filter", [*SIMULATED, "--augment_negatives", "random"]),
    "Dcons": ("Dsim + --consistency_filter", [*SIMULATED, "--consistency_filter"]),
    "Dverify": ("Dsim + --verify_augmented", [*SIMULATED, "--verify_augmented"]),
    "Depoch": ("Dsim, one epoch over original + new triplets", [*SIMULATED, "--max_steps", "-1"]),
    "Clong": ("C with as many steps as Depoch", [*NO_TEXTS, "--max_steps", str(CLONG_STEPS)]),
}  # fmt: skip
# ReCALL's refinement regime (its code: continual training of the trained retriever on a
# cosine schedule, original data kept and new triplets accumulated, batches grouped by
# reference, 0.2 triplet beside 0.8 InfoNCE with margin 0.05, up to 5 failures per query).
# The learning rate is a third of round 0's, fixed before any refinement run.
REFINE = ["--lr_scheduler_type", "cosine", "--learning_rate", "1e-4", "--augmented_pool", "cumulative",
          "--group_by_reference", "--triplet_loss_weight", "0.25", "--triplet_margin", "0.05",
          "--augment_pairs_per_query", "5"]  # fmt: skip
ARMS |= {
    "RC": ("C*: refinement regime, mined negatives, no new texts", [*REFINE, *NO_TEXTS]),
    "RD": ("D*: RC + oracle texts for the failure pairs, hardest first", REFINE),
    "RDsim": ("Dsim*: RD with the simulated captioner", [*REFINE, *SIMULATED]),
    "RDcons": ("Dsim* + --consistency_filter", [*REFINE, *SIMULATED, "--consistency_filter"]),
    "RDfile": ("Dfile*: RD with the earlier file-order selection", [*REFINE, "--augment_selection", "file_order"]),
}  # fmt: skip
TEXT_ARMS = ("D", "E", "Dsim", "Esim", "Dcons", "Dverify", "Depoch", "RD", "RDsim", "RDcons", "RDfile")
SIMULATED_ARMS = ("Dsim", "Esim", "Dcons", "Dverify", "Depoch", "RDsim", "RDcons")  # synthetic only
COMPARISONS = (
    ("C", "B"), ("C", "S"), ("D", "C"), ("D", "E"),  # mining, re-mining, oracle texts
    ("Dsim", "C"), ("Dsim", "Esim"), ("D", "Dsim"),  # imperfect texts: help? hard pairs? ceiling
    ("Dcons", "Dsim"), ("Dverify", "Dsim"),  # the filters
    ("Depoch", "Clong"), ("Depoch", "C"),  # the default epoch schedule
    ("RD", "RC"),  # the refinement experiment's primary comparison
    ("RDsim", "RC"), ("RDcons", "RC"), ("RDcons", "RDsim"), ("RD", "RDfile"), ("RDfile", "RC"),
)  # fmt: skip
ALPHA = 0.05


@dataclasses.dataclass
class AblationOptions:
    """The ablation's own options; every other flag goes to train_iterative.py (after `--`)."""

    seeds: str = flag("0,1,2,3,4", "Comma-separated seeds, one replicate each.")
    arms: str | None = flag(None, "Comma-separated arms (default: A,B,C,S,D,E, those that apply).")
    output_dir: str = flag("benchmarks/results/ablation", "Where ablation.json, the tables and plots go.", results=False)
    keep_experiments: bool = flag(False, "Keep every arm's folder.", results=False)
    jobs: int = flag(1, "Seeds run at once, in separate processes.", results=False, at_least=1)
    primary: str | None = flag(
        None,
        "The pre-registered primary comparison: tested alone; the others are Holm-corrected as one family.",
        choices=tuple(f"{first}-{second}" for first, second in COMPARISONS),
    )
    resummarise: bool = flag(
        False,
        "Run nothing: recompute the summary, tables and plots of --output_dir's ablation.json.",
        results=False,
    )
    round0_max_steps: int | None = flag(
        None,
        "Train round 0 this many steps (a weaker or stronger start); default: as the arms.",
        at_least=1,
    )
    add_results: str | None = flag(
        None, "ablation.json of an earlier run with the same flags and arms: its seeds join this run's."
    )

    def __post_init__(self) -> None:
        check_flags(self)
        listed_integers("seeds", self.seeds, at_least=0)


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


def prediction_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Where the mean of another run of as many seeds should fall, if seeds are the only
    source of variation: mean +- t(n-1) * sd * sqrt(2 / n) (nan with one seed)."""
    if len(values) < 2:
        return math.nan, math.nan
    mean = statistics.fmean(values)
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * statistics.stdev(values) * math.sqrt(2 / len(values))
    return mean - half, mean + half


def paired_p_value(values: list[float]) -> float:
    """Two-sided p of a paired t-test of mean 0 (nan with fewer than two seeds or no spread)."""
    if len(values) < 2 or statistics.pstdev(values) == 0:
        return math.nan
    return float(stats.ttest_1samp(values, 0.0).pvalue)


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values of one family (nan p-values are left out)."""
    ordered = sorted((p, name) for name, p in p_values.items() if not math.isnan(p))
    adjusted, running = {}, 0.0
    for position, (p, name) in enumerate(ordered):
        running = max(running, min(1.0, (len(ordered) - position) * p))
        adjusted[name] = running
    return adjusted


def seeds_to_resolve(values: list[float], most: int = 500) -> int | None:
    """How many seeds the 95% interval of the mean would need to exclude 0, if the mean and
    sd stayed as measured (None: resolved already, or a zero mean that never resolves)."""
    if len(values) < 2:
        return None
    mean, low, high = confidence_interval(values)
    if not low <= 0 <= high:
        return None
    sd = statistics.stdev(values)
    for n in range(len(values) + 1, most + 1):
        if stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) < abs(mean):
            return n
    return None


def summarise(
    results: dict[str, dict[int, dict[str, dict[str, float]]]], primary: str | None = None
) -> dict:
    """results[arm][seed]["iter_i"][metric] -> per arm and round: mean and sd over seeds;
    per comparison and round: the paired differences' mean, 95% interval, prediction
    interval and p; at the last round, Avg's p Holm-adjusted over the comparisons but
    `primary` (tested alone), and whether each is below ALPHA."""
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
                    "pi95": list(prediction_interval(values)),
                    "p": paired_p_value(values),
                    "n": len(values),
                    "seeds_to_resolve": seeds_to_resolve(values),
                }
    last = rounds[-1] if rounds else None
    family = {
        name: by_round[last]["avg"]["p"]
        for name, by_round in summary["differences"].items()
        if name != primary and last in by_round and "avg" in by_round[last]
    }
    adjusted = holm(family)
    summary["tests"] = {"round": last, "metric": "avg", "alpha": ALPHA, "primary": None, "holm": {}}
    if primary in summary["differences"] and last in summary["differences"][primary]:
        p = summary["differences"][primary][last]["avg"]["p"]
        summary["tests"]["primary"] = {"comparison": primary, "p": p, "significant": bool(p < ALPHA)}
    for name, p in adjusted.items():
        summary["tests"]["holm"][name] = {"p": family[name], "p_holm": p, "significant": bool(p < ALPHA)}
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
            cells = [_difference_cell(metrics[m]) for m in METRICS]
            lines.append(f"| {name} | {key.split('_')[1]} | " + " | ".join(cells) + " |")
    lines.append(
        "\n(n=K: how many seeds the measured spread would need for the interval to exclude 0, "
        "if the mean stayed as measured: a planning figure, not evidence of no effect.)"
    )
    tests = summary.get("tests", {})
    if tests.get("round"):
        round_ = tests["round"].split("_")[1]
        lines.append(f"\nTests at round {round_}, Avg, paired t over seeds (alpha {tests['alpha']}):\n")
        lines.append("| comparison | mean [95% CI] | 95% prediction interval (another run, as many seeds) | p | Holm p | survives |")
        lines.append("|---|---|---|---|---|---|")
        primary = tests.get("primary")
        if primary:
            value = summary["differences"][primary["comparison"]][tests["round"]]["avg"]
            lines.append(f"| {primary['comparison']} (primary, tested alone) | {_difference_cell(value, planning=False)} | "
                         f"{_interval(value['pi95'])} | {primary['p']:.4f} | - | {'yes' if primary['significant'] else 'no'} |")
        for name, test in sorted(tests["holm"].items(), key=lambda item: item[1]["p"]):
            value = summary["differences"][name][tests["round"]]["avg"]
            lines.append(f"| {name} | {_difference_cell(value, planning=False)} | {_interval(value['pi95'])} | "
                         f"{test['p']:.4f} | {test['p_holm']:.4f} | {'yes' if test['significant'] else 'no'} |")
    return "\n".join(lines) + "\n"


def _interval(bounds: list[float]) -> str:
    return "-" if math.isnan(bounds[0]) else f"[{bounds[0]:+.2f}, {bounds[1]:+.2f}]"


def _difference_cell(value: dict, planning: bool = True) -> str:
    low, high = value["ci95"]
    if math.isnan(low):  # one seed: no interval
        return f"{value['mean']:+.2f} [one seed]"
    cell = f"{value['mean']:+.2f} [{low:+.2f}, {high:+.2f}]"
    return cell + (f" n={value['seeds_to_resolve']}" if planning and value.get("seeds_to_resolve") else "")


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


def run_round0(seed: int, flags: list[str], output: Path, threads: int, round0_flags: list[str]) -> None:
    """The seed's round 0, which every arm starts from (kept if already there; continued
    where it stopped if an earlier invocation was killed during it)."""
    import torch

    torch.set_num_threads(threads)
    round0 = Experiment(output / "experiments" / f"seed{seed}" / "round0")
    if not round0.evaluation("val", 0).is_file():
        resume = ["--auto_resume"] if round0.dir.exists() else []
        argv = [*flags, "--seed", str(seed), "--no_report", *round0_flags, *resume,
                "--num_iterations", "0", "--experiment_dir", str(round0.dir)]  # fmt: skip
        if train_main(argv) != 0:
            raise RuntimeError(f"round 0 of seed {seed} failed")


def run_arm(seed: int, arm: str, flags: list[str], output: Path, threads: int) -> dict:
    """One arm of one seed from the seed's round 0 (a finished arm is only read back):
    {"results", "steps", "texts"}."""
    import torch

    torch.set_num_threads(threads)
    seed_dir = output / "experiments" / f"seed{seed}"
    round0, experiment = Experiment(seed_dir / "round0"), Experiment(seed_dir / arm)
    if not experiment.dir.exists():
        share_round0(round0, experiment, round0.embeddings_dir)
    argv = [*flags, "--seed", str(seed), "--no_report", *ARMS[arm][1],
            "--experiment_dir", str(experiment.dir), "--auto_resume", "--allow_config_change"]  # fmt: skip
    if train_main(argv) != 0:
        raise RuntimeError(f"arm {arm}, seed {seed} failed")
    record = arm_record(experiment)
    print(f"seed {seed} arm {arm}: {record['results']}", flush=True)
    return record


def arm_record(experiment: Experiment) -> dict:
    """An arm's validation metrics per round, its optimizer steps per round, and per round
    the new texts kept and each filter's diagnostics (where texts were written)."""
    steps = {
        f"iter_{entry.iteration}": entry.summary.steps if isinstance(entry.summary, TrainSummary) else None
        for entry in experiment.log.entries()
        if entry.stage == "train"
    }
    texts = {}
    for i in range(1, max(experiment.evaluated_rounds("val"), default=0) + 1):
        if experiment.augmented(i).is_file():
            stats = AugmentedSamples.read(experiment.augmented(i)).stats
            if isinstance(stats, AugmentSkipped):
                texts[f"iter_{i}"] = {"pairs": None, "kept": stats.kept, "rejected": None, "filters": None}
            else:
                texts[f"iter_{i}"] = {"pairs": stats.pairs, "kept": stats.kept,
                                      "rejected": stats.rejected, "filters": dump(stats.filters)}  # fmt: skip
    return {"results": json.loads(experiment.evaluation_results.read_text()), "steps": steps, "texts": texts}


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


class _Ran:
    """A call made in this process, answering `get()` as a pool's AsyncResult does."""

    def __init__(self, function, arguments: tuple) -> None:
        self.result, self.error = None, None
        try:
            self.result = function(*arguments)
        except Exception as error:
            self.error = error

    def get(self):
        if self.error is not None:
            raise self.error
        return self.result


def run_seeds(
    seeds: list[int], arms: list[str], flags: list[str], output: Path, args: AblationOptions
) -> tuple[dict[int, dict], dict[int, str]]:
    """Every seed's runs ({seed: {arm: run_arm's record}}) and the failures ({seed: why}).

    Every round 0, then every (seed, arm), `--jobs` at a time, each in a fresh process
    (maxtasksperchild=1: its own thread count, memory returned when it ends), so the cores
    stay busy to the end rather than waiting on the last seed's arms in turn. With one job
    they run here, one after another."""
    round0_flags = ["--max_steps", str(args.round0_max_steps)] if args.round0_max_steps else []
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    here = args.jobs == 1
    runs: dict[int, dict] = {}
    failed: dict[int, str] = {}

    pool_here = contextlib.nullcontext() if here else multiprocessing.get_context("spawn").Pool(args.jobs, maxtasksperchild=1)
    with pool_here as pool:

        def start(seed: int, function, arguments: tuple):
            if here:
                return _Ran(function, arguments)
            return pool.apply_async(function, arguments)

        starts = {seed: start(seed, run_round0, (seed, flags, output, threads, round0_flags)) for seed in seeds}
        pending = {}
        for seed, started in starts.items():
            try:
                started.get()
            except Exception as error:  # one seed's failure must not lose the others
                failed[seed] = f"{type(error).__name__}: {error}"
                continue
            for arm in arms:
                pending[seed, arm] = start(seed, run_arm, (seed, arm, flags, output, threads))
        for (seed, arm), result in pending.items():
            try:
                runs.setdefault(seed, {})[arm] = result.get()
            except Exception as error:
                failed.setdefault(seed, f"{type(error).__name__}: {error}")
    return {seed: runs[seed] for seed in seeds if seed in runs and seed not in failed}, failed


def write_tables(output: Path, summary: dict, descriptions: dict[str, str]) -> None:
    """ablation.md and the plots of a summary."""
    (output / "ablation.md").write_text(markdown(summary, descriptions))
    for metric in PLOTTED:
        plot(summary, metric, output / f"ablation_{metric.replace('@', '_at_')}.png")
    print((output / "ablation.md").read_text())


def resummarise(output: Path, primary: str | None) -> Path:
    """Recompute an ablation.json's summary (intervals, tests) and its tables by today's
    rules, its results untouched (`--primary` given now, or the one it recorded)."""
    path = output / "ablation.json"
    payload = json.loads(path.read_text())
    results = {arm: {int(s): runs for s, runs in by_seed.items()} for arm, by_seed in payload["results"].items()}
    payload["primary"] = primary or payload.get("primary")
    payload["summary"] = summarise(results, payload["primary"])
    path.write_text(json.dumps(payload, indent=1))
    write_tables(output, payload["summary"], payload["arms"])
    return output


def main(argv: list[str] | None = None) -> Path:
    args, flags = parse_known_options(AblationOptions, argv, __doc__.split("\n\n")[0])
    output = Path(args.output_dir)
    if args.resummarise:
        return resummarise(output, args.primary)
    seeds = listed_integers("seeds", args.seeds, at_least=0)
    dataset = flags[flags.index("--dataset_path") + 1] if "--dataset_path" in flags else None
    synthetic = dataset is None or SCENE_ORACLE.works_on(Path(dataset))
    has_texts = "--foundation_model_path" in flags or synthetic
    arms = args.arms.split(",") if args.arms else [a for a in "ABCSDE" if has_texts or a not in TEXT_ARMS]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or (not synthetic and set(arms) & set(SIMULATED_ARMS)):
        raise SystemExit(f"--arms {args.arms}: unknown {unknown}, or simulated arms on real data")
    start = time.perf_counter()
    finished, failed = run_seeds(seeds, arms, flags, output, args)
    done = [s for s in seeds if s in finished]
    results = {arm: {s: finished[s][arm]["results"] for s in done} for arm in arms}
    if args.add_results:
        results, done = add_earlier_results(results, done, Path(args.add_results), flags, arms)
    summary = summarise(results, args.primary)
    descriptions = {arm: ARMS[arm][0] for arm in arms}
    payload = {
        "command": " ".join(
            ["python -m benchmarks.ablation", *(argv if argv is not None else sys.argv[1:])]
        ),
        "flags": flags,
        "seeds": done,
        "primary": args.primary,
        "failed": failed,
        "arms": descriptions,
        # arms finished by an earlier invocation are skipped, not counted
        "minutes_this_invocation": round((time.perf_counter() - start) / 60, 1),
        "jobs": args.jobs,
        "results": results,
        "steps": {arm: {s: finished[s][arm]["steps"] for s in finished} for arm in arms},
        "texts": {arm: {s: finished[s][arm]["texts"] for s in finished} for arm in arms},
        "summary": summary,
    }
    output.mkdir(parents=True, exist_ok=True)
    (output / "ablation.json").write_text(json.dumps(payload, indent=1))
    if done:
        write_tables(output, summary, descriptions)
    if not args.keep_experiments and not failed:
        shutil.rmtree(output / "experiments")
    print(f"{payload['minutes_this_invocation']} min; {output}")
    if failed:
        raise SystemExit(
            "seeds that failed (the summary covers the others; rerun the same command to "
            f"continue them): {failed}"
        )
    return output


if __name__ == "__main__":
    main()
