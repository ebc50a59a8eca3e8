#!/usr/bin/env bash
# The paper's accelerator tasks on one lent GPU/TPU, about ten minutes (see bench/paper_tasks.py):
# CIFAR-10/AlexNet DNN + two RAN points trained and attacked, VGG-16/ImageNet smoke with a
# SIGTERM half-way and a resume. Both run at once on the one device.
# Usage (repo root, an environment with jax for the accelerator):
#   bash bench/tasks_accelerator.sh OUT_DIR CIFAR_MANUAL_DIR [extra `python -m bench tasks` flags]
# CIFAR_MANUAL_DIR holds cifar-10-binary.tar.gz or cifar10_jpg.tar.gz (see docs/howto/get_data.md).
# ImageNet: pass --imagenet_data_dir=PREPARED_TFDS_DIR, else the smoke runs on TFDS fake data.
set -uo pipefail
OUT=${1:?usage: bash bench/tasks_accelerator.sh OUT_DIR CIFAR_MANUAL_DIR [flags]}
CIFAR=${2:?usage: bash bench/tasks_accelerator.sh OUT_DIR CIFAR_MANUAL_DIR [flags]}
shift 2
PY=${PYTHON:-python3}
mkdir -p "$OUT"
"$PY" -m bench tasks --out="$OUT" --parallel --cifar_manual_dir="$CIFAR" "$@" 2>&1 | tee "$OUT/tasks.txt"
exit "${PIPESTATUS[0]}"
