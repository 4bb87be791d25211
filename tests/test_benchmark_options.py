"""The benchmarks' command lines: declared with `flag()` as the entry points' flags are,
checked the same way (one line naming the flag, exit status 2), and every command the
README, docs/ and benchmarks/results/ quote still parses. Parsing only: nothing runs."""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import shlex
from pathlib import Path

import pytest

from benchmarks import parse_known_options, parse_options
from src.arguments import EncodeArguments, IterativeTrainingArguments, ModelArguments

REPO = Path(__file__).resolve().parents[1]
# each benchmark with a command line: its options class
OPTIONS = {
    "ablation": "AblationOptions",
    "analyse_texts": "AnalyseOptions",
    "bench_images": "ImagesOptions",
    "bench_retrieval": "RetrievalOptions",
    "bench_search": "SearchOptions",
    "bench_train": "TrainOptions",
    "gpu_check": "GpuCheckOptions",
    "manipulation_check": "ManipulationOptions",
    "real_shape_check": "RealShapeOptions",
    "round0_convergence": "ConvergenceOptions",
}
HAND_ON = ("ablation", "round0_convergence")  # the flags they do not know go to train_iterative.py
FOLDER_FIRST = ("analyse_texts", "manipulation_check")  # an ablation's folder is their argument


def options_of(name: str) -> type:
    return getattr(importlib.import_module(f"benchmarks.{name}"), OPTIONS[name])


def main_of(name: str):
    return importlib.import_module(f"benchmarks.{name}").main


def quoted_commands() -> list[tuple[str, list[str]]]:
    """(benchmark, argv) of every `python -m benchmarks.NAME ...` in README.md and docs/, and
    of every command an ablation or convergence result recorded."""
    found = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = path.read_text().replace("\\\n", " ")
        for match in re.finditer(r"python -m benchmarks\.(\w+)([^\n`#|)]*)", text):
            found.append((match.group(1), shlex.split(match.group(2))))
    for path in sorted((REPO / "benchmarks" / "results").rglob("*.json")):
        command = json.loads(path.read_text()).get("command", "") if path.stat().st_size < 10**7 else ""
        match = re.fullmatch(r"python -m benchmarks\.(\w+)(.*)", command)
        if match:
            found.append((match.group(1), shlex.split(match.group(2))))
    found += [  # the scripts' own docstrings and gpu_check.sh's
        ("bench_search", shlex.split("--num_queries 20000 --num_gallery 20000 --dim 1536 --k 50 "
                                     "--chunk_size 256 1024 --repeats 3 --output benchmarks/results/search.json")),
        ("bench_retrieval", ["--torch_threads", "1", "--workers", "1"]),
        ("gpu_check", ["--cpu"]),
        ("gpu_check", ["--cpu", "--output_dir", "x", "--parts", "train,encode"]),
    ]  # fmt: skip
    # a bare name in a sentence is not a command where the folder is required
    return [(name, argv) for name, argv in found if name in OPTIONS and (argv or name not in FOLDER_FIRST)]


def test_every_quoted_command_still_parses():
    commands = quoted_commands()
    assert {name for name, _ in commands} == set(OPTIONS)  # every benchmark is quoted somewhere
    assert sum(name == "ablation" for name, _ in commands) >= 10  # the docs' and the results' own
    for name, argv in commands:
        _, handed_on = parse_known_options(options_of(name), argv, "")
        assert not handed_on or name in HAND_ON, (name, argv, handed_on)


def test_a_switch_before_the_folder_leaves_the_folder_alone():
    """As with argparse's store_true before: `--resummarise FOLDER` is the switch and the
    folder (a switch of the entry points may take a value: `--lora false`)."""
    from benchmarks.analyse_texts import AnalyseOptions

    for argv in (["--resummarise", "folder"], ["folder", "--resummarise"]):
        options = parse_options(AnalyseOptions, argv, "")
        assert options.ablation == "folder" and options.resummarise
    assert not parse_options(AnalyseOptions, ["folder"], "").resummarise


def test_an_ablation_hands_on_what_it_does_not_know():
    from benchmarks.ablation import AblationOptions

    argv = ["--seeds", "3,4", "--keep_experiments", "--", "--max_steps", "157", "--lora"]
    options, handed_on = parse_known_options(AblationOptions, argv, "")
    assert options.seeds == "3,4" and options.keep_experiments
    assert handed_on == ["--max_steps", "157", "--lora"]


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_every_benchmark_answers_help(name, capsys):
    with pytest.raises(SystemExit) as exit:
        main_of(name)(["--help"])
    assert exit.value.code == 0
    shown = capsys.readouterr().out
    assert "usage:" in shown and "--" in shown
    assert "_memory_probe" not in shown  # bench_train's options for its own child stay hidden


@pytest.mark.parametrize(
    ("name", "argv", "line"),
    [
        ("bench_images", ["--repeats", "0"], "--repeats 0: must be >= 1"),
        ("bench_images", ["--parts", "a,d"], "--parts 'a,d': comma-separated, each one of a, b, c"),
        ("bench_retrieval", ["--batch_size", "0"], "--batch_size 0: must be >= 1"),
        ("bench_search", ["--chunk_size", "256", "0"], "--chunk_size 0: must be >= 1"),
        ("bench_train", ["--memory_sizes", "32,x"], "--memory_sizes '32,x': comma-separated integers, each >= 1"),
        ("ablation", ["--seeds", "0,-1"], "--seeds '0,-1': comma-separated integers, each >= 0"),
        ("gpu_check", ["--parts", "train,gpu"], "--parts 'train,gpu': comma-separated, each one of "
                                                "train, encode, search, caption"),
        ("real_shape_check", ["--dtype", "float16"], "--dtype 'float16': choose one of bfloat16, float32"),
        ("ablation", ["--jobs", "0", "--", "--max_steps", "5"], "--jobs 0: must be >= 1"),
        ("ablation", ["--primary", "RD-RX"], "--primary 'RD-RX': choose one of "),
        ("analyse_texts", ["folder", "--round", "0"], "--round 0: must be >= 1"),
        ("manipulation_check", ["folder", "--treated", "RC"], "--treated 'RC': choose one of D, E, "),
        ("round0_convergence", ["--output_dir", "x", "--epochs", "0"], "--epochs 0: must be >= 1"),
    ],
)  # fmt: skip
def test_a_bad_option_is_refused_in_one_line_naming_it(name, argv, line, capsys):
    with pytest.raises(SystemExit) as exit:
        main_of(name)(argv)
    assert exit.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {line}") and error.count("\n") == 1, error


def test_a_benchmark_option_that_is_a_training_flag_is_its_declaration():
    """One home for each default and help: the benchmark takes the training flag's field."""
    from benchmarks.bench_retrieval import RetrievalOptions
    from benchmarks.bench_train import TrainOptions
    from benchmarks.real_shape_check import RealShapeOptions

    def field(group: type, name: str) -> dataclasses.Field:
        return next(item for item in dataclasses.fields(group) if item.name == name)

    for name in ("lora_target_modules", "freeze_vision_tower"):
        assert field(RealShapeOptions, name).metadata == field(ModelArguments, name).metadata
        assert field(RealShapeOptions, name).default == field(ModelArguments, name).default
    assert field(TrainOptions, "mini_batch").metadata == field(IterativeTrainingArguments, "gc_mini_batch_size").metadata
    assert field(RetrievalOptions, "batch_size").default == field(EncodeArguments, "encode_batch_size").default
    options = parse_options(RealShapeOptions, ["--freeze_vision_tower", "--arch", "tiny"], "")
    assert options.freeze_vision_tower and options.arch == "tiny"
