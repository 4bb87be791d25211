set -euo pipefail
cd "$(dirname "$0")/../../.."
rm -rf /tmp/cir_experiment_v1 && mkdir -p /tmp/cir_experiment_v1
python - <<'PY'
from src.offline.tiny import build_tiny_checkpoint
from src.offline.synthetic.benchmark import build_synthetic_benchmark
build_tiny_checkpoint("qwen2_vl", "/tmp/cir_experiment_v1/model", image_size=56, seed=0)
build_synthetic_benchmark("/tmp/cir_experiment_v1/data", num_train_images=120, num_val_images=60, num_test_images=30, image_size=56, seed=0)
PY
python train_iterative.py --model_name /tmp/cir_experiment_v1/model --dataset_path /tmp/cir_experiment_v1/data \
  --experiment_dir /tmp/cir_experiment_v1/experiment --num_iterations 1 --max_steps 2 --batch_size 8 \
  --max_train_samples 48 --max_eval_samples 16 --dataloader_num_workers 0 --encode_batch_size 32 \
  --save_steps 1000 --no_report
