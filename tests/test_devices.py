"""One device-name rule (src/devices.py): the model a reported name is filed under, its peak."""

from __future__ import annotations

import pytest

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
