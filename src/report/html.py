"""The HTML report of an experiment: what each round did, with the images.

`build_report(directory)` writes `{directory}/report/index.html`, a static page that opens
from the file system (inline CSS, no script, no network), with small JPEG thumbnails in
`report/thumbs/` beside it and the metric and loss plots as PNGs:

- the metric table of every evaluated round, under it whether the model composes (per
  round, the share of queries the reference image alone or the text alone solves, the
  composed recall on the others, the image-only and text-only recalls: src/report/table.py
  `modality_columns`; "-" for a round whose evaluation file predates these rankings), the
  metrics plot and the training loss of all rounds (from the TensorBoard runs);
- per round: a fixed sample of validation queries (reference, text, the top five with the
  target marked, the target's exact rank and how it moved since the previous round, its
  rank with the image alone and with the text alone), the queries that improved and
  worsened most; a sample of the mined hard negatives beside
  the target with their scores, those likely to be false negatives marked (scoring above
  the target, a `target_soft` entry, flagged by the consistency check); the new texts
  beside the original ones, the rejected ones with their reason, the count of every
  rejection rule and, for a simulated captioner, how well each filter told its wrong
  texts from its right ones (each shown text marked right or wrong by the simulation).

This module only gathers plain view data (the dataclasses below) from the artifacts
(`src/artifacts.py`, found through the experiment's layout) and the images it shows, never
the embeddings, so it costs seconds on a CIRR-size experiment and works on one still
running (the rounds done so far). The markup is in `templates/` (Jinja2, autoescaped):
`experiment.html.j2` for one experiment; given a folder of experiments (an ablation),
`comparison.html.j2` compares them, one column per experiment.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import jinja2
from PIL import Image

from src.artifacts import (
    AugmentedSample,
    AugmentedSamples,
    Evaluation,
    HardNegatives,
    RejectedSample,
    digest,
)
from src.data.images import load_image
from src.data.loading import load_split
from src.errors import ExperimentError
from src.experiment import Experiment
from src.experiment.layout import CONFIG_NAME, MOVED_ASIDE_PREFIX, REPORT_NAME, ExperimentLayout
from src.records import AugmentSkipped, AugmentStats, FilterDiagnostics, Simulation
from src.report.curves import plot_curves, read_curves
from src.report.table import MODALITY_LEGEND, modality_columns, plot_results

THUMB_SIDE = 128
SHOWN_MINED = 8
SHOWN_TEXTS = 8
SHOWN_MOVERS = 6
TEMPLATES = Path(__file__).with_name("templates")


@cache
def environment() -> jinja2.Environment:
    """The templates beside this module, every value autoescaped."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render(template: str, **values) -> str:
    return environment().get_template(template).render(**values)


# ---------------------------------------------------------------- view data


@dataclass
class Thumb:
    """A thumbnail with its caption; `mark`: "target" (green), "flag" (red) or ""."""

    src: str
    label: str = ""
    mark: str = ""


@dataclass
class MetricTable:
    """Rows of (label, values); a value is None where it is missing (an int: a count)."""

    columns: list[str]
    rows: list[tuple[str, list[float | int | None]]]


@dataclass
class QueryCard:
    """A validation query: `rank` is the target's rank (None: not in the gallery); `moved`
    how many places it rose (negative: fell) since round `since`, None if not known;
    `unimodal` whether the evaluation file holds the target's rank with the image alone
    (`image_rank`) and the text alone (`text_rank`; None: cannot be retrieved)."""

    pairid: str
    caption: str
    reference: Thumb
    top: list[Thumb]
    rank: int | None
    moved: int | None = None
    since: int | None = None
    unimodal: bool = False
    image_rank: int | None = None
    text_rank: int | None = None


@dataclass
class Movers:
    since: int
    improved: list[QueryCard]
    worse: list[QueryCard]


@dataclass
class MinedCard:
    caption: str
    reference: Thumb
    target: Thumb
    negatives: list[Thumb]
    target_rank: int | None


