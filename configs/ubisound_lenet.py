"""RAN with LeNet-5 on log-mel spectrograms: the paper's T4 (acoustic events).

Alias of the packaged `ran_jax/configs/ubisound_lenet.py` (its docstring has the launch command
and what it reaches); `--config=ubisound_lenet` names it from any directory.
"""

from ran_jax.configs.ubisound_lenet import get_config  # noqa: F401
