"""One device-name rule (src/devices.py): the model a reported name is filed under, its peak;
and whether a GPU runs bfloat16 natively (its own capability, after its device is set)."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from src import devices


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA H200 NVL", "H200 NVL"),
        ("NVIDIA GH200 480GB", "GH200"),
        ("NVIDIA H800 PCIe", "H800 PCIe"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA A100-PCIE-40GB", "A100"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L40", "L40"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA A10", "A10"),
        ("NVIDIA GeForce RTX 4090", "RTX 4090"),
        ("NVIDIA RTX A6000", "RTX A6000"),
        ("cpu", "cpu"),
        ("Tesla V100-SXM2-16GB", None),
        ("NVIDIA A10G", None),
        ("AMD Instinct MI300X", None),
    ],
)
def test_device_key(name, key):
    assert devices.device_key(name) == key


def test_peaks_differ_between_h100_cards_and_unknown_devices_have_none():
    peak = devices.peak_bf16_tflops
    assert peak("NVIDIA H100 80GB HBM3") == peak("NVIDIA H200") == 989.4
    assert peak("NVIDIA H100 PCIe") < peak("NVIDIA H100 NVL") < peak("NVIDIA H100 80GB HBM3")
    assert peak("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak("Tesla V100-SXM2-16GB") is None and peak("cpu") is None
    assert all(key in devices.PEAK_BF16_TFLOPS for _, key in devices._KEYS)


def test_throughputs_are_filed_by_device_key(tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "THROUGHPUT_FILE", tmp_path / "throughput.json")
    devices.record_throughput("sig", "NVIDIA H100 80GB HBM3", {"train_samples_per_s": 2.0}, "test")
    devices.record_throughput("sig", "NVIDIA Unknown 9000", {"train_samples_per_s": 9.0}, "test")
    assert devices.measured_throughput("sig", "NVIDIA H100 SXM5 80GB")["train_samples_per_s"] == 2.0
    assert devices.measured_throughput("sig", "NVIDIA H100 PCIe") == {}
    assert devices.measured_throughput("sig", "NVIDIA Unknown 9000") == {}


class _Args:
    """What resolve_bf16 reads of TrainingArguments: the process's device (set up by then)."""

    def __init__(self, bf16, device="cuda:3"):
        self.bf16, self.fp16, self.device = bf16, False, torch.device(device)
        self.mixed_precision = "bf16" if bf16 else "no"


@pytest.fixture
def gpu(monkeypatch):
    """A GPU node (simulated) whose cards' capability the test sets; records which device
    each capability query asked about."""
    state = {"capability": (7, 0), "asked": []}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulation counts
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")

    def capability(device=None):
        state["asked"].append(torch.device(device) if device is not None else None)
        return state["capability"]

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    return state


def test_bf16_follows_the_process_gpu_s_own_capability_not_emulation(gpu, monkeypatch):
    """torch.cuda.is_bf16_supported() is true on a V100 through emulation; the default is
    decided from the capability of this process's own GPU, after its device is set, and a
    GPU without native bfloat16 falls back to float32 with one line."""
    from src.arguments import default_training_arguments, resolve_bf16
    from src.model.encoder import resolve_dtype

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: pytest.fail("asked before set_device"))
    assert default_training_arguments()["bf16"] is None  # not decided at parse time
    for asked in (None, True):  # the default, and a preset's "bf16": true
        args = _Args(asked)
        line = resolve_bf16(args)
        assert args.bf16 is False and args.mixed_precision == "no"
        assert "compute capability 7.0" in line and "float32" in line and "\n" not in line
    assert gpu["asked"] and set(gpu["asked"]) == {torch.device("cuda:3")}
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_dtype("auto") == torch.float32  # a LoRA base and inference stay float32
    gpu["capability"] = (9, 0)
    args = _Args(None)
    assert resolve_bf16(args) is None and args.bf16 is True and args.mixed_precision == "bf16"
    assert resolve_dtype("auto") == torch.bfloat16
    args = _Args(False)
    assert resolve_bf16(args) is None and args.bf16 is False  # --bf16 False stays off


def test_freezing_collects_garbage_first_and_keeps_live_objects_out_of_collections():
    class Node:
        pass

    garbage, kept = Node(), Node()
    garbage.self, kept.self = garbage, kept  # two reference cycles; one stays reachable
    dropped = weakref.ref(garbage)
    del garbage
    frozen_before = gc.get_freeze_count()
    devices.freeze_long_lived_objects()
    assert dropped() is None  # collected, not frozen
    assert gc.get_freeze_count() > frozen_before
    assert not any(item is kept for item in gc.get_objects())  # the collector skips it now
