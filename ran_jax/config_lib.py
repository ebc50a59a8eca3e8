"""Config validation: every bad value stops the run before any compute."""

from __future__ import annotations

from ran_jax.losses import RECON_REDUCTIONS

DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
  """A config value outside what RAN accepts; the message names field and allowed values."""


def _get(config, dotted, default=None):
  node = config
  for part in dotted.split("."):
    if node is None or part not in node:
      return default
    node = node[part]
  return node


def validate_config(config, num_devices: int | None = None) -> None:
  """Raises ConfigError listing every problem found in `config`."""
  from ran_jax import input_pipeline
  from ran_jax.models import ENCODERS

  problems = []

  def need(cond, msg):
    if not cond:
      problems.append(msg)

  lam = _get(config, "ran.lam")
  need(isinstance(lam, (int, float)) and 0.0 <= lam <= 1.0,
       f"ran.lam={lam!r}: lambda must be a number in [0, 1] (Eq. 4 weighs lambda*CE against (1-lambda)*MSE).")
  k = _get(config, "ran.k")
  need(isinstance(k, int) and not isinstance(k, bool) and k >= 1,
       f"ran.k={k!r}: k must be an integer >= 1 (the paper uses k=3).")
  for lr in ("l1", "l2", "l3"):
    v = _get(config, f"ran.{lr}")
    need(isinstance(v, (int, float)) and v > 0, f"ran.{lr}={v!r}: learning rates must be > 0.")
  red = _get(config, "ran.recon_reduction")
  need(red in RECON_REDUCTIONS, f"ran.recon_reduction={red!r}: allowed values are {list(RECON_REDUCTIONS)}.")

  bs = _get(config, "batch_size")
  need(isinstance(bs, int) and bs > 0, f"batch_size={bs!r}: the global batch size must be an integer > 0.")
  ebs = _get(config, "eval_batch_size")
  need(isinstance(ebs, int) and ebs > 0, f"eval_batch_size={ebs!r}: must be an integer > 0.")
  if num_devices and isinstance(bs, int) and bs > 0:
    need(bs % num_devices == 0,
         f"batch_size={bs} is not divisible by the {num_devices} devices: each device must get an "
         f"equal share; use a multiple of {num_devices}.")
  if num_devices and isinstance(ebs, int) and ebs > 0:
    need(ebs % num_devices == 0,
         f"eval_batch_size={ebs} is not divisible by the {num_devices} devices; use a multiple of {num_devices}.")
  ne = _get(config, "num_epochs")
  need(isinstance(ne, int) and ne >= 1, f"num_epochs={ne!r}: must be an integer >= 1.")
  for name in ("log_every_steps",):
    v = _get(config, name)
    need(isinstance(v, int) and v >= 1, f"{name}={v!r}: must be an integer >= 1.")
  ms = _get(config, "max_steps", -1)
  need(isinstance(ms, int) and (ms == -1 or ms >= 1), f"max_steps={ms!r}: -1 (no limit) or an integer >= 1.")
  ce = _get(config, "checkpoint_every_steps", 0)
  need(isinstance(ce, int) and ce >= 0, f"checkpoint_every_steps={ce!r}: 0 (every epoch) or an integer >= 1.")
  keep = _get(config, "keep_checkpoints", 2)
  need(isinstance(keep, int) and keep >= 1, f"keep_checkpoints={keep!r}: must be an integer >= 1.")

  enc = _get(config, "model.encoder")
  need(enc in ENCODERS, f"model.encoder={enc!r}: unknown encoder; allowed: {sorted(ENCODERS)}.")
  hidden = _get(config, "model.classifier_hidden")
  need(hidden is not None and all(isinstance(h, int) and h > 0 for h in hidden),
       f"model.classifier_hidden={hidden!r}: a tuple of positive layer widths, e.g. (120, 84).")
  dropout = _get(config, "model.dropout", 0.0)
  need(isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0,
       f"model.dropout={dropout!r}: must be in [0, 1).")
  dtype = _get(config, "model.dtype", "float32")
  need(dtype in DTYPES, f"model.dtype={dtype!r}: allowed values are {list(DTYPES)}.")

  ds = _get(config, "data.name")
  known = input_pipeline.known_datasets()
  need(ds in known, f"data.name={ds!r}: unknown dataset; allowed: {sorted(known)}.")

  if problems:
    raise ConfigError("Invalid config:\n  - " + "\n  - ".join(problems))
