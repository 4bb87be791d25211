"""Flags, presets and their precedence."""

import json

import pytest

from src.arguments import parse_arguments
from src.cli import train_main
from src.errors import ArgumentError


def test_batch_size_sets_the_trainer_batch_and_defaults_suit_the_project():
    flags = parse_arguments(["--batch_size", "8", "--learning_rate", "1e-4"])
    training = flags.training
    assert training.per_device_train_batch_size == 8 and training.learning_rate == 1e-4
    assert training.remove_unused_columns is False
    assert training.temperature == 0.02
    assert flags.mining.hard_negative_k == 5 and flags.run.num_iterations == 3


def test_config_preset_sets_defaults_and_flags_win(tmp_path):
    preset = tmp_path / "preset.json"
    preset.write_text(
        json.dumps({"hard_negative_k": 9, "num_iterations": 1, "learning_rate": 2e-5})
    )
    for config in (["--config", str(preset)], [f"--config={preset}"]):
        flags = parse_arguments([*config, "--num_iterations", "2"])
        assert flags.mining.hard_negative_k == 9 and flags.run.num_iterations == 2
        assert flags.training.learning_rate == 2e-5


def test_config_preset_with_an_unknown_key_is_refused(tmp_path):
    preset = tmp_path / "preset.json"
    preset.write_text(json.dumps({"hard_negative_kk": 9}))
    with pytest.raises(ValueError, match="hard_negative_kk"):
        parse_arguments(["--config", str(preset)])


def test_every_shipped_preset_parses_and_passes_the_checks():
    from pathlib import Path

    presets = sorted(Path("configs").glob("*.json"))
    assert len(presets) >= 4
    for preset in presets:
        flags = parse_arguments(["--config", str(preset)])
        if "qwen2vl_2b" in preset.name:  # the GPU presets train in bfloat16 autocast
            assert flags.training.bf16, preset


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
    (["--simulated_wrong_value", "0.5"], "add --foundation_model_backbone simulated_captioner"),
    (["--foundation_model_backbone", "simulated_captioner", "--simulated_wrong_value", "0.7",
      "--simulated_missed_change", "0.4"], "sum to 1.1"),
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


@pytest.mark.parametrize(
    "argv",
    [["--deepspeed", "ds.json"], ["--deepspeed", "ds.json", "--grad_cache"]],
)
def test_deepspeed_is_refused_in_one_line_whether_or_not_it_is_installed(argv, tmp_path, monkeypatch):
    """DeepSpeed is not installed here: transformers asks for it before our own check, and
    both give the same one line (docs/notes.md, DeepSpeed)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    with pytest.raises(ArgumentError, match="--deepspeed is not supported"):
        parse_arguments(argv)
    with pytest.raises(ArgumentError, match="--deepspeed is not supported"):  # from a preset too
        (tmp_path / "preset.json").write_text(json.dumps({"deepspeed": "ds.json"}))
        parse_arguments(["--config", "preset.json"])


@pytest.mark.parametrize(
    ("variable", "engine"), [("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"), ("ACCELERATE_USE_FSDP", "FSDP")]
)
def test_an_engine_switched_on_from_the_environment_is_refused_in_one_line(variable, engine, monkeypatch, capsys):
    """`accelerate launch` with a DeepSpeed or FSDP config exports these: refused before
    transformers looks for the package (deepspeed is not installed here) or builds FSDP."""
    from src.cli import train_main

    for value in ("true", "1", "yes"):
        monkeypatch.setenv(variable, value)
        with pytest.raises(ArgumentError, match=f"{variable}={value} asks for {engine}") as error:
            parse_arguments([])
        assert "not installed" not in str(error.value) and "package" not in str(error.value)
    assert train_main(["--num_iterations", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {variable}=yes asks for {engine}")
    monkeypatch.setenv(variable, "false")
    assert parse_arguments([]).training.deepspeed is None


def test_fsdp_is_refused_in_one_line():
    with pytest.raises(ArgumentError, match="--fsdp is not supported"):
        parse_arguments(["--fsdp"])
    with pytest.raises(ArgumentError, match="--fsdp is not supported"):
        parse_arguments(["--fsdp", "full_shard auto_wrap"])


@pytest.mark.parametrize(
    ("variable", "engine"), [("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"), ("ACCELERATE_USE_FSDP", "FSDP")]
)
def test_train_iterative_exits_2_with_one_line_naming_the_engine(
    variable, engine, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv(variable, "true")
    argv = ["--cache_dir", str(tmp_path / "cache"), "--experiment_dir", str(tmp_path / "exp")]
    assert train_main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {variable}=true asks for {engine}"), lines
    assert not (tmp_path / "cache").exists() and not (tmp_path / "exp").exists()


def test_full_fine_tuning_refuses_low_precision_weights():
    with pytest.raises(ArgumentError, match="full fine-tuning keeps float32 weights"):
        parse_arguments(["--torch_dtype", "bfloat16"])
    assert parse_arguments(["--torch_dtype", "bfloat16", "--lora"]).model.torch_dtype == "bfloat16"


def test_a_trainer_flag_error_is_an_argument_error():
    """TrainingArguments' own checks raise ValueError; the user gets them as one line."""
    with pytest.raises(ArgumentError, match="fp16 and bf16"):
        parse_arguments(["--fp16", "--bf16"])


