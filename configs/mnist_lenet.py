"""RAN with LeNet-5 on MNIST: the paper's T1.

Alias of the packaged `ran_jax/configs/mnist_lenet.py` (its docstring has the launch command and
what it reaches); `--config=mnist_lenet` names it from any directory.
"""

from ran_jax.configs.mnist_lenet import get_config  # noqa: F401
