"""The evaluation table and plot: iterations as rows, metrics as columns."""

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
