#!/usr/bin/env bash
# RAN throughput on one accelerator (GPU/TPU): VGG-16/ImageNet-shaped and the CPU cases,
# float32 and bfloat16 compute (f32 params), fast vs plain conv path.
# Usage (repo root, venv with jax[cuda] active):  bash bench/accelerator.sh [OUT_DIR]
# About 5-8 minutes on an H100, most of it compilation. No PyTorch reference on
# accelerators (the reference is a CPU-eager baseline).
set -euo pipefail
OUT=${1:-${OUT:-bench_out}}
mkdir -p "$OUT"
python -c "import jax; print(jax.devices())" | tee "$OUT/devices.txt"
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null | tee -a "$OUT/devices.txt" || true
# The plain ('xla') path is usually the better one on GPU (cuDNN convs); measure both.
for impl in xla fast; do
  for dtype in float32 bfloat16; do
    python -m ran_jax.bench --no-torch --conv-impl=$impl --dtype=$dtype \
      --cases=vgg16_imagenet --batch-sizes=16,32,64 --rounds=3 --reps=3 \
      --out="$OUT/vgg16_${impl}_${dtype}.json" 2>&1 | tee "$OUT/vgg16_${impl}_${dtype}.txt"
  done
done
python -m ran_jax.bench --no-torch --conv-impl=xla --cases=lenet_mnist,alexnet_cifar \
  --batch-sizes=128,512 --out="$OUT/small_xla.json" 2>&1 | tee "$OUT/small_xla.txt"
