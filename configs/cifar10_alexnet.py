"""RAN with AlexNet on CIFAR-10: the paper's T2.

Alias of the packaged `ran_jax/configs/cifar10_alexnet.py` (its docstring has the launch command
and what it reaches); `--config=cifar10_alexnet` names it from any directory.
"""

from ran_jax.configs.cifar10_alexnet import get_config  # noqa: F401
