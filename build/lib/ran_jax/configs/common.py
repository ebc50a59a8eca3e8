"""Shared defaults for every RAN config and the ':smoke' shrink used by tests.

Loss convention (`ran.recon_reduction`): 'sum' (default, the paper's Eq. 3-4)
weighs each example's cross-entropy against its squared reconstruction error
*summed* over all input values, averaged over the batch; 'mean' averages it over
the input values instead (H*W*C times smaller), which changes what a lambda means.

The fields a config may have, their defaults and allowed values are defined once in
`ran_jax.config_lib.base_config`; `validate_config` rejects any other field (naming the
nearest valid ones) and checks every value before any data is loaded.
"""

import ml_collections

from ran_jax import config_lib


def get_base_config() -> ml_collections.ConfigDict:
  """The library's defaults (`ran_jax.config_lib.base_config`: every field, commented)."""
  return config_lib.base_config()


def apply_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a config so one run takes seconds on CPU (used by tests)."""
  c.batch_size = 16
  c.eval_batch_size = 32
  c.num_epochs = 2
  c.max_steps = 6
  c.log_every_steps = 2
  c.data.train_limit = 48
  c.data.test_limit = 40
  c.export_deployment = False  # the .tflite conversion takes seconds; tests/test_deploy.py has it
  return c


def finish(c: ml_collections.ConfigDict, arg) -> ml_collections.ConfigDict:
  if arg in (None, ""):
    return c
  if arg == "smoke":
    return apply_smoke(c)
  raise ValueError(f"Unknown config variant {arg!r}; allowed: 'smoke' (configs/x.py:smoke).")
