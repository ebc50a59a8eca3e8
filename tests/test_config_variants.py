"""Every packaged config under every combination and order of its variants (':paper,smoke').

Builds the configs only (nothing trains): a combination holding 'smoke' must be as small
as ':smoke' alone, and one holding 'paper' must be Algorithm 1 as published.
"""

import itertools

import pytest

from ran_jax import configs
from ran_jax.config_lib import validate_config
from ran_jax.configs import common

# The fields that size a run: what ':smoke' shrinks, in the shared part or per config.
SIZE_FIELDS = ("batch_size", "eval_batch_size", "num_epochs", "max_steps",
               "checkpoint_every_steps", "data.train_limit", "data.test_limit",
               "data.image_size", "model.widths", "model.classifier_hidden", "model.dtype",
               "export_deployment")
PAPER_FIELDS = {"ran.schedule": "constant", "ran.lr_warmup_steps": 0, "ran.lr_floor": 0.0,
                "ran.ema_decay": 0.0, "ran.target_psnr": 0.0}
WIDE_ENCODERS = ("alexnet", "vgg16")   # their default widths are the paper's full ones


def _get(c, dotted):
  for part in dotted.split("."):
    c = c[part]
  return c


def _combinations():
  names = sorted(common.VARIANTS)
  for r in range(1, len(names) + 1):
    for combo in itertools.permutations(names, r):
      yield ",".join(combo)


COMBOS = list(_combinations())


def test_combinations_cover_both_orders():
  assert "paper,smoke" in COMBOS and "smoke,paper" in COMBOS


@pytest.mark.parametrize("name", configs.names())
def test_smoke_alone_is_small(name):
  c = configs.get_config(f"{name}:smoke")
  assert 0 < c.max_steps <= 10 and c.batch_size <= 32
  assert 0 < c.data.train_limit <= 64 and 0 < c.data.test_limit <= 64
  if c.model.encoder in WIDE_ENCODERS:
    assert c.model.widths is not None and max(c.model.widths) <= 16, c.model.widths
    assert max(c.model.classifier_hidden) <= 32 and c.data.image_size <= 32


@pytest.mark.parametrize("name", configs.names())
@pytest.mark.parametrize("combo", COMBOS)
def test_every_variant_combination(name, combo):
  c = configs.get_config(f"{name}:{combo}")
  validate_config(c)
  variants = combo.split(",")
  if "smoke" in variants:
    smoke = configs.get_config(f"{name}:smoke")
    for field in SIZE_FIELDS:
      assert _get(c, field) == _get(smoke, field), (combo, field)
  else:
    full = configs.get_config(name)
    for field in SIZE_FIELDS:
      assert _get(c, field) == _get(full, field), (combo, field)
  if "paper" in variants:
    for field, value in PAPER_FIELDS.items():
      assert _get(c, field) == value, (combo, field)


def test_unknown_variant_is_refused():
  with pytest.raises(ValueError, match="Unknown config variant 'smok'"):
    configs.get_config("cifar10_alexnet:paper,smok")
