"""Alias of `ran_jax/configs/common.py` (shared defaults and the ':smoke' shrink)."""

from ran_jax.configs.common import apply_smoke, finish, get_base_config  # noqa: F401
