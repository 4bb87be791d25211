#!/usr/bin/env bash
# The whole default job with no arguments: offline tiny Qwen2-VL on the synthetic benchmark,
# round 0 plus 3 rounds, then the evaluation table. Any flag is passed to train_iterative.py;
# --nproc N launches N processes with torchrun.
set -euo pipefail
cd "$(dirname "$0")"

nproc=1
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --nproc) nproc="$2"; shift 2 ;;
    --nproc=*) nproc="${1#*=}"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done

if [ "$nproc" -gt 1 ]; then
  exec torchrun --standalone --nproc_per_node "$nproc" train_iterative.py "${args[@]}"
fi
exec python3 train_iterative.py "${args[@]}"
