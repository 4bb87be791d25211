#!/usr/bin/env bash
# The whole default job with no arguments: offline tiny Qwen2-VL on the synthetic benchmark,
# round 0 plus 3 rounds, then the evaluation table. Every flag goes to train_iterative.py
# except the launcher's own (src/launch.py): --nproc N (default: the GPUs this node sees,
# 1 without a GPU), --nnodes, --node_rank, --master_addr, --master_port, --rdzv_endpoint.
# $PYTHON (default python3) is the interpreter; torchrun runs under the same one.
set -euo pipefail
cd "$(dirname "$0")"
exec "${PYTHON:-python3}" -m src.launch "$@"