@dataclass
class MinedSection:
    file: str
    num_mined: int | None
    num_queries: int | None
    num_negatives: int | None
    removed_by_filter: dict[str, int]
    cards: list[MinedCard]


@dataclass
class SimulationMark:
    """A simulated captioner's record of one text: right or wrong, and its mistake."""

    correct: bool
    mistake: str | None = None

    @classmethod
    def of(cls, record: Simulation | None) -> SimulationMark | None:
        return None if record is None else cls(record.correct, record.error)


@dataclass
class FilterRow:
    """How one filter did on the simulated captioner's texts."""

    name: str
    wrong_in: int
    wrong_removed: int
    right_in: int
    right_removed: int
    precision: float | None
    recall: float | None

    @classmethod
    def rows(cls, diagnostics: dict[str, FilterDiagnostics] | None) -> list[FilterRow]:
        """From `Decisions.filter_diagnostics` (None: not a simulated captioner)."""
        return [
            cls(
                name,
                counts.wrong_in,
                counts.wrong_removed,
                counts.right_in,
                counts.right_removed,
                counts.precision,
                counts.recall,
            )
            for name, counts in (diagnostics or {}).items()
        ]


@dataclass
class TextCard:
    """A kept new text (`rejection` None) or a rejected one (with its reason)."""

    reference: Thumb
    images: list[Thumb]
    text: str | None  # None: the generator wrote nothing
    original: str | None = None
    rejection: str | None = None
    simulation: SimulationMark | None = None


def _selection_line(stats: AugmentStats) -> str | None:
    """Which pairs were captioned, in a sentence (None for a file written before
    --augment_selection existed)."""
    if stats.selection is None:
        return None
    before = stats.queries_captioned_before
    return (
        f"selection {stats.selection}: {stats.failures} failure pairs (negative ranked above "
        f"the target) over {stats.failure_queries} queries; {stats.pairs} of "
        f"{stats.pairs_available} available pairs captioned"
        + ("" if before is None else f"; {before} of their queries were captioned the round before")
    )


@dataclass
class TextsSection:
    file: str
    generator: str
    kept: int | None
    pairs: int | None
    skipped: str | None
    rejections: list[tuple[str, int]]
    selection: str | None
    filters: list[FilterRow]
    kept_cards: list[TextCard] = field(default_factory=list)
    rejected_cards: list[TextCard] = field(default_factory=list)


@dataclass
class RoundView:
    iteration: int
    queries: list[QueryCard]
    movers: Movers | None = None
    mined: MinedSection | None = None
    texts: TextsSection | None = None


@dataclass
class ExperimentView:
    name: str
    model: str
    dataset: str
    dataset_path: str
    evaluated: list[int]
    metrics: MetricTable | None
    metrics_plot: str | None
    loss_plot: str | None
    rounds: list[RoundView]
    modalities: MetricTable | None = None
    modality_legend: str = MODALITY_LEGEND


@dataclass
class ComparisonRound:
    iteration: int
    rows: list[list[QueryCard | None]]  # per sampled query, one card per experiment


@dataclass
class ComparisonView:
    names: list[str]
    metrics: list[tuple[str, MetricTable]]
    rounds: list[ComparisonRound]
    modalities: list[tuple[str, MetricTable]] = field(default_factory=list)
    modality_legend: str = MODALITY_LEGEND


# ---------------------------------------------------------------- gathering


class Thumbnails:
    """Small JPEGs of the images the page shows, written once each."""

    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def __call__(self, path: str) -> str:
        name = digest(str(path))[:16] + ".jpg"
        target = self.directory / name
        if not target.is_file():
            image = load_image(path)
            image.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR)
            image.save(target, "JPEG", quality=82)
        return f"{self.directory.name}/{name}"


def metric_table(results: dict[int, dict[str, float]]) -> MetricTable:
    """One row per round, one column per metric."""
    columns = list(dict.fromkeys(m for i in sorted(results) for m in results[i]))
    rows = [(f"round {i}", [results[i].get(m) for m in columns]) for i in sorted(results)]
    return MetricTable(columns, rows)


