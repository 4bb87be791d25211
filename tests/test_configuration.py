"""One configuration system: every entry point's flags come from the declarations of
src/arguments.py; presets are checked against them; a mode never overrides a flag given
explicitly; the Trainer's fields count for a resume only off their recorded defaults."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest

import src.arguments as arguments
import src.experiment.config as experiment_config
from src.arguments import (
    ALLOWED,
    EVAL_GROUPS,
    FAST_MODE,
    FAST_MODE_BENCHMARK,
    GROUPS,
    EncodeArguments,
    ReportArguments,
    eval_parser,
    parse_arguments,
    parse_eval_arguments,
    preset_repeats,
    read_preset,
    result_config,
)
from src.errors import ArgumentError, ExperimentError
from src.experiment import Experiment

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted((REPO / "configs").glob("*.json"))


def test_the_entry_points_build_no_parser_of_their_own():
    tree = ast.parse((REPO / "src" / "cli.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    called = {ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    assert "argparse" not in imported and not any("ArgumentParser" in name for name in called)
    # the report's and the encoding's flags are the same declarations in both entry points
    assert ReportArguments in GROUPS and ReportArguments in EVAL_GROUPS
    assert EncodeArguments in GROUPS and EncodeArguments in EVAL_GROUPS


def _help_of(text: str, option: str) -> str:
    """An option's help in argparse's --help output, its lines joined."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(option + " "))
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if line.strip().startswith("--"):
            break
        block.append(line)
    return " ".join(" ".join(block).split())


def test_help_lists_every_choice_a_flag_accepts(capsys):
    text = arguments.FlagParser().format_help()
    assert "simulated_captioner" in _help_of(text, "--foundation_model_backbone")
    assert "llava is read as llava_next" in _help_of(text, "--model_backbone")
    for group in (*GROUPS, *EVAL_GROUPS):
        for item in dataclasses.fields(group):
            for choice in item.metadata.get(ALLOWED, ()):
                assert str(choice) in " ".join(item.metadata["help"].split()), (item.name, choice)
    assert "cirr_test" in _help_of(eval_parser().format_help(), "--eval_dataset")


def test_eval_reads_the_shared_declarations_and_its_earlier_spellings():
    flags = parse_eval_arguments(["--experiment_dir", "x", "--batch_size", "8", "--max_pixels=3136",
                                  "--report_queries", "5", "--iterations", "1"])  # fmt: skip
    assert flags.encode == EncodeArguments(encode_batch_size=8, encode_max_pixels=3136)
    assert flags.report.report_queries == 5 and flags.eval.iterations == "1"
    with pytest.raises(ArgumentError, match="--encode_batch_size 0: must be >= 1"):
        parse_eval_arguments(["--experiment_dir", "x", "--batch_size", "0"])
    with pytest.raises(ArgumentError, match="--eval_dataset 'cirr_train': choose one of"):
        parse_eval_arguments(["--experiment_dir", "x", "--eval_dataset", "cirr_train"])
    with pytest.raises(ArgumentError, match="--experiment_dir is required"):
        parse_eval_arguments([])
    with pytest.raises(ArgumentError, match="not used"):
        parse_eval_arguments(["--experiment_dir", "x", "--num_iterations", "2"])


@pytest.mark.parametrize("preset", PRESETS, ids=[p.name for p in PRESETS])
def test_every_preset_fits_the_declarations_and_repeats_no_default(preset):
    """configs/default.json states the default job's choices: each of its keys must still be
    the declared default; every other preset holds only what it changes."""
    values = read_preset(str(preset))  # keys and types
    parse_arguments(["--config", str(preset)])  # ranges and combinations
    if preset.name == "default.json":
        assert preset_repeats(values) == list(values), f"{preset.name}: no longer the defaults"
    else:
        assert preset_repeats(values) == [], f"{preset.name}: these keys only repeat a default"


def test_a_preset_with_a_wrong_type_range_or_a_repeated_default_is_caught(tmp_path):
    preset = tmp_path / "preset.json"
    preset.write_text(json.dumps({"lora_r": "16"}))
    with pytest.raises(ArgumentError, match=r"preset.json: lora_r: expected int, got str '16'"):
        read_preset(str(preset))
    preset.write_text(json.dumps({"lora_r": 0}))
    with pytest.raises(ArgumentError, match="--lora_r 0: must be >= 1"):
        parse_arguments(["--config", str(preset)])
    assert preset_repeats({"lora_r": 16, "lora_alpha": 64, "per_device_train_batch_size": 32}) == [
        "lora_r", "per_device_train_batch_size"
    ]


