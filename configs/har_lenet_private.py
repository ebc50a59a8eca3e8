"""The recommended private HAR encoder: LeNet-5 + bottleneck + noise + compactness + game +
HSIC + a rounded release.

Alias of the packaged `ran_jax/configs/har_lenet_private.py` (its docstring has the launch
command and what it reaches); `--config=har_lenet_private` names it from any directory.
"""

from ran_jax.configs.har_lenet_private import get_config  # noqa: F401
