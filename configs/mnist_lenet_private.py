"""The recommended private MNIST encoder: LeNet-5 + bottleneck + release noise + compactness.

Alias of the packaged `ran_jax/configs/mnist_lenet_private.py` (its docstring has the launch
command and what it reaches); `--config=mnist_lenet_private` names it from any directory.
"""

from ran_jax.configs.mnist_lenet_private import get_config  # noqa: F401
