"""The recommended private spoken-digit encoder: LeNet-5 + bottleneck + compactness +
a rounded, noisy release.

Alias of the packaged `ran_jax/configs/ubisound_lenet_private.py` (its docstring has the
launch command and what it reaches); `--config=ubisound_lenet_private` names it from any
directory.
"""

from ran_jax.configs.ubisound_lenet_private import get_config  # noqa: F401
