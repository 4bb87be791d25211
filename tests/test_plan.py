"""--plan prints what a job will do without training or loading weights: for the default
job, for the CIRR Qwen2-VL-2B preset (paths pointed at real-shape fixtures without
weights), and for a resumed experiment (which stages --auto_resume would skip)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from src.cli import train_main
from src.offline.real_shape import write_real_shape_checkpoint

REPO = Path(__file__).resolve().parents[1]


def plan_output(argv: list[str], capsys) -> str:
    assert train_main([*argv, "--plan"]) == 0
    return capsys.readouterr().out


def test_plan_of_the_default_job(tiny_qwen, small_benchmark, tmp_path, capsys):
    """The default job's steps and sizes (on the small benchmark: the default one takes
    seconds to render)."""
    out = plan_output(
        ["--model_name", str(tiny_qwen), "--dataset_path", str(small_benchmark),
         "--experiment_dir", str(tmp_path / "exp")], capsys,
    )  # fmt: skip
    assert not (tmp_path / "exp").exists()
    assert "parameters: 820,480" in out
    assert "train 40 triplets over 120 images, val 20 over 60" in out
    assert "image tokens per image: mean 4.0, max 4" in out
    rows = [line for line in out.splitlines() if re.match(r"\s+\d+\s+(train|evaluate|mine|augment)", line)]
    assert len(rows) == 2 + 4 * 3
    assert "train 40 triplets, 2 optimizer steps -> checkpoint_iter_0" in rows[0]
    assert all("will run" in row for row in rows)
    assert "encode 120 gallery images + 40 queries" in rows[2]


def test_plan_of_the_cirr_2b_preset(tmp_path, small_benchmark, capsys):
    preset = json.loads((REPO / "configs" / "cirr_qwen2vl_2b.json").read_text())
    preset |= {
        "model_name": str(write_real_shape_checkpoint("qwen2_vl_2b", tmp_path / "qwen2_vl_2b")),
        "foundation_model_path": str(write_real_shape_checkpoint("qwen2_vl_7b", tmp_path / "7b")),
        "dataset_path": str(small_benchmark),
    }
    config = tmp_path / "preset.json"
    config.write_text(json.dumps(preset))
    argv = ["--config", str(config), "--experiment_dir", str(tmp_path / "exp"), "--batch_size", "32"]
    out = plan_output(argv, capsys)
    assert "qwen2_vl-text1536x28-vision1280x32" in out
    assert "parameters: 2,208,985,600 (vision tower 665,271,296)" in out
    assert "trainable: 18,464,768 (LoRA r=16" in out
    assert "GradCache chunks of 16, gradient checkpointing" in out
    # memory per stage, the largest as the process's peak (src/memory.py, docs/memory.md)
    assert "memory per process (cpu, resident set; embedder weights float32" in out
    assert re.search(r"\n  training \(LoRA, batch 32 x 3 rows, .*: [\d.]+ GiB = weights 7\.36, ", out)
    assert re.search(r"\n  encoding \(mining and evaluation, batch 64, LoRA merged\): [\d.]+ GiB", out)
    assert re.search(r"\n  captioning \(qwen2_vl 8\.3 B, 8 pairs, 48 new tokens\): [\d.]+ GiB = weights 30\.89", out)
    assert re.search(r"\): peak [\d.]+ GiB \((training|captioning)\)", out)
    assert "qwen2_vl: caption up to" in out
    assert not (tmp_path / "exp").exists()


def test_plan_time_counts_every_batch_of_an_optimizer_step(monkeypatch):
    """With gradient accumulation an optimizer step takes several batches: 10 steps of 4 x 2
    processes x 4 accumulated batches are 320 samples, at 8 samples/s per process 20 s."""
    from types import SimpleNamespace

    from src import plan

    training = SimpleNamespace(per_device_train_batch_size=4, gradient_accumulation_steps=4)
    job = SimpleNamespace(training=training)
    step = SimpleNamespace(work={"train": 10})
    monkeypatch.setattr(plan, "world_size", lambda: 2)
    assert plan.step_seconds(step, {"train_samples_per_s": 8.0}, job) == 20.0
    training.gradient_accumulation_steps = 1
    assert plan.step_seconds(step, {"train_samples_per_s": 8.0}, job) == 5.0
