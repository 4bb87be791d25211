"""The HTML report: every image it refers to exists, the sections hold the right counts,
it works on a FashionIQ experiment, and it renders in a headless browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from src.cli import eval_main, train_main
from src.experiment import Experiment
from src.experiment_io import read_json
from src.report.html import build_report
from src.stages.augment import ALL_REASONS

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


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


@pytest.fixture(scope="module")
def experiment(tiny_qwen, small_benchmark, tmp_path_factory) -> Experiment:
    directory = tmp_path_factory.mktemp("report") / "exp"
    argv = [
        "--model_name", str(tiny_qwen), "--dataset_path", str(small_benchmark),
        "--experiment_dir", str(directory), "--num_iterations", "2", "--fast_mode",
        "--batch_size", "8", "--dataloader_num_workers", "0", "--report_queries", "6",
    ]  # fmt: skip
    assert train_main(argv) == 0
    return Experiment(directory)


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
    assert text.count("<tr><th>round ") == 3  # the metric table
    for reason in ALL_REASONS:
        assert f"<tr><th>{reason}</th>" in text
    augmented = read_json(experiment.augmented(1))
    assert f"{augmented['stats']['kept']} kept of {augmented['stats']['pairs']} pairs" in text
    assert (index.parent / "loss.png").is_file() and (index.parent / "metrics.png").is_file()
    assert any((experiment.dir / "tensorboard" / f"round_{i}").iterdir() for i in range(3))


def test_eval_iterative_writes_the_report_and_compares_a_folder_of_experiments(
    experiment, tmp_path, capsys
):
    assert eval_main(["--experiment_dir", str(experiment.dir), "--report", "--report_queries", "4"]) == 0
    assert "report:" in capsys.readouterr().out
    folder = tmp_path / "ablation"
    for arm in ("A", "B"):
        shutil.copytree(experiment.dir, folder / "experiments" / "seed0" / arm, ignore=shutil.ignore_patterns("report"))
    assert eval_main(["--experiment_dir", str(folder), "--report"]) == 0
    page = parse(folder / "report" / "index.html")
    assert all((folder / "report" / src).is_file() for src in page.images)
    assert "<th>experiments/seed0/A</th><th>experiments/seed0/B</th>" in (folder / "report" / "index.html").read_text()


def test_the_report_of_a_fashioniq_experiment(tiny_qwen, tmp_path):
    from tests.test_readers import make_fashioniq

    data = make_fashioniq(tmp_path / "fiq")
    for image in (data / "images").iterdir():  # the fixture's 2 x 2 images, a little larger
        Image.new("RGB", (56, 56), (hash(image.name) % 255, 90, 160)).save(image)
    directory = tmp_path / "exp"
    argv = [
        "--model_name", str(tiny_qwen), "--dataset_name", "fashioniq", "--dataset_path", str(data),
        "--experiment_dir", str(directory), "--num_iterations", "1", "--max_steps", "2",
        "--batch_size", "2", "--dataloader_num_workers", "0", "--foundation_model_backbone", "none",
    ]  # fmt: skip
    assert train_main(argv) == 0
    index = build_report(directory, queries=4)
    page = parse(index)
    assert page.cards >= 4 and all((index.parent / src).is_file() for src in page.images)
    assert "average_recall@10" in index.read_text()


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (README: development)")
def test_the_report_renders_in_headless_chromium(experiment, tmp_path):
    shot = tmp_path / "report.png"
    completed = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--window-size=1200,1600", f"--screenshot={shot}",
         (experiment.dir / "report" / "index.html").as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]
    console_errors = [line for line in completed.stderr.splitlines() if "CONSOLE" in line and "ERROR" in line.upper()]
    assert not console_errors, console_errors
    image = Image.open(shot).convert("L")
    low, high = image.getextrema()
    assert high - low > 100 and len(set(image.getdata())) > 50, "the screenshot is blank"
