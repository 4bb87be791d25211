"""Training curves: every round's Trainer logs, from the TensorBoard event files.

Each round writes its own TensorBoard run under `{experiment}/tensorboard/round_{i}/`
(`--report_to tensorboard`, the default when the package is installed), so
`tensorboard --logdir {experiment}/tensorboard` shows the rounds side by side; the report
draws the loss of all rounds in one PNG from the same files.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from src.experiment.layout import TENSORBOARD_NAME
from src.report.table import pyplot

LOSS_TAG = "train/loss"


def read_curves(experiment_dir: Path, tag: str = LOSS_TAG) -> dict[int, list[tuple[int, float]]]:
    """{round: [(step, value)]} of `tag` from the experiment's TensorBoard runs."""
    root = Path(experiment_dir) / TENSORBOARD_NAME
    if not root.is_dir():
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # its reader logs "No path found after <file>" at INFO for every finished file
    logging.getLogger("tensorboard").setLevel(logging.WARNING)
    curves = {}
    for run in sorted(root.iterdir()):
        match = re.fullmatch(r"round_(\d+)", run.name)
        if not match:
            continue
        events = EventAccumulator(str(run), size_guidance={"scalars": 0})
        events.Reload()
        if tag in events.Tags().get("scalars", []):
            points = {event.step: event.value for event in events.Scalars(tag)}  # a resume may repeat steps
            curves[int(match.group(1))] = sorted(points.items())
    return curves


def plot_curves(curves: dict[int, list[tuple[int, float]]], output: Path, title: str) -> Path | None:
    """All rounds' curves in one PNG, each round after the previous one's last step."""
    if not curves:
        return None
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 3.5))
    offset = 0
    for iteration, points in sorted(curves.items()):
        steps = [offset + step for step, _ in points]
        axis.plot(steps, [value for _, value in points], marker=".", label=f"round {iteration}")
        offset = steps[-1] if steps else offset
    axis.set_xlabel("optimizer step (rounds one after another)")
    axis.set_ylabel("training loss")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return output
