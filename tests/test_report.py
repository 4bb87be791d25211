"""The HTML report: every image it refers to exists, the sections hold the right counts,
user text is escaped, every query card states the target's exact rank (and its rank with
the image alone and the text alone), the modality table is under the metric table, the filter
diagnostics of a simulated captioner are shown (and only then), it works on a FashionIQ
experiment, and it renders in a headless browser."""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from src.artifacts import (
    AugmentedSample,
    AugmentedSamples,
    Evaluation,
    QueryRanking,
    RejectedSample,
)
from src.cli import eval_main, train_main
from src.data.loading import load_split
from src.experiment import Experiment
from src.records import AugmentSeconds, AugmentStats, FilterDiagnostics, Simulation
from src.report.html import build_report
from src.stages.augment import ALL_REASONS

pytestmark = pytest.mark.slow


class Page(HTMLParser):
    """The images and headings of a page."""

    def __init__(self):
        super().__init__()
        self.images, self.headings, self.cards, self._heading = [], [], 0, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag in ("h2", "h3"):
            self._heading = ""
        if tag == "div" and attrs.get("class") == "card":
            self.cards += 1

    def handle_data(self, data):
        if self._heading is not None:
            self._heading += data

    def handle_endtag(self, tag):
        if tag in ("h2", "h3") and self._heading is not None:
            self.headings.append(self._heading.strip())
            self._heading = None


def parse(index: Path) -> Page:
    page = Page()
    page.feed(index.read_text())
    return page


@pytest.fixture()
def experiment(two_round_experiment) -> Experiment:
    """The two-round experiment of conftest.py (its report written at the end of its run);
    the tests read it, or copy it before writing."""
    return two_round_experiment


def test_the_report_of_a_two_round_experiment(experiment):
    index = experiment.dir / "report" / "index.html"
    assert index.is_file()  # written at the end of the run
    page = parse(index)
    assert page.images and all((index.parent / src).is_file() for src in page.images)
    assert all(src.endswith((".jpg", ".png")) for src in page.images)
    assert not re.search(r"https?://", index.read_text()), "the page must not need the network"
    for i in range(3):
        assert f"Round {i}" in page.headings
    assert page.headings.count("Validation queries (a fixed sample of 6)") == 3
    assert sum(h.startswith("Mined hard negatives") for h in page.headings) == 2
    assert sum(h.startswith("New texts") for h in page.headings) == 2
    text = index.read_text()
    assert text.count("<tr><th>round ") == 6  # the metric table, the modality table
    assert "Does the model compose?" in page.headings
    assert "<th>one@1</th><th>one@10</th><th>both_R@1</th>" in text
    assert re.search(r"image alone: (rank \d+|not retrievable); text alone: (rank \d+|not retrievable)", text)
    assert text.count("image alone: ") >= 3 * 6  # every card of the sampled queries
    for reason in ALL_REASONS:
        assert f"<tr><th>{reason}</th>" in text
    augmented = AugmentedSamples.read(experiment.augmented(1))
    assert f"{augmented.stats.kept} kept of {augmented.stats.pairs} pairs" in text
    assert (index.parent / "loss.png").is_file() and (index.parent / "metrics.png").is_file()
    assert any((experiment.dir / "tensorboard" / f"round_{i}").iterdir() for i in range(3))


def test_eval_iterative_writes_the_report_and_compares_a_folder_of_experiments(
    copied, tmp_path, capsys
):
    experiment = copied
    assert eval_main(["--experiment_dir", str(experiment.dir), "--report", "--report_queries", "4"]) == 0
    assert "report:" in capsys.readouterr().out
    folder = tmp_path / "ablation"
    for arm in ("A", "B"):
        shutil.copytree(experiment.dir, folder / "experiments" / "seed0" / arm, ignore=shutil.ignore_patterns("report"))
    assert eval_main(["--experiment_dir", str(folder), "--report"]) == 0
    page = parse(folder / "report" / "index.html")
    assert all((folder / "report" / src).is_file() for src in page.images)
    text = (folder / "report" / "index.html").read_text()
    assert "<th>experiments/seed0/A</th><th>experiments/seed0/B</th>" in text
    assert "Does the model compose?" in page.headings and "<h3>both_R@10</h3>" in text


FILTERS_HEADER = "<th>filter (in the order applied)</th>"
HOSTILE = '<script>alert("caption")</script> & <b>bold</b>'


