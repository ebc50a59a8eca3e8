#!/usr/bin/env bash
# RAN on one accelerator (GPU/TPU), one short prepared run (~10 minutes on an H200, most
# of it XLA compilation):
#   1. versions and devices;
#   2. the model/fused-iteration tests on the accelerator at full f32 precision;
#   3. VGG-16/ImageNet-shaped throughput, bfloat16 compute (f32 params) and float32;
#   4. LeNet/MNIST and AlexNet/CIFAR shapes, CPU fast path vs plain XLA convs.
# Usage (repo root, an environment with jax for the accelerator):
#   bash bench/accelerator.sh [OUT_DIR]
# Each step has its own time limit and writes its JSON as it goes, so a step cut short
# keeps what it measured and the next step still runs. No PyTorch reference here (the
# references, eager and torch.compile, are CPU baselines). The benchmark is `python -m bench`
# (bench/ran_bench.py), run from the repository root.
set -uo pipefail
OUT=${1:-${OUT:-bench_out}}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
step() {  # step NAME SECONDS CMD...
  local name=$1 secs=$2
  shift 2
  echo "=== $name (limit ${secs}s) ===" | tee -a "$OUT/summary.txt"
  local t0=$SECONDS
  timeout -k 5 "$secs" "$@" 2>&1 | tee "$OUT/$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: rc=$rc in $((SECONDS - t0))s ===" | tee -a "$OUT/summary.txt"
}
step versions 60 "$PY" -c "
import jax, flax, optax, orbax.checkpoint as ocp, chex
print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__,
      'orbax', ocp.__version__ if hasattr(ocp, '__version__') else '?', 'chex', chex.__version__)
print(jax.devices())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null \
  | tee -a "$OUT/summary.txt" || true
JAX_DEFAULT_MATMUL_PRECISION=highest step tests "${TESTS_S:-300}" "$PY" -m pytest -q -x \
  -p no:cacheprovider tests/test_fast_conv.py tests/test_fused.py tests/test_models.py
step vgg16_bf16 "${VGG_S:-170}" "$PY" -m bench --no-torch --conv-impl=auto \
  --dtype=bfloat16 --cases=vgg16_imagenet:64 --rounds=3 --reps=3 \
  --out="$OUT/vgg16_bf16.json"
step vgg16_f32 "${VGG_S:-130}" "$PY" -m bench --no-torch --conv-impl=auto \
  --dtype=float32 --cases=vgg16_imagenet:32 --rounds=3 --reps=3 \
  --out="$OUT/vgg16_f32.json"
step small "${SMALL_S:-180}" "$PY" -m bench --no-torch --conv-impl=fast \
  --cases=lenet_mnist:128/512,alexnet_cifar:128/512 --rounds=3 --reps=3 \
  --out="$OUT/small.json"
cat "$OUT/summary.txt"
