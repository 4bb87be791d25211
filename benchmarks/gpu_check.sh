#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): on a CUDA machine with the requirements
# installed, the Qwen2-VL-2B shape in bf16 (training, encoding, search, the 7B captioner
# shape), JSON under benchmarks/results/gpu/. `--cpu` runs the same code on tiny shapes.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m benchmarks.gpu_check "$@"