def test_spellings_from_the_original_design_are_accepted():
    assert parse_arguments(["--model_backbone", "llava"]).model.model_backbone == "llava_next"


def test_result_keys_come_from_the_flags_declarations():
    """A flag's `results` decides whether a resume may change it; a flag added later counts
    only off its default (an experiment written before it still resumes)."""
    from src.arguments import result_config

    arguments = parse_arguments([]).as_dict()
    kept = result_config(arguments)
    assert {"hard_negative_k", "temperature", "lora_r"} <= set(kept)
    # the Trainer's fields count only off their defaults (a field a newer transformers adds
    # cannot stop an older experiment: test_experiment_config.py)
    assert not {"learning_rate", "seed"} & set(kept)
    off = result_config(parse_arguments(["--learning_rate", "1e-4", "--seed", "3"]).as_dict())
    assert off["learning_rate"] == 1e-4 and off["seed"] == 3
    assert not {"experiment_dir", "encode_batch_size", "report_queries", "logging_steps",
                "dataloader_num_workers", "cache_dir"} & set(kept)  # fmt: skip
    assert "synthetic_domain" not in kept and "simulated_wrong_value" not in kept
    changed = result_config(arguments | {"synthetic_domain": "garments"})
    assert changed["synthetic_domain"] == "garments"


def test_the_readme_flag_tables_are_the_flags_declarations():
    """README.md's tables between the markers, train_iterative.py's and eval_iterative.py's,
    are `python -m src.arguments` (regenerate them with `python -m src.arguments README.md`
    when a flag changes); a flag both scripts have reads the same in both."""
    from pathlib import Path

    from src.arguments import FLAG_TABLES, flag_table, flag_table_markers, with_flag_tables

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = {}
    for script, (groups, spellings) in FLAG_TABLES.items():
        start, end = flag_table_markers(script)
        assert readme.count(start) == 1 and readme.count(end) == 1
        table = readme.split(start)[1].split(end)[0]
        assert table == flag_table(groups, spellings)
        rows[script] = {row.split(" | ")[0].split("`")[1]: row.split(" | ", 1)[1] for row in table.splitlines()[2:]}
    assert with_flag_tables(readme) == readme
    shared = rows["train_iterative.py"].keys() & rows["eval_iterative.py"].keys()
    assert {"--report_queries", "--encode_batch_size", "--encode_max_pixels"} <= shared
    for name in shared - {"--experiment_dir", "--dataset_path"}:  # the same name, two flags
        assert rows["train_iterative.py"][name] == rows["eval_iterative.py"][name], name
