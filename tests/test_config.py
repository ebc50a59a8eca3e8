"""Config validation: every bad value is named before any compute."""

import os

import pytest

from configs import common, digits_lenet
from ran_jax.config_lib import ConfigError, validate_config
from tests.helpers import run_train


def _cfg(**overrides):
  c = digits_lenet.get_config()
  for dotted, v in overrides.items():
    node = c
    parts = dotted.split("__")
    for p in parts[:-1]:
      node = node[p]
    node[parts[-1]] = v
  return c


def test_default_configs_validate():
  validate_config(digits_lenet.get_config(), num_devices=1)
  validate_config(digits_lenet.get_config("smoke"), num_devices=4)


@pytest.mark.parametrize("overrides,pattern", [
    (dict(ran__lam=1.5), r"ran.lam=1.5: lambda must be a number in \[0, 1\]"),
    (dict(ran__lam=-0.1), r"ran.lam=-0.1"),
    (dict(ran__k=0), r"ran.k=0: k must be an integer >= 1"),
    (dict(ran__l1=0.0), r"ran.l1=0.0: learning rates must be > 0"),
    (dict(ran__l3=-1e-3), r"ran.l3=-0.001"),
    (dict(batch_size=0), r"batch_size=0"),
    (dict(batch_size=-8), r"batch_size=-8"),
    (dict(model__encoder="resnet50"), r"model.encoder='resnet50': unknown encoder; allowed: \['alexnet', 'lenet5', 'vgg16'\]"),
    (dict(data__name="nosuchdata"), r"data.name='nosuchdata': unknown dataset; allowed:"),
    (dict(ran__recon_reduction="max"), r"allowed values are \['sum', 'mean'\]"),
    (dict(num_epochs=0), r"num_epochs=0"),
])
def test_bad_values(overrides, pattern):
  with pytest.raises(ConfigError, match=pattern):
    validate_config(_cfg(**overrides), num_devices=1)


def test_batch_not_divisible_by_devices():
  with pytest.raises(ConfigError, match=r"batch_size=6 is not divisible by the 4 devices.*multiple of 4"):
    validate_config(_cfg(batch_size=6), num_devices=4)


def test_all_problems_reported_together():
  with pytest.raises(ConfigError) as e:
    validate_config(_cfg(ran__lam=2.0, ran__k=0), num_devices=1)
  assert "ran.lam" in str(e.value) and "ran.k" in str(e.value)


def test_smoke_variant_and_unknown_variant():
  assert digits_lenet.get_config("smoke").max_steps > 0
  with pytest.raises(ValueError, match="Unknown config variant 'fast'"):
    digits_lenet.get_config("fast")
  assert common.get_base_config().ran.recon_reduction == "sum"


def test_cli_bad_value_stops_before_compute(tmp_path):
  wd = tmp_path / "wd"
  r = run_train(["--config=configs/digits_lenet.py:smoke", f"--workdir={wd}", "--config.ran.lam=1.7"])
  assert r.returncode == 2, r.stderr[-2000:]
  assert "ran.lam=1.7: lambda must be a number in [0, 1]" in r.stderr
  assert not os.path.exists(wd / "checkpoints")


def test_cli_input_shape_that_does_not_fit(tmp_path):
  # 8x8 digits are too small for VGG-16's five poolings
  r = run_train(["--config=configs/digits_lenet.py:smoke", f"--workdir={tmp_path / 'wd'}",
                 "--config.model.encoder=vgg16", "--config.data.image_size=8"])
  assert r.returncode == 2, r.stderr[-2000:]
  assert "Encoder vgg16" in r.stderr and "too small" in r.stderr
