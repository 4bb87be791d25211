"""The HTML report of an experiment: what each round did, with the images.

`build_report(directory)` writes `{directory}/report/index.html`, a static page that opens
from the file system (inline CSS, no script, no network), with small JPEG thumbnails in
`report/thumbs/` beside it and the metric and loss plots as PNGs:

- the metric table of every evaluated round, the metrics plot and the training loss of
  all rounds (from the TensorBoard runs);
- per round: a fixed sample of validation queries (reference, text, the top five with the
  target marked, or the target's rank, and how that rank changed since the previous
  round), the queries that improved and worsened most; a sample of the mined hard
  negatives beside the target with their scores, those likely to be false negatives
  marked (scoring above the target, a `target_soft` entry, flagged by the consistency
  check); the new texts beside the original ones, the rejected ones with their reason,
  and the count of every rejection rule.

It reads only the artifacts (evaluation, mined and augmented JSON) and the images it
shows, never the embeddings, so it costs seconds on a CIRR-size experiment and works on
one still running (the rounds done so far). Given a folder of experiments (an ablation),
it compares them: one column per experiment.
"""

from __future__ import annotations

import html
import random
import shutil
from pathlib import Path

from PIL import Image

from src.artifacts import AugmentedSamples, Evaluation, HardNegatives, digest
from src.data.images import load_image
from src.data.loading import load_split
from src.errors import ExperimentError
from src.experiment import Experiment
from src.experiment.layout import CONFIG_NAME, MOVED_ASIDE_PREFIX, REPORT_NAME
from src.report.curves import plot_curves, read_curves
from src.report.table import plot_results

