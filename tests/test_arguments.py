"""Flags, presets and their precedence."""

import json

import pytest

from src.arguments import parse_arguments


def test_batch_size_sets_the_trainer_batch_and_defaults_suit_the_project():
    model, data, iterative, training = parse_arguments(
        ["--batch_size", "8", "--learning_rate", "1e-4"]
    )
    assert training.per_device_train_batch_size == 8 and training.learning_rate == 1e-4
    assert training.remove_unused_columns is False
    assert (
        model.temperature == 0.02
        and iterative.hard_negative_k == 5
        and iterative.num_iterations == 3
    )


def test_config_preset_sets_defaults_and_flags_win(tmp_path):
    preset = tmp_path / "preset.json"
    preset.write_text(
        json.dumps({"hard_negative_k": 9, "num_iterations": 1, "learning_rate": 2e-5})
    )
    _, _, iterative, training = parse_arguments(["--config", str(preset), "--num_iterations", "2"])
    assert iterative.hard_negative_k == 9 and iterative.num_iterations == 2
    assert training.learning_rate == 2e-5


def test_config_preset_with_an_unknown_key_is_refused(tmp_path):
    preset = tmp_path / "preset.json"
    preset.write_text(json.dumps({"hard_negative_kk": 9}))
    with pytest.raises(ValueError, match="hard_negative_kk"):
        parse_arguments(["--config", str(preset)])


def test_every_shipped_preset_parses():
    from pathlib import Path

    presets = sorted(Path("configs").glob("*.json"))
    assert presets
    for preset in presets:
        if preset.name.startswith(("accelerate", "deepspeed")):
            continue
        parse_arguments(["--config", str(preset)])