def test_user_text_is_escaped_ranks_are_exact_and_filter_diagnostics_show_for_a_simulation(
    experiment, small_benchmark, tmp_path
):
    """A copy of the two-round experiment with artifacts rewritten through the artifact
    classes: round 2's rankings put every target second, round 1's new texts come from a
    simulated captioner (records and filter diagnostics), one caption hostile HTML."""
    copy = Experiment(tmp_path / "exp")
    shutil.copytree(experiment.dir, copy.dir, ignore=shutil.ignore_patterns("report", "embeddings", "checkpoint_iter_*", "train_iter_*"))
    val = {t.pairid: t for t in load_split("cirr", small_benchmark, "val").triplets}
    last = Evaluation.read(copy.evaluation("val", 2))
    for pairid, ranking in last.queries.items():
        others = [name for name in ranking.top if name != val[pairid].target]
        last.queries[pairid] = QueryRanking(2, [others[0], val[pairid].target, *others[1:4]])
    last.write(copy.evaluation("val", 2))

    train = load_split("cirr", small_benchmark, "train").triplets
    samples = [
        AugmentedSample(
            pairid=f"aug{i}", reference=t.reference, caption=HOSTILE if i == 0 else f"text {i}",
            target=train[i + 5].target, source_pairid=t.pairid, original_caption=t.caption,
            original_target=t.target, generator="simulated_captioner", raw_output=None,
            simulation=Simulation(correct=i != 1, error=None if i != 1 else "wrong_value", differences=1, named=1),
        )
        for i, t in enumerate(train[:3])
    ]  # fmt: skip
    rejected = [
        RejectedSample(
            pairid="rej0", source_pairid=train[3].pairid, reference=train[3].reference,
            target=train[4].target, reason="consistency_new_text_no", text="reversed & wrong",
            raw_output=None, simulation=Simulation(correct=False, error="reversed_direction", differences=1, named=1),
        )
    ]  # fmt: skip
    filters = {
        "clean-up rules": {"wrong_in": 3, "right_in": 6, "wrong_removed": 0, "right_removed": 1, "precision": 0.0, "recall": 0.0},
        "consistency filter": {"wrong_in": 3, "right_in": 5, "wrong_removed": 2, "right_removed": 1, "precision": 2 / 3, "recall": 2 / 3},
        "verify_augmented": {"wrong_in": 1, "right_in": 4, "wrong_removed": 0, "right_removed": 0, "precision": None, "recall": 0.0},
    }  # fmt: skip
    stats = AugmentStats(
        pairs_available=9, pairs=9, pairs_resumed=0, pairs_generated=9, rejected={"consistency_new_text_no": 1},
        kept=3, false_negatives=0, run={}, seconds=AugmentSeconds(generation=0.0),
        filters={name: FilterDiagnostics(**row) for name, row in filters.items()},
    )
    AugmentedSamples({"generator": "simulated_captioner"}, stats, samples, rejected).write(copy.augmented(1))

    index = build_report(copy.dir, queries=6)
    text = index.read_text()
    page = parse(index)
    assert all((index.parent / src).is_file() for src in page.images)

    # user text is escaped, never markup
    assert "<script" not in text and "<b>bold" not in text
    assert "&lt;script&gt;alert(&#34;caption&#34;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in text
    assert "reversed &amp; wrong" in text

    # every card states the exact rank: round 2 has each target second
    assert "in the top 5" not in text
    round2 = text[text.index('id="round2"'):]
    assert round2.count("target at rank 2<") >= 6
    assert re.search(r"target (at rank \d+|not retrievable)", text[: text.index('id="round1"')])

    # the filter diagnostics of round 1 (simulated), not of round 2 (the scene oracle)
    assert text.count(FILTERS_HEADER) == 1 and text.index(FILTERS_HEADER) < text.index('id="round2"')
    for name, row in filters.items():
        cells = [row["wrong_in"], row["wrong_removed"], row["right_in"], row["right_removed"]]
        precision = "-" if row["precision"] is None else f"{row['precision']:.2f}"
        expected = f"<tr><th>{name}</th>" + "".join(f"<td>{n}</td>" for n in cells)
        assert expected + f"<td>{precision}</td><td>{row['recall']:.2f}</td></tr>" in text
    assert text.count("simulation: right") == 2
    assert "simulation: wrong (wrong_value)" in text and "simulation: wrong (reversed_direction)" in text
    assert "simulation:" not in round2


def test_the_report_of_a_fashioniq_experiment(job_argv, tmp_path):
    from tests.test_readers import make_fashioniq

    data = make_fashioniq(tmp_path / "fiq")
    for image in (data / "images").iterdir():  # the fixture's 2 x 2 images, a little larger
        Image.new("RGB", (56, 56), (hash(image.name) % 255, 90, 160)).save(image)
    directory = tmp_path / "exp"
    argv = job_argv(directory, "--dataset_name", "fashioniq", "--batch_size", "2",
                    "--foundation_model_backbone", "none", dataset=data)  # fmt: skip
    assert train_main(argv) == 0
    index = build_report(directory, queries=4)
    page = parse(index)
    assert page.cards >= 4 and all((index.parent / src).is_file() for src in page.images)
    assert "average_recall@10" in index.read_text()


def test_the_report_renders_in_headless_chromium(experiment, browser_screenshot):
    browser_screenshot(experiment.dir / "report" / "index.html", "1200,1600")