FAST_FLAGS = {**FAST_MODE, **FAST_MODE_BENCHMARK, "save_steps": 6}
EXPLICIT = {"max_steps": "600", "max_train_samples": "50", "max_eval_samples": "40", "save_steps": "4",
            "synthetic_train_images": "900", "synthetic_val_images": "360", "synthetic_test_images": "60"}  # fmt: skip


def _value(flags, name):
    return next(getattr(g, name) for g in flags.groups() if name in {f.name for f in dataclasses.fields(g)})


def test_fast_mode_sets_its_flags_when_none_is_given():
    flags = parse_arguments(["--fast_mode"])
    assert {name: _value(flags, name) for name in FAST_FLAGS} == FAST_FLAGS
    assert sorted(FAST_FLAGS) == sorted(EXPLICIT)  # every flag the mode sets is tested below


@pytest.mark.parametrize("name", sorted(EXPLICIT))
@pytest.mark.parametrize("where", ["command line", "preset"])
def test_a_flag_given_explicitly_wins_over_fast_mode(name, where, tmp_path):
    if where == "command line":
        argv = ["--fast_mode", f"--{name}", EXPLICIT[name]]
    else:
        preset = tmp_path / "preset.json"
        preset.write_text(json.dumps({"fast_mode": True, name: int(EXPLICIT[name])}))
        argv = ["--config", str(preset)]
    flags = parse_arguments(argv)
    assert _value(flags, name) == int(EXPLICIT[name]) and name in flags.given
    others = {n: v for n, v in FAST_FLAGS.items() if n not in (name, "save_steps")}
    assert {n: _value(flags, n) for n in others} == others  # the mode still sets the rest
    if name == "max_steps":  # --fast_mode --max_steps 600 trains 600 steps, saving half-way
        assert flags.training.save_steps == 300


def test_two_flags_that_set_the_same_value_differently_are_refused():
    with pytest.raises(ArgumentError, match="--per_device_train_batch_size 16: --batch_size 8 sets it too"):
        parse_arguments(["--batch_size", "8", "--per_device_train_batch_size", "16"])
    assert parse_arguments(["--batch_size", "8", "--per_device_train_batch_size", "8"]).training.batch_size == 8


def test_a_trainer_field_a_newer_transformers_adds_does_not_stop_an_older_experiment(tmp_path, monkeypatch):
    """An experiment started now; then a transformers release adds a field with a non-None
    default: the resumed run's arguments have it (at its default), the saved ones do not."""
    experiment = Experiment(tmp_path / "exp")
    saved = parse_arguments([]).as_dict()
    experiment.config.start(saved, resuming=False, allow_config_change=False)
    (experiment.dir / "stages.jsonl").write_text("")  # the experiment has work: a resume checks it
    newer = arguments.trainer_defaults() | {"brand_new_option": 7}
    for module in (arguments, experiment_config):
        monkeypatch.setattr(module, "trainer_defaults", lambda: newer)
    assert experiment.config.check_start(saved | {"brand_new_option": 7}, True, False) == []
    # set off its default, it is a change like any other
    with pytest.raises(ExperimentError, match="brand_new_option: experiment 7 -> now 8"):
        experiment.config.check_start(saved | {"brand_new_option": 8}, True, False)
    # a release that changes a field's default: the saved value is at the default recorded
    # when the experiment started, the new one at today's, so neither counts
    recorded = experiment.config.record().trainer_defaults
    assert recorded["adam_beta2"] == saved["adam_beta2"] == 0.999
    later = newer | {"adam_beta2": 0.99}
    for module in (arguments, experiment_config):
        monkeypatch.setattr(module, "trainer_defaults", lambda: later)
    assert experiment.config.check_start(saved | {"adam_beta2": 0.99, "brand_new_option": 7}, True, False) == []
    # an older experiment recorded no defaults: today's stand in for them
    assert "adam_beta2" in result_config(saved) and "adam_beta2" not in result_config(saved, defaults=recorded)


def test_every_ablation_arm_is_read_by_the_declarations():
    """The ablation's arms are flags of train_iterative.py, read by the same declarations:
    each arm's flags parse (names, types, ranges, combinations) and count as given."""
    from benchmarks.ablation import ARMS

    for arm, (_, flags) in ARMS.items():
        parsed = parse_arguments(list(flags))
        assert parsed.given >= {flag.removeprefix("--") for flag in flags if flag.startswith("--")}, arm