THUMB_SIDE = 128
TOP = 5
SHOWN_MINED = 8
SHOWN_TEXTS = 8
SHOWN_MOVERS = 6

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1.05em; margin: 1.2em 0 .4em; }
table.metrics { border-collapse: collapse; } table.metrics td, table.metrics th
{ border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
.card { display: inline-block; vertical-align: top; margin: 4px; padding: 6px;
  border: 1px solid #ddd; border-radius: 6px; background: #fafafa; max-width: 860px; }
.card img { width: 96px; height: 96px; object-fit: contain; border: 3px solid transparent;
  background: #fff; }
.card img.target { border-color: #2a9d3a; } .card img.flag { border-color: #d62828; }
.caption { font-size: .9em; margin: 3px 0; max-width: 820px; }
.note { font-size: .8em; color: #555; } .up { color: #2a9d3a; } .down { color: #d62828; }
figure { display: inline-block; margin: 0 2px; text-align: center; font-size: .75em; }
"""


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


def _img(thumbs: Thumbnails, path: str, label: str = "", css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return (
        f'<figure><img{cls} src="{thumbs(path)}" alt="{html.escape(label)}">'
        f"<figcaption>{html.escape(label)}</figcaption></figure>"
    )


def _rounds(experiment: Experiment) -> list[int]:
    return experiment.evaluated_rounds("val")


def _metric_table(results: dict[str, dict[str, float]], columns: list[str] | None = None) -> str:
    keys = sorted(results, key=lambda key: int(key.split("_")[-1]))
    metrics = columns or list(dict.fromkeys(m for k in keys for m in results[k]))
    head = "".join(f"<th>{html.escape(m)}</th>" for m in metrics)
    rows = "".join(
        f"<tr><th>{html.escape(k.replace('iter_', 'round '))}</th>"
        + "".join(f"<td>{results[k].get(m, float('nan')):.2f}</td>" for m in metrics)
        + "</tr>"
        for k in keys
    )
    return f'<table class="metrics"><tr><th></th>{head}</tr>{rows}</table>'


class ExperimentPages:
    """The sections of one experiment's report."""

    def __init__(self, experiment: Experiment, thumbs: Thumbnails, queries: int, seed: int):
        self.experiment, self.thumbs = experiment, thumbs
        arguments = experiment.config.arguments()
        self.arguments = arguments
        splits = {}
        for name in ("train", "val"):
            splits[name] = load_split(
                arguments["dataset_name"],
                arguments["dataset_path"],
                name,
                check_files=False,
                allow_external_images=arguments.get("allow_external_images", False),
            )
        self.splits = splits
        self.val_by_pairid = {t.pairid: t for t in splits["val"].triplets}
        self.train_by_pairid = {t.pairid: t for t in splits["train"].triplets}
        self.rounds = _rounds(experiment)
        self.evaluations = {
            i: Evaluation.read(experiment.evaluation("val", i)) for i in self.rounds
        }
        pairids = sorted(set(self.evaluations[self.rounds[0]].queries)) if self.rounds else []
        self.sample = random.Random(seed).sample(pairids, min(queries, len(pairids)))

    def image(self, split: str, name: str, label: str = "", css: str = "") -> str:
        return _img(self.thumbs, self.splits[split].images[name], label, css)

    def query_card(self, pairid: str, iteration: int, note: str = "") -> str:
        triplet = self.val_by_pairid[pairid]
        ranking = self.evaluations[iteration].queries[pairid]
        rank = ranking.target_rank
        shown = "".join(
            self.image("val", name, f"{position + 1}", "target" if name == triplet.target else "")
            for position, name in enumerate(ranking.top)
        )
        where = (
            "target in the top 5"
            if rank is not None and rank <= TOP
            else f"target at rank {rank}" if rank is not None else "target not retrievable"
        )
        earlier = self.evaluations.get(iteration - 1)
        previous = earlier.queries.get(pairid) if earlier else None
        change = ""
        if previous and previous.target_rank and rank:
            delta = previous.target_rank - rank
            if delta:
                css, arrow = ("up", "&#9650;") if delta > 0 else ("down", "&#9660;")
                change = f' <span class="{css}">{arrow} {abs(delta)} since round {iteration - 1}</span>'
        return (
            f'<div class="card">{self.image("val", triplet.reference, "reference")}'
            f" &rarr; {shown}"
            f'<div class="caption">&ldquo;{html.escape(triplet.caption)}&rdquo;</div>'
            f'<div class="note">pairid {html.escape(pairid)}: {where}{change} {note}</div></div>'
        )

    def movers(self, iteration: int) -> str:
        if iteration - 1 not in self.evaluations:
            return ""
        now, before = self.evaluations[iteration].queries, self.evaluations[iteration - 1].queries
        deltas = sorted(
            (before[p].target_rank - now[p].target_rank, p)
            for p in now
            if p in before and now[p].target_rank and before[p].target_rank
        )
        improved = [p for d, p in reversed(deltas[-SHOWN_MOVERS:]) if d > 0]
        worse = [p for d, p in deltas[:SHOWN_MOVERS] if d < 0]
        return (
            f"<h3>Improved most since round {iteration - 1}</h3>"
            + ("".join(self.query_card(p, iteration) for p in improved) or "<p>none</p>")
            + f"<h3>Worse since round {iteration - 1}</h3>"
            + ("".join(self.query_card(p, iteration) for p in worse) or "<p>none</p>")
        )

    def mined(self, iteration: int) -> str:
        path = self.experiment.hard_negatives(iteration - 1)
        if not path.is_file():
            return ""
        mined = HardNegatives.read(path)
        flagged = {}
        augmented_path = self.experiment.augmented(iteration)
        if augmented_path.is_file():
            flagged = AugmentedSamples.read(augmented_path).false_negatives
        pairids = random.Random(iteration).sample(sorted(mined.queries), min(SHOWN_MINED, len(mined.queries)))
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
                label = "random" if score is None else f"{score:.3f}"
                negatives.append(
                    self.image("train", negative.image, label + ("; " + "; ".join(reasons) if reasons else ""),
                               "flag" if reasons else "")  # fmt: skip
                )
            target = self.image("train", triplet.target, f"target {target_score:.3f}" if target_score is not None else "target", "target")
            cards.append(
                f'<div class="card">{self.image("train", triplet.reference, "reference")} '
                f"{target} | {''.join(negatives)}"
                f'<div class="caption">&ldquo;{html.escape(triplet.caption)}&rdquo;</div>'
                f'<div class="note">target rank {query.target_rank}; red: likely false negative</div></div>'
            )
        stats = mined.stats
        summary = (
            f'<p class="note">{stats.get("num_mined")} of {stats.get("num_queries")} queries mined, '
            f'{stats.get("num_negatives")} negatives; removed by filter: {stats.get("removed_by_filter")}</p>'
        )
        return f"<h3>Mined hard negatives ({path.name})</h3>{summary}{''.join(cards)}"

    def texts(self, iteration: int) -> str:
        path = self.experiment.augmented(iteration)
        if not path.is_file():
            return ""
        payload = AugmentedSamples.read(path)
        stats = payload.stats
        if not payload.samples and not payload.rejected:
            return f"<h3>New texts ({path.name})</h3><p>{html.escape(str(stats.get('skipped', 'none')))}</p>"
        counts = "".join(
            f"<tr><th>{html.escape(reason)}</th><td>{count}</td></tr>"
            for reason, count in stats.get("rejected", {}).items()
        )
        rng = random.Random(iteration)
        kept = rng.sample(payload.samples, min(SHOWN_TEXTS, len(payload.samples)))
        rejected = rng.sample(payload.rejected, min(SHOWN_TEXTS, len(payload.rejected)))
        cards = [
            f'<div class="card">{self.image("train", s.reference, "reference")} &rarr; '
            f'{self.image("train", s.target, "new target", "target")}'
            f'{self.image("train", s.original_target, "original target")}'
            f'<div class="caption">new: &ldquo;{html.escape(s.caption)}&rdquo;</div>'
            f'<div class="note">original: &ldquo;{html.escape(s.original_caption)}&rdquo;</div></div>'
            for s in kept
        ]
        refused = [
            f'<div class="card">{self.image("train", r.reference, "reference")} &rarr; '
            f'{self.image("train", r.target, "pair target", "flag")}'
            f'<div class="caption">&ldquo;{html.escape(str(r.text or r.raw_output or ""))}&rdquo;</div>'
            f'<div class="note">rejected: {html.escape(r.reason)}</div></div>'
            for r in rejected
        ]
        return (
            f"<h3>New texts ({path.name}: {stats.get('kept')} kept of {stats.get('pairs')} pairs, "
            f"generator {html.escape(str(payload.meta.get('generator')))})</h3>"
            f'<table class="metrics"><tr><th>rejection rule</th><th>count</th></tr>{counts}</table>'
            f"<h3>Kept</h3>{''.join(cards)}<h3>Rejected</h3>{''.join(refused) or '<p>none</p>'}"
        )

    def round_section(self, iteration: int) -> str:
        cards = "".join(self.query_card(p, iteration) for p in self.sample)
        parts = [
            f'<h2 id="round{iteration}">Round {iteration}</h2>',
            f"<h3>Validation queries (a fixed sample of {len(self.sample)})</h3>{cards}",
            self.movers(iteration),
        ]
        if iteration > 0:
            parts += [self.mined(iteration), self.texts(iteration)]
        return "".join(parts)


def _experiments_under(directory: Path) -> dict[str, Experiment]:
    """The experiments in a folder (an ablation), by their path relative to it."""
    found = {}
    for config in sorted(directory.rglob(CONFIG_NAME)):
        if REPORT_NAME in config.parts or MOVED_ASIDE_PREFIX in str(config):
            continue
        found[str(config.parent.relative_to(directory))] = Experiment(config.parent)
    return found


def _page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body>{body}</body></html>\n"
    )


def single_report(experiment: Experiment, out: Path, queries: int, seed: int) -> str:
    thumbs = Thumbnails(out / "thumbs")
    pages = ExperimentPages(experiment, thumbs, queries, seed)
    results = {f"iter_{i}": pages.evaluations[i].metrics for i in pages.rounds}
    parts = [
        f"<h1>{html.escape(experiment.dir.name)}</h1>",
        f'<p class="note">model {html.escape(str(pages.arguments.get("model_name")))}; '
        f'dataset {html.escape(pages.arguments["dataset_name"])} at '
        f'{html.escape(pages.arguments["dataset_path"])}; rounds evaluated: {pages.rounds}</p>',
    ]
    if results:
        plot = plot_results(results, out / "metrics.png", experiment.dir.name)
        parts += ["<h2>Metrics</h2>", _metric_table(results), f'<p><img src="{plot.name}"></p>']
    loss = plot_curves(read_curves(experiment.dir), out / "loss.png", "training loss, every round")
    if loss is not None:
        parts.append(f'<h2>Training loss</h2><p><img src="{loss.name}"></p>')
    parts += [pages.round_section(i) for i in pages.rounds]
    return _page(f"report: {experiment.dir.name}", "".join(parts))


def comparison_report(experiments: dict[str, Experiment], out: Path, queries: int, seed: int) -> str:
    """One column per experiment: the metrics of every round, and the sampled queries."""
    thumbs = Thumbnails(out / "thumbs")
    pages = {name: ExperimentPages(e, thumbs, queries, seed) for name, e in experiments.items()}
    names = list(pages)
    rounds = sorted({i for p in pages.values() for i in p.rounds})
    metrics = list(next(iter(pages.values())).evaluations[rounds[0]].metrics) if rounds else []
    parts = [f"<h1>{len(names)} experiments</h1>"]
    for metric in metrics:
        head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
        rows = "".join(
            f"<tr><th>round {i}</th>"
            + "".join(
                f"<td>{pages[n].evaluations[i].metrics[metric]:.2f}</td>" if i in pages[n].evaluations else "<td>-</td>"
                for n in names
            )
            + "</tr>"
            for i in rounds
        )
        parts.append(f'<h3>{html.escape(metric)}</h3><table class="metrics"><tr><th></th>{head}</tr>{rows}</table>')
    first = pages[names[0]]
    for i in rounds:
        parts.append(f"<h2>Round {i}: the sampled queries, one column per experiment</h2>")
        rows = []
        for pairid in first.sample:
            cells = "".join(
                f"<td>{pages[n].query_card(pairid, i) if i in pages[n].evaluations else '-'}</td>"
                for n in names
            )
            rows.append(f"<tr>{cells}</tr>")
        head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
        parts.append(f"<table><tr>{head}</tr>{''.join(rows)}</table>")
    return _page("comparison report", "".join(parts))


def build_report(directory: str | Path, queries: int = 24, seed: int = 0) -> Path:
    """Write `{directory}/report/index.html` for an experiment or a folder of experiments."""
    directory = Path(directory)
    out = directory / REPORT_NAME
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if (directory / CONFIG_NAME).is_file():
        page = single_report(Experiment(directory), out, queries, seed)
    else:
        experiments = _experiments_under(directory)
        if not experiments:
            raise ExperimentError(f"{directory} holds no experiment ({CONFIG_NAME} not found)")
        page = comparison_report(experiments, out, queries, seed)
    index = out / "index.html"
    index.write_text(page)
    return index