def modality_table(evaluations: dict[int, Evaluation]) -> MetricTable | None:
    """One row per round, one column per modality measure (src/report/table.py); None
    when no round's file has these rankings (a row of "-" for a round whose file has not)."""
    blocks = {i: evaluations[i].modalities for i in sorted(evaluations)}
    columns = modality_columns(blocks)
    if not columns:
        return None
    rows = [
        (f"round {i}", [(block or {}).get(key) for _, key in columns])
        for i, block in blocks.items()
    ]
    return MetricTable([name for name, _ in columns], rows)


class ExperimentPages:
    """The view data of one experiment's report."""

    def __init__(self, experiment: Experiment, thumbs: Thumbnails, queries: int, seed: int):
        self.experiment, self.thumbs = experiment, thumbs
        self.flags = experiment.config.record().flags
        data = self.flags.data
        splits = {}
        for name in ("train", "val"):
            splits[name] = load_split(
                data.dataset_name,
                data.dataset_path,
                name,
                check_files=False,
                allow_external_images=data.allow_external_images,
            )
        self.summaries = experiment.log.latest()
        self.splits = splits
        self.val_by_pairid = {t.pairid: t for t in splits["val"].triplets}
        self.train_by_pairid = {t.pairid: t for t in splits["train"].triplets}
        self.rounds = experiment.evaluated_rounds("val")
        self.evaluations = {
            i: Evaluation.read(experiment.evaluation("val", i)) for i in self.rounds
        }
        pairids = sorted(set(self.evaluations[self.rounds[0]].queries)) if self.rounds else []
        self.sample = random.Random(seed).sample(pairids, min(queries, len(pairids)))

    def image(self, split: str, name: str, label: str = "", mark: str = "") -> Thumb:
        return Thumb(self.thumbs(self.splits[split].images[name]), label, mark)

    def query_card(self, pairid: str, iteration: int) -> QueryCard | None:
        """The card of a validation query in round `iteration` (None if not evaluated)."""
        evaluation = self.evaluations.get(iteration)
        ranking = evaluation.queries.get(pairid) if evaluation else None
        triplet = self.val_by_pairid.get(pairid)
        if ranking is None or triplet is None:
            return None
        rank = ranking.target_rank
        top = []
        for position, name in enumerate(ranking.top, start=1):
            hit = name == triplet.target
            top.append(
                self.image(
                    "val",
                    name,
                    f"{position}: target" if hit else str(position),
                    "target" if hit else "",
                )
            )
        card = QueryCard(
            pairid, triplet.caption, self.image("val", triplet.reference, "reference"), top, rank
        )
        if evaluation.modalities is not None:
            card.unimodal = True
            card.image_rank, card.text_rank = ranking.image_rank, ranking.text_rank
        earlier = self.evaluations.get(iteration - 1)
        previous = earlier.queries.get(pairid) if earlier else None
        if previous and previous.target_rank and rank:
            card.moved, card.since = previous.target_rank - rank, iteration - 1
        return card

    def movers(self, iteration: int) -> Movers | None:
        if iteration - 1 not in self.evaluations:
            return None
        now, before = self.evaluations[iteration].queries, self.evaluations[iteration - 1].queries
        deltas = sorted(
            (before[p].target_rank - now[p].target_rank, p)
            for p in now
            if p in before and now[p].target_rank and before[p].target_rank
        )
        improved = [p for d, p in reversed(deltas[-SHOWN_MOVERS:]) if d > 0]
        worse = [p for d, p in deltas[:SHOWN_MOVERS] if d < 0]

        def cards(pairids: list[str]) -> list[QueryCard]:
            return [c for p in pairids if (c := self.query_card(p, iteration)) is not None]

        return Movers(iteration - 1, cards(improved), cards(worse))

    def mined(self, iteration: int) -> MinedSection | None:
        path = self.experiment.hard_negatives(iteration - 1)
        if not path.is_file():
            return None
        mined = HardNegatives.read(path)
        flagged = {}
        augmented_path = self.experiment.augmented(iteration)
        if augmented_path.is_file():
            flagged = AugmentedSamples.read(augmented_path).false_negatives
        pairids = random.Random(iteration).sample(
            sorted(mined.queries), min(SHOWN_MINED, len(mined.queries))
        )
        cards = []
        for pairid in pairids:
            query, triplet = mined.queries[pairid], self.train_by_pairid.get(pairid)
            if triplet is None:
                continue
            target_score = query.target_score
            negatives = []
            for negative in query.negatives:
                reasons = []
                score = negative.score
                if score is not None and target_score is not None and score >= target_score:
                    reasons.append("scores above the target")
                if negative.image in triplet.target_soft:
                    reasons.append(f"target_soft {triplet.target_soft[negative.image]:+.1f}")
                if negative.image in flagged.get(pairid, []):
                    reasons.append("consistency check: a false negative")
                label = "; ".join(["random" if score is None else f"{score:.3f}", *reasons])
                negatives.append(
                    self.image("train", negative.image, label, "flag" if reasons else "")
                )
            target_label = "target" if target_score is None else f"target {target_score:.3f}"
            cards.append(
                MinedCard(
                    triplet.caption,
                    self.image("train", triplet.reference, "reference"),
                    self.image("train", triplet.target, target_label, "target"),
                    negatives,
                    query.target_rank,
                )
            )
        stats = mined.stats
        return MinedSection(
            path.name,
            stats.num_mined,
            stats.num_queries,
            stats.num_negatives,
            dict(stats.removed_by_filter),
            cards,
        )

    def kept_card(self, sample: AugmentedSample) -> TextCard:
        images = [self.image("train", sample.target, "new target", "target")]
        if sample.original_target:
            images.append(self.image("train", sample.original_target, "original target"))
        return TextCard(
            self.image("train", sample.reference, "reference"),
            images,
            sample.caption,
            original=sample.original_caption,
            simulation=SimulationMark.of(sample.simulation),
        )

    def rejected_card(self, rejected: RejectedSample) -> TextCard:
        return TextCard(
            self.image("train", rejected.reference, "reference"),
            [self.image("train", rejected.target, "pair target", "flag")],
            rejected.text or rejected.raw_output,
            rejection=rejected.reason,
            simulation=SimulationMark.of(rejected.simulation),
        )

    def texts(self, iteration: int) -> TextsSection | None:
        path = self.experiment.augmented(iteration)
        if not path.is_file():
            return None
        payload = AugmentedSamples.read(path)
        stats = payload.stats
        skipped = isinstance(stats, AugmentSkipped)
        summary = self.summaries.get(("augment", iteration))
        section = TextsSection(
            file=path.name,
            generator=summary.generator if summary is not None else "-",
            kept=stats.kept,
            pairs=None if skipped else stats.pairs,
            skipped=None,
            rejections=[] if skipped else list(stats.rejected.items()),
            selection=None if skipped else _selection_line(stats),
            filters=[] if skipped else FilterRow.rows(stats.filters),
        )
        if not payload.samples and not payload.rejected:
            section.skipped = stats.skipped if skipped else "none"
            return section
        rng = random.Random(iteration)
        kept = rng.sample(payload.samples, min(SHOWN_TEXTS, len(payload.samples)))
        rejected = rng.sample(payload.rejected, min(SHOWN_TEXTS, len(payload.rejected)))
        section.kept_cards = [self.kept_card(s) for s in kept]
        section.rejected_cards = [self.rejected_card(r) for r in rejected]
        return section

    def round_view(self, iteration: int) -> RoundView:
        cards = [c for p in self.sample if (c := self.query_card(p, iteration)) is not None]
        view = RoundView(iteration, cards, self.movers(iteration))
        if iteration > 0:
            view.mined, view.texts = self.mined(iteration), self.texts(iteration)
        return view


