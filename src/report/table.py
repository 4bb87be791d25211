"""The evaluation tables and plot: iterations as rows, metrics as columns.

`format_table` prints the official metrics; `format_modality_table`, printed under it,
says whether the model composes (`Evaluation.modalities`, src/retrieval/metrics.py):
per round and K, the share of queries the image alone or the text alone solves, the
composed recall on the others, and the image-only and text-only recalls.
"""

from __future__ import annotations

from pathlib import Path


def _iteration(key: str) -> int:
    return int(key.rsplit("_", 1)[-1])


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A plain-text table of evaluation_results (one row per iteration)."""
    if not results:
        return "(no evaluation results)"
    keys = sorted(results, key=_iteration)
    metrics = list(dict.fromkeys(m for k in keys for m in results[k]))
    widths = [max(len(m), 6) for m in metrics]
    header = "iter  " + "  ".join(m.rjust(w) for m, w in zip(metrics, widths, strict=True))
    rows = [header, "-" * len(header)]
    for key in keys:
        cells = [
            f"{results[key][m]:.2f}".rjust(w) if m in results[key] else "-".rjust(w)
            for m, w in zip(metrics, widths, strict=True)
        ]
        rows.append(f"{_iteration(key):>4}  " + "  ".join(cells))
    return "\n".join(rows)


# Short column names of the modality table, and the keys of `Evaluation.modalities` they show.
MODALITY_COLUMNS = (
    ("one", "solved_by_one_modality"),
    ("both_R", "need_both_recall"),
    ("both_n", "need_both_queries"),
    ("image_R", "image_only_recall"),
    ("text_R", "text_only_recall"),
)
MODALITY_LEGEND = (
    "one@K: % of queries whose target the reference image alone or the text alone ranks "
    "in the top K; both_R@K: composed R@K on the other queries (the ones that need both), "
    "both_n@K of them; image_R@K, text_R@K: recall of the image alone, of the text alone"
)


def modality_ks(modalities: dict) -> list[int]:
    """The Ks the modality table shows: 1 and 10 where the split has both (CIRR), else its
    first two (FashionIQ: 10 and 50)."""
    ks = [int(key.split("@")[1]) for key in modalities if key.startswith("need_both_recall@")]
    shown = [k for k in ks if k in (1, 10)]
    return shown if len(shown) == 2 else ks[:2]


def modality_columns(blocks: dict[int, dict | None]) -> list[tuple[str, str]]:
    """(column name, key of `Evaluation.modalities`) of each column, from the first round
    that has the block; empty if none has."""
    first = next((block for block in blocks.values() if block), None)
    if first is None:
        return []
    ks = modality_ks(first)
    return [(f"{name}@{k}", f"{key}@{k}") for name, key in MODALITY_COLUMNS for k in ks]


def format_modality_table(blocks: dict[int, dict | None]) -> str:
    """A plain-text table of each round's `Evaluation.modalities` (None: a file written
    before these rankings, shown as "-"), with its legend; "" when no round has one."""
    columns = modality_columns(blocks)
    if not columns:
        return ""
    widths = [max(len(name), 6) for name, _ in columns]
    header = "iter  " + "  ".join(n.rjust(w) for (n, _), w in zip(columns, widths, strict=True))
    rows = [header, "-" * len(header)]
    for iteration in sorted(blocks):
        block = blocks[iteration] or {}
        cells = []
        for (_, key), width in zip(columns, widths, strict=True):
            value = block.get(key)
            text = "-" if value is None else str(value) if isinstance(value, int) else f"{value:.2f}"
            cells.append(text.rjust(width))
        rows.append(f"{iteration:>4}  " + "  ".join(cells))
    if any(not block for block in blocks.values()):
        rows.append("a row of -: not in that round's evaluation file (written before these rankings)")
    return "\n".join([*rows, MODALITY_LEGEND])


def plot_results(results: dict[str, dict[str, float]], output: str | Path, title: str) -> Path:
    """Each metric against the iteration, saved as a PNG."""
    plt = pyplot()
    keys = sorted(results, key=_iteration)
    iterations = [_iteration(k) for k in keys]
    metrics = list(dict.fromkeys(m for k in keys for m in results[k]))
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for metric in metrics:
        axis.plot(
            iterations,
            [results[k].get(metric, float("nan")) for k in keys],
            marker="o",
            label=metric,
        )
    axis.set_xlabel("iteration")
    axis.set_ylabel("metric (%)")
    axis.set_xticks(iterations)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, ncol=2)
    figure.tight_layout()
    output = Path(output)
    figure.savefig(output, dpi=120)
    plt.close(figure)
    return output


def pyplot():
    """matplotlib's pyplot on the file-only backend, imported when a plot is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
