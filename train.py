"""Trains a Reconstructive Adversarial Network: `ran_jax.train` run from the repository root.

  python train.py --config=configs/digits_lenet.py --workdir=runs/digits
  python train.py --config=configs/mnist_lenet.py --config.ran.lam=0.3 --workdir=...

The same command as `ran-train` and `python -m ran_jax.train` (see ran_jax/train.py).
"""

from ran_jax.train import run

if __name__ == "__main__":
  run()