def _experiments_under(directory: Path) -> dict[str, Experiment]:
    """The experiments in a folder (an ablation), by their path relative to it."""
    found = {}
    for config in sorted(directory.rglob(CONFIG_NAME)):
        if REPORT_NAME in config.parts or MOVED_ASIDE_PREFIX in str(config):
            continue
        found[str(config.parent.relative_to(directory))] = Experiment(config.parent)
    return found


def single_report(experiment: Experiment, out: Path, queries: int, seed: int) -> str:
    pages = ExperimentPages(experiment, Thumbnails(out / "thumbs"), queries, seed)
    name = experiment.dir.name
    results = {
        i: pages.evaluations[i].metrics for i in pages.rounds if pages.evaluations[i].metrics
    }
    metrics_plot = None
    if results:
        keyed = {f"iter_{i}": metrics for i, metrics in results.items()}
        metrics_plot = plot_results(keyed, out / "metrics.png", name).name
    loss = plot_curves(read_curves(experiment.dir), out / "loss.png", "training loss, every round")
    view = ExperimentView(
        name=name,
        model=str(pages.flags.model.model_name),
        dataset=pages.flags.data.dataset_name,
        dataset_path=str(pages.flags.data.dataset_path),
        evaluated=pages.rounds,
        metrics=metric_table(results) if results else None,
        metrics_plot=metrics_plot,
        loss_plot=loss.name if loss is not None else None,
        rounds=[pages.round_view(i) for i in pages.rounds],
        modalities=modality_table(pages.evaluations),
    )
    return render("experiment.html.j2", view=view)


