"""What do the new texts teach? An analysis of an ablation's kept experiments.

    python -m benchmarks.analyse_texts benchmarks/results/ablation_texts --arms C,Dsim,D --round 3

Reads the arms' experiments under `{ablation}/experiments/seed*/` (run the ablation with
`--keep_experiments`) on a synthetic benchmark, and writes `{ablation}/texts_analysis.json`
and `.md`:

1. By edit kind (the domain's: add, remove, recolour, ... for shapes; colour, sleeve,
   neckline, ... for garments; two-step captions count for both their kinds): the share of each arm's new training pairs whose reference -> target
   difference involves that kind (its most salient change: what a text names first), and
   the validation R@1 of each arm on the queries of that kind, paired by seed against the
   first arm, with a 95% interval. If new texts teach what they cover, an arm should gain
   most where its texts concentrate.
2. The training triplets each arm saw per round (optimizer steps x batch) split into
   original and new ones: at equal steps, new triplets take the place of original ones.
3. The new texts' quality over rounds (right / wrong, where the captioner is a simulation).
4. Each filter's record on the simulated captioner's texts, summed over seeds and rounds
   (wrong and right texts reaching it, how many of each it removed), and the mined
   negatives dropped as likely false negatives.
5. Composition (where the evaluation files hold the image-only and text-only rankings):
   each arm's R@1 and R@10 on the validation queries that need both modalities, and the
   share one modality solves, against the first arm.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections import Counter
from pathlib import Path

from benchmarks import check_listed, parse_options
from benchmarks.ablation import ARMS, confidence_interval
from src.arguments import Flags, check_flags, flag
from src.artifacts import AugmentedSamples, Evaluation
from src.data.loading import load_split
from src.experiment import Experiment
from src.offline.domains import require_domain
from src.records import AugmentSkipped, AugmentStats, TrainSummary

DROPPED_NEGATIVES = "negatives dropped as false negatives"  # kept beside the filters' records
# The evaluation's composition block (src/retrieval/metrics.py, modality_metrics): R@K on the
# validation queries that neither the image alone nor the text alone solves at K.
COMPOSITION = ("need_both_recall@1", "need_both_recall@10", "solved_by_one_modality@1")


def change_kinds(domain, descriptions: dict, reference: str, target: str) -> list[str]:
    """The kinds of the differences between two images (their domain's names)."""
    return [change.kind for change in domain.differences(descriptions[reference], descriptions[target])]


def analyse(ablation: Path, arms: list[str], round_: int) -> dict:
    seeds = sorted(int(p.name.removeprefix("seed")) for p in (ablation / "experiments").glob("seed*"))
    first = Experiment(ablation / "experiments" / f"seed{seeds[0]}" / arms[0])
    flags = first.config.record().flags
    dataset = Path(flags.data.dataset_path)
    domain = require_domain(dataset)
    descriptions = domain.load_descriptions(dataset)
    val = load_split(flags.data.dataset_name, dataset, "val")
    query_kinds = {
        t.pairid: set(change_kinds(domain, descriptions, t.reference, t.target)) for t in val.triplets
    }
    kinds = sorted(set().union(*query_kinds.values()))
    batch = flags.training.per_device_train_batch_size
    originals = _train_size(dataset, flags)
    report: dict = {"seeds": seeds, "arms": arms, "round": round_, "kinds": kinds, "texts": {}, "recall_by_kind": {},
                    "triplets_seen": {}, "quality": {}, "filters": {}, "composition": {}}  # fmt: skip
    for arm in arms:
        covered, seen, quality, filters, composition = Counter(), {}, {}, {}, {}
        hits: dict[str, list[float]] = {kind: [] for kind in kinds}
        for seed in seeds:
            experiment = Experiment(ablation / "experiments" / f"seed{seed}" / arm)
            steps = {e.iteration: e.summary.steps if isinstance(e.summary, TrainSummary) else None
                     for e in experiment.log.entries() if e.stage == "train"}  # fmt: skip
            cumulative = experiment.config.record().flags.augment.augmented_pool == "cumulative"
            pooled = 0  # new triplets of the earlier rounds still in a cumulative pool
            for i in range(1, round_ + 1):
                new = []
                if experiment.augmented(i).is_file():
                    augmented = AugmentedSamples.read(experiment.augmented(i))
                    new = augmented.samples
                    _add_filter_counts(filters, augmented.stats)
                for sample in new:
                    pair_kinds = change_kinds(domain, descriptions, sample.reference, sample.target)
                    covered[pair_kinds[0] if pair_kinds else "none"] += 1
                in_pool = len(new) + pooled
                total, pool = (steps.get(i) or 0) * batch, originals + in_pool
                seen.setdefault(i, []).append(
                    {"original": total * originals / pool, "new": total * in_pool / pool}
                )
                pooled = in_pool if cumulative else 0
                right = [s.simulation.correct for s in new if s.simulation]
                if right:
                    quality.setdefault(i, []).append(sum(right) / len(right))
            evaluation = Evaluation.read(experiment.evaluation("val", round_))
            for key in COMPOSITION:
                composition.setdefault(key, []).append((evaluation.modalities or {}).get(key))
            ranks = evaluation.queries
            for kind in kinds:
                queries = [p for p in ranks if kind in query_kinds[p]]
                hits[kind].append(100 * sum(ranks[p].target_rank == 1 for p in queries) / max(1, len(queries)))
        total_new = sum(covered.values())
        report["texts"][arm] = {
            kind: covered[kind] / total_new if total_new else 0.0 for kind in sorted({*kinds, *covered})
        }
        report["recall_by_kind"][arm] = hits
        report["triplets_seen"][arm] = {
            str(i): {key: statistics.fmean(row[key] for row in rows) for key in ("original", "new")}
            for i, rows in seen.items()
        }
        report["quality"][arm] = {str(i): statistics.fmean(v) for i, v in quality.items()}
        report["filters"][arm] = filters
        report["composition"][arm] = composition
    base = arms[0]
    report["gain_by_kind"] = {arm: {kind: _paired(report["recall_by_kind"], arm, base, kind) for kind in kinds}
                              for arm in arms[1:]}  # fmt: skip
    measured = all(None not in values for arm in arms for values in report["composition"][arm].values())
    report["composition_gain"] = (
        {arm: {key: _paired(report["composition"], arm, base, key) for key in COMPOSITION} for arm in arms[1:]}
        if measured else None
    )  # fmt: skip
    return report


def _paired(recall: dict, arm: str, base: str, kind: str) -> dict:
    """The mean R@1 difference on one kind's queries, paired by seed, with its 95% interval."""
    mean, low, high = confidence_interval(
        [a - b for a, b in zip(recall[arm][kind], recall[base][kind], strict=True)]
    )
    return {"mean": mean, "ci95": [low, high]}


def _add_filter_counts(totals: dict, stats: AugmentStats | AugmentSkipped) -> None:
    """Adds one augmentation file's filter records (and its dropped negatives) to `totals`."""
    if isinstance(stats, AugmentSkipped):
        totals.setdefault(DROPPED_NEGATIVES, Counter())["count"] += 0
        return
    for name, record in (stats.filters or {}).items():
        counts = totals.setdefault(name, Counter())
        counts.update(wrong_in=record.wrong_in, right_in=record.right_in,
                      wrong_removed=record.wrong_removed, right_removed=record.right_removed)  # fmt: skip
    totals.setdefault(DROPPED_NEGATIVES, Counter())["count"] += stats.false_negatives


def _train_size(dataset: Path, flags: Flags) -> int:
    split = load_split(flags.data.dataset_name, dataset, "train")
    limit = flags.data.max_train_samples
    return min(len(split.triplets), limit) if limit else len(split.triplets)


def markdown(report: dict) -> str:
    arms, base, round_ = report["arms"], report["arms"][0], report["round"]
    lines = [f"New texts by edit kind (share of each arm's new pairs, rounds 1-{round_}), and round-{round_} "
             f"validation R@1 by the query's edit kind, minus {base}'s (mean over {len(report['seeds'])} seeds, "
             "paired by seed, 95% interval):\n",
             "| edit kind | " + " | ".join(f"{a}: share of texts" for a in arms[1:]) + " | "
             + " | ".join(f"{a} - {base}: R@1" for a in arms[1:]) + " |",
             "|---|" + "---|" * (2 * (len(arms) - 1))]  # fmt: skip
    for kind in report["kinds"]:
        shares = [f"{100 * report['texts'][a][kind]:.1f}%" for a in arms[1:]]
        gains = [_interval_cell(report["gain_by_kind"][a][kind]) for a in arms[1:]]
        lines.append(f"| {kind} | " + " | ".join(shares + gains) + " |")
    if report.get("composition_gain"):
        lines.append(f"\nComposition at round {round_}: each arm minus {base} on the validation queries that "
                     "need both modalities (neither the image alone nor the text alone ranks the target within K), "
                     "and the share one modality solves at 1 (paired by seed, 95% interval):\n")
        lines.append("| arm | " + " | ".join(COMPOSITION) + " |")
        lines.append("|---|" + "---|" * len(COMPOSITION))
        for arm in arms[1:]:
            lines.append(f"| {arm} - {base} | "
                         + " | ".join(_interval_cell(report["composition_gain"][arm][k]) for k in COMPOSITION) + " |")
    lines.append("\nTraining triplets seen per round (steps x batch, split by the round's pool), mean over seeds:\n")
    lines.append("| arm | " + " | ".join(f"round {i}: original / new" for i in sorted(report["triplets_seen"][base])) + " |")
    lines.append("|---|" + "---|" * len(report["triplets_seen"][base]))
    for arm in arms:
        cells = [f"{v['original']:.0f} / {v['new']:.0f}" for _, v in sorted(report["triplets_seen"][arm].items())]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    quality = {a: q for a, q in report["quality"].items() if q}
    if quality:
        lines.append("\nShare of the kept new texts that are right (simulated captioner's records):\n")
        for arm, rounds in quality.items():
            lines.append(f"- {arm}: " + ", ".join(f"round {i} {100 * v:.1f}%" for i, v in sorted(rounds.items())))
    filters = {a: f for a, f in report["filters"].items() if any(k != DROPPED_NEGATIVES for k in f)}
    if filters:
        lines.append(f"\nFilters on the simulated captioner's texts, summed over seeds and rounds 1-{round_}:\n")
        lines.append("| arm | filter | wrong in | right in | wrong removed | right removed | precision | recall |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for arm, records in filters.items():
            for name, c in records.items():
                if name == DROPPED_NEGATIVES:
                    continue
                removed = c["wrong_removed"] + c["right_removed"]
                precision = f"{c['wrong_removed'] / removed:.2f}" if removed else "-"
                recall = f"{c['wrong_removed'] / c['wrong_in']:.2f}" if c["wrong_in"] else "-"
                lines.append(f"| {arm} | {name} | {c['wrong_in']} | {c['right_in']} | {c['wrong_removed']} | "
                             f"{c['right_removed']} | {precision} | {recall} |")
        for arm, records in filters.items():
            dropped = records[DROPPED_NEGATIVES]["count"]
            if dropped:
                lines.append(f"\n{arm}: {dropped} mined negatives dropped from the loss as likely false negatives.")
    return "\n".join(lines) + "\n"


def _interval_cell(value: dict) -> str:
    low, high = value["ci95"]
    if math.isnan(low):
        return f"{value['mean']:+.2f}"
    return f"{value['mean']:+.2f} [{low:+.2f}, {high:+.2f}]"


@dataclasses.dataclass
class AnalyseOptions:
    ablation: str = flag(
        dataclasses.MISSING, "An ablation's output folder, run with --keep_experiments.", positional=True
    )
    arms: str = flag("C,Dsim,D", "Comma-separated arms of the ablation; the first is the baseline.")
    round: int = flag(3, "The round whose new texts and evaluation are analysed (texts from round 1).", at_least=1)
    resummarise: bool = flag(
        False,
        "Read nothing but texts_analysis.json: recompute its paired differences by today's rules.",
        results=False,
    )

    def __post_init__(self) -> None:
        check_flags(self)
        check_listed("arms", self.arms, ARMS)


def main(argv: list[str] | None = None) -> None:
    args = parse_options(AnalyseOptions, argv, __doc__.split("\n\n")[0])
    folder = Path(args.ablation)
    if args.resummarise:
        report = json.loads((folder / "texts_analysis.json").read_text())
        base, arms = report["arms"][0], report["arms"][1:]
        report["gain_by_kind"] = {arm: {kind: _paired(report["recall_by_kind"], arm, base, kind)
                                        for kind in report["kinds"]} for arm in arms}  # fmt: skip
    else:
        report = analyse(folder, args.arms.split(","), args.round)
    (folder / "texts_analysis.json").write_text(json.dumps(report, indent=1))
    (folder / "texts_analysis.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
