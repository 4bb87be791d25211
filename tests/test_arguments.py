"""Flags, presets and their precedence."""

import json

import pytest

from src.arguments import check_together, parse_arguments
from src.errors import ArgumentError


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


BAD_FLAGS = [
    (["--batch_size", "0"], "--batch_size 0"),
    (["--learning_rate", "-1"], "--learning_rate -1"),
    (["--num_iterations", "-1"], "--num_iterations -1"),
    (["--hard_negative_k", "0"], "--hard_negative_k 0"),
    (["--temperature", "0"], "--temperature 0"),
    (["--num_train_epochs", "0"], "--num_train_epochs"),
    (["--lora_target_modules", " , "], "--lora_target_modules"),
    (["--hard_negative_margin", "0"], "--hard_negative_margin"),
    (["--top_p", "1.5"], "--top_p"),
    (["--foundation_max_pixels", "100"], "--foundation_max_pixels"),
    (["--image_size", "100"], "--image_size 100"),
    (["--group_loss_weight", "0.5"], "needs --group_by_reference"),
    (["--resume_from_iteration", "5", "--num_iterations", "3"], "--resume_from_iteration 5"),
    (["--foundation_model_backbone", "qwen2_vl"], "needs --foundation_model_path"),
    (["--foundation_model_backbone", "none", "--foundation_model_path", "x"], "uses no model"),
    (["--foundation_model_backbone", "blip"], "choose one of"),
    (["--model_backbone", "clip"], "choose one of"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_FLAGS)
def test_a_bad_flag_is_an_argument_error_that_names_it(argv, message):
    with pytest.raises(ArgumentError) as error:
        parse_arguments(argv)
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("mine_scope", "some", "--mine_scope 'some'"),
        ("negative_source", "other", "--negative_source"),
        ("prompt_mode", "chatty", "--prompt_mode"),
        ("augmented_pool", "all", "--augmented_pool"),
        ("torch_dtype", "float8", "--torch_dtype"),
        ("hard_negative_k", 0, "--hard_negative_k"),
    ],
)
def test_a_preset_value_gets_the_same_checks_as_a_flag(tmp_path, key, value, message):
    """argparse checks choices on the command line only; __post_init__ checks presets too."""
    preset = tmp_path / "preset.json"
    preset.write_text(json.dumps({key: value}))
    with pytest.raises(ArgumentError, match=message):
        parse_arguments(["--config", str(preset)])


@pytest.mark.parametrize(
    ("content", "message"),
    [("{\"num_iterations\": 2,", "invalid JSON at line 1"), ("[1, 2]", "JSON object")],
)
def test_a_malformed_preset_names_the_file(tmp_path, content, message):
    preset = tmp_path / "broken.json"
    preset.write_text(content)
    with pytest.raises(ArgumentError, match=message) as error:
        parse_arguments(["--config", str(preset)])
    assert str(preset) in str(error.value)
    with pytest.raises(ArgumentError, match="no such file"):
        parse_arguments(["--config", str(tmp_path / "absent.json")])


def test_grad_cache_with_zero3_is_refused(tmp_path):
    config = tmp_path / "zero3.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    _, _, iterative, training = parse_arguments(["--grad_cache"])
    training.deepspeed = str(config)  # set after parsing: DeepSpeed is not installed here
    with pytest.raises(ArgumentError, match="ZeRO-3"):
        check_together(iterative, training)
    training.deepspeed = {"zero_optimization": {"stage": 2}}
    check_together(iterative, training)