def comparison_report(
    experiments: dict[str, Experiment], out: Path, queries: int, seed: int
) -> str:
    """One column per experiment: the metrics of every round, and the sampled queries."""
    thumbs = Thumbnails(out / "thumbs")
    pages = {name: ExperimentPages(e, thumbs, queries, seed) for name, e in experiments.items()}
    names = list(pages)
    rounds = sorted({i for p in pages.values() for i in p.rounds})
    first = pages[names[0]]
    metrics = list(first.evaluations[first.rounds[0]].metrics or {}) if first.rounds else []

    def value(name: str, i: int, metric: str) -> float | None:
        evaluation = pages[name].evaluations.get(i)
        return (evaluation.metrics or {}).get(metric) if evaluation else None

    tables = [
        (
            metric,
            MetricTable(
                names, [(f"round {i}", [value(n, i, metric) for n in names]) for i in rounds]
            ),
        )
        for metric in metrics
    ]

    def modality_value(name: str, i: int, key: str) -> float | int | None:
        evaluation = pages[name].evaluations.get(i)
        return (evaluation.modalities or {}).get(key) if evaluation else None

    blocks = {i: e.modalities for p in pages.values() for i, e in p.evaluations.items()}
    modality_tables = [
        (
            column,
            MetricTable(
                names, [(f"round {i}", [modality_value(n, i, key) for n in names]) for i in rounds]
            ),
        )
        for column, key in modality_columns(blocks)
    ]
    compared = [
        ComparisonRound(i, [[pages[n].query_card(p, i) for n in names] for p in first.sample])
        for i in rounds
    ]
    view = ComparisonView(names, tables, compared, modality_tables)
    return render("comparison.html.j2", view=view)


def build_report(directory: str | Path, queries: int = 24, seed: int = 0) -> Path:
    """Write `{directory}/report/index.html` for an experiment or a folder of experiments."""
    layout = ExperimentLayout(directory)
    out = layout.report_dir
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if layout.config_file.is_file():
        page = single_report(Experiment(layout.dir), out, queries, seed)
    else:
        experiments = _experiments_under(layout.dir)
        if not experiments:
            raise ExperimentError(f"{layout.dir} holds no experiment ({CONFIG_NAME} not found)")
        page = comparison_report(experiments, out, queries, seed)
    index = out / "index.html"
    index.write_text(page)
    return index
