"""RAN with a 1-D LeNet-5 on UCI HAR smartphone inertial windows: the paper's T5.

Alias of the packaged `ran_jax/configs/har_lenet.py` (its docstring has the launch command and
what it reaches); `--config=har_lenet` names it from any directory.
"""

from ran_jax.configs.har_lenet import get_config  # noqa: F401
