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


def stable_end(c: ml_collections.ConfigDict, ema_decay: float = 0.99,
               lr_floor: float = 0.1) -> ml_collections.ConfigDict:
  """What the shipped configs use so that a run's end does not depend on float rounding.

  The adversarial game oscillates at a constant learning rate, and where its last step
  lands differs between machines (docs/training.md). A cosine decay of every stage's
  learning rate to `lr_floor` x its peak damps the oscillation by the end, and the
  exponential moving average of the encoder and classifier (evaluated and exported)
  averages over what is left.
  """
  c.ran.schedule = "cosine"
  c.ran.lr_floor = lr_floor
  c.ran.ema_decay = ema_decay
  return c


def apply_paper(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Algorithm 1 as published: constant learning rates, the last weights evaluated, and
  the adversarial push never capped."""
  c.ran.schedule = "constant"
  c.ran.lr_warmup_steps = 0
  c.ran.lr_floor = 0.0
  c.ran.ema_decay = 0.0
  c.ran.target_psnr = 0.0
  return c


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


VARIANTS = {"smoke": apply_smoke, "paper": apply_paper}


def variant_names(arg) -> list:
  """The variants named in `arg` ('paper,smoke' -> ['paper', 'smoke']), checked."""
  names = [n.strip() for n in (arg or "").split(",") if n.strip()]
  for name in names:
    if name not in VARIANTS:
      raise ValueError(f"Unknown config variant {name!r}; allowed: {sorted(VARIANTS)} "
                       "(configs/x.py:smoke, configs/x.py:paper,smoke).")
  return names


def finish(c: ml_collections.ConfigDict, arg, smoke=None) -> ml_collections.ConfigDict:
  """Applies the variants named in `arg` (comma-separated, e.g. 'paper,smoke', in any order).

  smoke: the config's own extra shrink (e.g. narrow layers for a wide encoder), applied
  after `apply_smoke` whenever 'smoke' is among the variants, alone or combined.
  """
  for name in variant_names(arg):
    c = VARIANTS[name](c)
    if name == "smoke" and smoke is not None:
      c = smoke(c) or c
  return c
