"""The real-shape check and the GPU check run here on tiny shapes, so that neither rots.

Both run in this process (their `main(argv)`), as `python -m benchmarks.<name>` would run
them, without another interpreter start and torch import; the GPU check's shell wrapper
is checked for what it adds (it runs the module from the repository with the arguments
given)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check, real_shape_check

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def test_real_shape_check_on_the_tiny_checkpoint(tmp_path):
    output = tmp_path / "real_shape_tiny.json"
    throughput = (REPO / "src" / "throughput.json").read_bytes()
    real_shape_check.main(["--arch", "tiny", "--output", str(output)])
    assert (REPO / "src" / "throughput.json").read_bytes() == throughput  # tiny rates are not filed
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


def test_the_gpu_check_wrapper_runs_the_module_from_the_repository_with_its_arguments(tmp_path):
    interpreter = tmp_path / "python"  # says where it was started and with what
    interpreter.write_text('#!/bin/sh\npwd\nfor a in "$@"; do echo "[$a]"; done\n')
    interpreter.chmod(0o755)
    completed = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--cpu", "--output_dir", "out dir"],
        cwd=tmp_path, env=os.environ | {"PYTHON": str(interpreter)}, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines() == [
        str(REPO), "[-m]", "[benchmarks.gpu_check]", "[--cpu]", "[--output_dir]", "[out dir]"
    ]


def test_gpu_check_smoke_on_the_cpu(tmp_path):
    throughput = (REPO / "src" / "throughput.json").read_bytes()
    gpu_check.main(["--cpu", "--output_dir", str(tmp_path)])
    assert (REPO / "src" / "throughput.json").read_bytes() == throughput  # --cpu files nothing
    train = json.loads((tmp_path / "train.json").read_text())
    assert len(train["runs"]) == 8  # LoRA and full x checkpointing x two mini-batch sizes
    assert not any(run["oom"] for run in train["runs"])
    assert all(run["samples_per_s"] > 0 and run["steps_timed"] == 1 for run in train["runs"])
    assert train["peak"] == "cpu: no bf16 peak on file (src/devices.py), no MFU"
    assert all(run["mfu"] is None and run["model_tflops_per_s"] > 0 for run in train["runs"])
    for measured in train["runs"]:
        flops = measured["flops"]
        assert flops["hardware"] > flops["model"] > 0
        assert (flops["recomputation"] > 0) == measured["gradient_checkpointing"]
        assert flops["grad_cache_forward"] == flops["hardware_forward"]
    lora = next(r for r in train["runs"] if r["mode"] == "lora")
    full = next(r for r in train["runs"] if r["mode"] == "full")
    assert lora["flops"]["backward"] < full["flops"]["backward"] / 2  # no backward through the frozen tower
    assert train["throughput"]["train_samples_per_s"] > 0
    encode = json.loads((tmp_path / "encode.json").read_text())
    assert encode["images"] == 256 and encode["batches"] == 16 and encode["dataloader_workers"] == 2
    # steady state: not the batch collated first, nor the 2 x 2 the workers prefetched during
    # start-up; nor the bare loop's first
    assert encode["loader"] == {"workers": 2, "prefetch": 2, "batches_collated_first": 1}
    assert encode["pipeline_warmup_batches_excluded"] == 5 and encode["pipeline_images_timed"] == 11 * 16
    assert encode["bare_warmup_batches_excluded"] == 1 and encode["bare_images_timed"] == 7 * 16
    assert encode["ratio_pipeline_over_bare"] > 0 and encode["bare_forward_model_tflops_per_s"] > 0
    search = json.loads((tmp_path / "search.json").read_text())
    assert search["ratio_search_over_matmul"] > 0
    caption = json.loads((tmp_path / "caption.json").read_text())
    assert [r["batch_size"] for r in caption["runs"]] == [2, 4]
    assert all(r["tokens_per_s"] > 0 for r in caption["runs"])
    assert all(json.loads((tmp_path / f"{part}.json").read_text())["device"] == "cpu"
               for part in ("train", "encode", "search", "caption"))  # fmt: skip


def test_gpu_check_records_an_out_of_memory_configuration_and_goes_on(tmp_path, monkeypatch):
    """Full fine-tuning without checkpointing at the larger mini-batch runs out of memory (a
    simulated torch.OutOfMemoryError, as on an 80 GB card): marked, the others measured."""
    from benchmarks import gpu_check

    class OutOfMemoryTrainer(gpu_check.IterativeTrainer):
        def train(self, *args, **kwargs):
            chunks = len(self.data_collator(None)["query_chunks"])
            if not self.model.config.lora and not self.args.gradient_checkpointing and chunks == 2:
                raise torch.OutOfMemoryError(
                    "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total "
                    "capacity of 79.19 GiB\nof which 1.2 GiB is free."
                )
            return super().train(*args, **kwargs)

    monkeypatch.setattr(gpu_check, "IterativeTrainer", OutOfMemoryTrainer)
    monkeypatch.setattr(gpu_check, "CPU", gpu_check.CPU | {"steps": 1})
    gpu_check.main(["--cpu", "--parts", "train", "--output_dir", str(tmp_path)])
    runs = json.loads((tmp_path / "train.json").read_text())["runs"]
    assert len(runs) == 8
    failed = [r for r in runs if r["oom"]]
    assert [(r["mode"], r["gradient_checkpointing"], r["mini_batch"]) for r in failed] == [("full", False, 4)]
    assert failed[0]["error"].startswith("CUDA out of memory. Tried to allocate 20.00 GiB")
    assert "samples_per_s" not in failed[0]
    assert all(r["samples_per_s"] > 0 for r in runs if not r["oom"])


def test_measured_rates_are_filed_for_plan(tmp_path, monkeypatch):
    """A GPU part's rates and a real architecture's real-shape rates go to src/throughput.json
    under the device key; the real-shape check leaves the GPU check's rates alone."""
    from benchmarks import gpu_check, real_shape_check
    from src import devices

    monkeypatch.setattr(devices, "THROUGHPUT_FILE", tmp_path / "throughput.json")
    signature = "qwen2_vl-text1536x28-vision1280x32"
    real = {"device": "NVIDIA H100 80GB HBM3", "cpu_count": 16, "dtype": "bfloat16",
            "throughput": {"signature": signature, "device": "NVIDIA H100 80GB HBM3",
                           "encode_items_per_s": 10.0, "train_samples_per_s": 1.0}}  # fmt: skip
    real_shape_check.file_rates(real, tmp_path / "real.json", "qwen2_vl_2b", torch.device("cuda"))
    filed = devices.measured_throughput(signature, "NVIDIA H100 SXM5 80GB")
    assert filed["encode_items_per_s"] == 10.0
    assert "--arch qwen2_vl_2b, NVIDIA H100 80GB HBM3, bfloat16" in filed["source"]
    encode = {"throughput": {"signature": signature, "device": "NVIDIA H100 80GB HBM3",
                             "encode_items_per_s": 200.0}}  # fmt: skip
    assert gpu_check.file_rates(encode, gpu_check.RESULTS / "encode.json") == {"encode_items_per_s": 200.0}
    filed = devices.measured_throughput(signature, "NVIDIA H100 80GB HBM3")
    assert filed["encode_items_per_s"] == 200.0 and filed["train_samples_per_s"] == 1.0
    assert filed["source"] == "benchmarks/results/gpu/encode.json (bash benchmarks/gpu_check.sh)"
    real_shape_check.file_rates(real, tmp_path / "real.json", "qwen2_vl_2b", torch.device("cuda"))
    assert devices.measured_throughput(signature, "NVIDIA H100 80GB HBM3")["encode_items_per_s"] == 200.0
    assert devices.measured_throughput(signature, "NVIDIA H100 PCIe") == {}  # another card
    unknown = {"throughput": {"signature": signature, "device": "NVIDIA X1", "encode_items_per_s": 1.0}}
    assert gpu_check.file_rates(unknown, gpu_check.RESULTS / "encode.json") == {}


def test_the_gpu_check_times_no_batch_prefetched_during_warm_up():
    """Eight workers with prefetch 2 hold 16 batches ready when the pipeline starts (and the
    main process collated one to size them): those come at once, so timing them overstates
    the steady-state rate. Batches here end every 1.0 s once warm; the 17 warm-up batches
    end within the first 1.7 s."""
    from benchmarks.gpu_check import steady_state, warmup_batches

    warm = warmup_batches({"workers": 8, "prefetch": 2, "batches_collated_first": 1})
    assert warm == 17
    ends = [0.1 * (i + 1) for i in range(17)] + [1.7 + (i + 1) for i in range(47)]
    images, seconds = steady_state(ends, [64] * 64, warm)
    assert images == 47 * 64 and seconds == pytest.approx(47.0)
    assert warmup_batches({"workers": 0, "prefetch": None, "batches_collated_first": 0}) == 1
    with pytest.raises(ValueError, match="none after"):
        steady_state(ends[:17], [64] * 17, warm)
