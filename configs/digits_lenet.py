"""RAN with LeNet-5 on scikit-learn's bundled handwritten digits: the embedded default.

Alias of the packaged `ran_jax/configs/digits_lenet.py` (its docstring has the launch command
and what it reaches); `--config=digits_lenet` names it from any directory.
"""

from ran_jax.configs.digits_lenet import get_config  # noqa: F401
