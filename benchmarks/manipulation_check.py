"""Do the new texts reach the model? The refinement experiment's manipulation check.

    python -m benchmarks.manipulation_check benchmarks/results/refinement_shapes --treated RD --control RC

Reads the kept experiments of an ablation (`{ablation}/experiments/seed*/{arm}/`) and, per
seed and round r of the treated arm (an arm that wrote new texts) against the control arm
(the same seed, no texts), asks of the training queries the treated arm captioned in round
r, ranked over the training gallery (the reference left out, as everywhere):

- new text: the new triplet (reference + new text -> the negative it was written for).
  The share ranked first after round r, by the treated arm's checkpoint_iter_r and by the
  control's, which never saw the text. If the treated arm does not rank far more of them
  first, the texts do not even teach their own pairs: the signal is not reaching the model.
- original text: the query the pair came from (reference + original text -> original
  target), a failure when it was captioned. The share whose target ranks first after the
  round, treated against control: does a text for a failure fix the failure?

Both are paired by seed, with 95% t-intervals of the mean difference. Writes
`{ablation}/manipulation_check_{treated}.json` and `.md`. Encoding goes through each experiment's
embedding cache.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

import numpy as np

from benchmarks import parse_options
from benchmarks.ablation import ARMS, TEXT_ARMS, confidence_interval
from src.arguments import check_flags, flag
from src.artifacts import AugmentedSamples
from src.data.loading import load_split
from src.data.records import Split, Triplet
from src.experiment import Experiment
from src.retrieval.checkpoint_encoding import CheckpointEncoder, EncodeSettings
from src.retrieval.encode import EmbeddingCache
from src.retrieval.search import target_ranks

SIDES = ("new text", "original text")


def first_ranked(experiment: Experiment, iteration: int, split: Split, triplets: list[Triplet], dataset: str) -> float:
    """Percent of `triplets` whose target checkpoint_iter_{iteration} ranks first over the
    split's gallery, the reference left out."""
    checkpoint = experiment.verified_checkpoint(iteration)
    cache = EmbeddingCache(experiment.embeddings_dir)
    with CheckpointEncoder(checkpoint.path, checkpoint.fingerprint, cache, EncodeSettings()) as encoder:
        encoded = encoder.encode_split(split, triplets, dataset)
    index = {name: i for i, name in enumerate(encoded.gallery_names)}
    ranks, _ = target_ranks(
        encoded.queries,
        encoded.gallery,
        [index[t.target] for t in triplets],
        exclude=[[index[t.reference]] for t in triplets],
    )
    return float(100 * np.mean(ranks == 1))


def captioned_queries(experiment: Experiment, iteration: int, split: Split) -> dict[str, list[Triplet]]:
    """Round `iteration`'s kept new triplets, and the original queries they came from."""
    samples = AugmentedSamples.read(experiment.augmented(iteration)).samples
    originals = {t.pairid: t for t in split.triplets}
    new = [Triplet(s.pairid, s.reference, s.caption, s.target) for s in samples]
    sources = [originals[pairid] for pairid in dict.fromkeys(s.source_pairid for s in samples)]
    return {"new text": new, "original text": sources}


def check(ablation: Path, treated: str, control: str) -> dict:
    seeds = sorted(int(p.name.removeprefix("seed")) for p in (ablation / "experiments").glob("seed*"))
    first = Experiment(ablation / "experiments" / f"seed{seeds[0]}" / treated)
    data = first.config.record().flags.data
    dataset_name = data.dataset_name
    split = load_split(dataset_name, data.dataset_path, "train")
    rounds = sorted(i for i in first.evaluated_rounds("val") if i > 0)
    report: dict = {"treated": treated, "control": control, "seeds": seeds, "rounds": {}}
    for i in rounds:
        rows = {side: {"treated": [], "control": [], "queries": []} for side in SIDES}
        for seed in seeds:
            arms = {role: Experiment(ablation / "experiments" / f"seed{seed}" / arm)
                    for role, arm in (("treated", treated), ("control", control))}  # fmt: skip
            queries = captioned_queries(arms["treated"], i, split)
            for side in SIDES:
                rows[side]["queries"].append(len(queries[side]))
                for role, experiment in arms.items():
                    rows[side][role].append(first_ranked(experiment, i, split, queries[side], dataset_name))
            print(f"seed {seed} round {i}: " + ", ".join(
                f"{side} {rows[side]['treated'][-1]:.1f} vs {rows[side]['control'][-1]:.1f}" for side in SIDES
            ), flush=True)  # fmt: skip
        report["rounds"][str(i)] = {side: _summary(values) for side, values in rows.items()}
    return report


def _summary(values: dict[str, list[float]]) -> dict:
    differences = [t - c for t, c in zip(values["treated"], values["control"], strict=True)]
    mean, low, high = confidence_interval(differences)
    return {
        "queries_mean": statistics.fmean(values["queries"]),
        "treated": statistics.fmean(values["treated"]),
        "control": statistics.fmean(values["control"]),
        "difference": {"mean": mean, "ci95": [low, high]},
        "per_seed": values,
    }


def markdown(report: dict) -> str:
    treated, control = report["treated"], report["control"]
    lines = [f"Training queries {treated} captioned in round r, percent whose target ranks first after round r "
             f"(mean over seeds: {len(report['seeds'])}; difference paired by seed, 95% CI):\n",
             f"| round | query | queries per seed | {treated} | {control} | {treated} - {control} |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for i, sides in report["rounds"].items():
        for side, row in sides.items():
            low, high = row["difference"]["ci95"]
            lines.append(f"| {i} | {side} | {row['queries_mean']:.0f} | {row['treated']:.2f} | {row['control']:.2f} | "
                         f"{row['difference']['mean']:+.2f} [{low:+.2f}, {high:+.2f}] |")  # fmt: skip
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class ManipulationOptions:
    ablation: str = flag(
        dataclasses.MISSING, "An ablation's output folder, run with --keep_experiments.", positional=True
    )
    treated: str = flag("RD", "The arm that wrote new texts.", choices=TEXT_ARMS)
    control: str = flag(
        "RC", "The arm without new texts, paired by seed.", choices=tuple(arm for arm in ARMS if arm not in TEXT_ARMS)
    )

    def __post_init__(self) -> None:
        check_flags(self)


def main(argv: list[str] | None = None) -> dict:
    args = parse_options(ManipulationOptions, argv, __doc__.split("\n\n")[0])
    folder = Path(args.ablation)
    report = check(folder, args.treated, args.control)
    name = f"manipulation_check_{args.treated}"
    (folder / f"{name}.json").write_text(json.dumps(report, indent=1))
    (folder / f"{name}.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
