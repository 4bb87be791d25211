"""The real-shape check and the GPU check run here on tiny shapes, so that neither rots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def run(*command: str) -> None:
    """Scripts run with this interpreter (a venv's python need not be on PATH)."""
    env = os.environ | {"PYTHON": sys.executable}
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]


def test_real_shape_check_on_the_tiny_checkpoint(tmp_path):
    output = tmp_path / "real_shape_tiny.json"
    run(sys.executable, "-m", "benchmarks.real_shape_check", "--arch", "tiny", "--output", str(output))
    report = json.loads(output.read_text())
    assert set(report["stages"]) >= {
        "build", "load_embedder", "embedder_forward",
        "lora_train_step_gradient_checkpointing_gradcache", "caption_two_images_4_tokens",
        "consistency_yes_no_forward",
    }  # fmt: skip
    assert all(report["stages"]["load_embedder"]["lora_matches"].values())
    # 640 x 480 at the 448 x 448 budget: 22 x 17 patches of 28 px after smart_resize
    assert report["image_tokens"]["640x480"] == 234 and report["image_tokens"]["256x256"] == 81
    assert min(report["stages"]["embedder_forward"]["min_cosine_to_unpadded"].values()) > 0.99
    assert report["throughput"]["signature"] == "qwen2_vl-text128x2-vision64x2"


def test_gpu_check_smoke_on_the_cpu(tmp_path):
    run("bash", "benchmarks/gpu_check.sh", "--cpu", "--output_dir", str(tmp_path))
    train = json.loads((tmp_path / "train.json").read_text())
    assert len(train["runs"]) == 8  # LoRA and full x checkpointing x two mini-batch sizes
    assert all(run["samples_per_s"] > 0 for run in train["runs"])
    encode = json.loads((tmp_path / "encode.json").read_text())
    assert encode["ratio_pipeline_over_bare"] > 0
    search = json.loads((tmp_path / "search.json").read_text())
    assert search["ratio_search_over_matmul"] > 0
    caption = json.loads((tmp_path / "caption.json").read_text())
    assert [r["batch_size"] for r in caption["runs"]] == [2, 4]
    assert all(r["tokens_per_s"] > 0 for r in caption["runs"])
