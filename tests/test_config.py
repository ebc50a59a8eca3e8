"""Config validation: every field's bad value is named before any data is loaded."""

import os
import re

import pytest

from configs import common, digits_lenet
from ran_jax.config_lib import (ConfigError, known_fields, nearest_fields, unknown_override,
                                validate_config)
from tests.helpers import ROOT, run_train


def _cfg(**overrides):
  """digits_lenet as a plain dict with `section__field=value` set (any type, unchecked)."""
  c = digits_lenet.get_config().to_dict()
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
  validate_config(_cfg(), num_devices=1)  # a plain dict, as read back from config.json


# (field, bad value, what the message must say after `field=value: `)
BAD_VALUES = [
    ("seed", -1, "an integer >= 0"),
    ("seed", 1.5, "an integer >= 0"),
    ("batch_size", 0, "the global batch size, an integer >= 1"),
    ("batch_size", -8, "an integer >= 1"),
    ("batch_size", True, "an integer >= 1"),
    ("eval_batch_size", 0, "an integer >= 1"),
    ("num_epochs", 0, "an integer >= 1"),
    ("max_steps", 0, "-1 (num_epochs decides) or an integer >= 1"),
    ("max_steps", -2, "-1"),
    ("log_every_steps", 0, "an integer >= 1"),
    ("checkpoint_every_steps", -1, "0 (every epoch) or an integer >= 1"),
    ("keep_checkpoints", 0, "an integer >= 1"),
    ("profile_steps", "5-2", "a range 'A-B' with 1 <= A <= B"),
    ("export_deployment", "yes", "True or False"),
    ("data.name", "nosuchdata", "unknown dataset; allowed: ["),
    ("data.name", "", "unknown dataset"),
    ("data.data_dir", "", "None or a non-empty path string"),
    ("data.data_dir", 3, "None or a non-empty path string"),
    ("data.manual_dir", "", "None or a non-empty path string"),
    ("data.image_size", -28, "0 (the dataset's own size) or an integer >= 1"),
    ("data.image_size", 28.0, "an integer >= 1"),
    ("data.train_limit", -1, "0 (all) or an integer >= 1"),
    ("data.test_limit", -1, "0 (all) or an integer >= 1"),
    ("data.num_classes", 0, "None (the dataset's) or an integer >= 1"),
    ("data.decode_workers", 0, "an integer >= 1"),
    ("data.attribute", 3, "'' (none) or the name of a per-example attribute"),
    ("data.attribute", "subject", "dataset digits has no such attribute; available: none"),
    ("model.encoder", "resnet50", "unknown encoder; allowed: ['alexnet', 'lenet5', 'vgg16']"),
    ("model.widths", (0, 16), "None (the paper's widths) or a tuple of positive integers"),
    ("model.widths", (3,), "lenet5 takes two conv widths, got (3,)"),
    ("model.widths", (6, 16, 32), "lenet5 takes two conv widths"),
    ("model.widths", 6, "a tuple of positive integers"),
    ("model.classifier_hidden", (120, -84), "a tuple of positive integers (layer widths"),
    ("model.classifier_hidden", None, "a tuple of positive integers"),
    ("model.dropout", 1.0, r"a number in [0, 1)"),
    ("model.dropout", -0.1, r"a number in [0, 1)"),
    ("model.dtype", "float16", "allowed values are ['float32', 'bfloat16']"),
    ("model.conv_impl", "cudnn", "allowed values are ['auto', 'fast', 'xla']"),
    ("model.bn_group_size", -1, "0 (statistics over the whole batch) or an integer >= 1"),
    ("model.remat", "all", "allowed values are ['none', 'conv', 'full']"),
    ("model.classifier_shards", 0, "an integer >= 1"),
    ("model.bottleneck_dim", -1, "0 (no bottleneck) or an integer >= 1"),
    ("model.bottleneck_dim", 8.0, "an integer >= 1"),
    ("model.bottleneck_kind", "conv3x3", "allowed values are ['dense', 'conv1x1']"),
    ("model.feature_noise", -0.1, "a finite number >= 0"),
    ("model.feature_noise", float("nan"), "a finite number >= 0"),
    ("model.release_step", -0.5, "a finite number >= 0"),
    ("model.release_step", float("inf"), "a finite number >= 0"),
    ("ran.k", 0, "an integer >= 1 (the paper uses k=3)"),
    ("ran.k", 2.0, "an integer >= 1"),
    ("ran.lam", 1.5, "lambda must be a number in [0, 1]"),
    ("ran.lam", -0.1, "lambda must be a number in [0, 1]"),
    ("ran.l1", 0.0, "learning rates must be finite numbers > 0"),
    ("ran.l2", float("inf"), "learning rates must be finite numbers > 0"),
    ("ran.l3", -1e-3, "learning rates must be finite numbers > 0"),
    ("ran.recon_reduction", "max", "allowed values are ['sum', 'mean']"),
    ("ran.fused", 1, "True or False"),
    ("ran.extra_decoders", ("mlp", "mlp"), "a tuple of names from ['mlp', 'wide'], without dup"),
    ("ran.extra_decoders", ("unet",), "a tuple of names from ['mlp', 'wide']"),
    ("ran.extra_decoders", "mlp", "a tuple of names"),
    ("ran.adversary_reduce", "max", "allowed values are ['min', 'softmin']"),
    ("ran.softmin_temperature", 0.0, "a finite number > 0"),
    ("ran.mlp_decoder_hidden", (1024, 0), "a tuple of positive integers (hidden widths"),
    ("ran.wide_decoder_mult", 0, "an integer >= 1"),
    ("ran.wide_decoder_mult", 1.5, "an integer >= 1"),
    ("ran.warmup_steps", -1, "0 (none) or an integer >= 1"),
    ("ran.reinit_every_steps", -5, "0 (never) or an integer >= 1"),
    ("ran.target_psnr", -1.0, "0 (off) or a finite number of dB > 0"),
    ("ran.compactness", -0.5, "a finite number >= 0"),
    ("ran.attribute_weight", -1.0, "a finite number >= 0"),
    ("ran.entangle", -1.0, "a finite number >= 0"),
    ("ran.entangle_temperature", 0.0, "a finite number > 0"),
    ("ran.hsic", -0.5, "a finite number >= 0"),
    ("ran.hsic_bandwidth", 0.0, "a finite number > 0"),
    ("ran.distill_from", 3, "a trained workdir, or '' (none)"),
    ("ran.distill_weight", 1.5, "a number in [0, 1]"),
    ("ran.distill_temperature", 0.0, "a finite number > 0"),
    ("ran.attribute_heads", (), "a non-empty tuple of names from ['linear', 'mlp']"),
    ("ran.attribute_heads", ("svm",), "a non-empty tuple of names from ['linear', 'mlp']"),
    ("ran.attribute_hidden", (0,), "a tuple of positive integers (hidden widths"),
    ("ran.schedule", "linear", "allowed values are ['constant', 'cosine', 'step']"),
    ("ran.lr_warmup_steps", -1, "0 (none) or an integer >= 1"),
    ("ran.lr_floor", 1.5, "a number in [0, 1]"),
    ("ran.ema_decay", 1.0, "0 (off) or a number in (0, 1)"),
    ("ran.ema_decay", -0.5, "0 (off) or a number in (0, 1)"),
]


@pytest.mark.parametrize("field,value,allowed", BAD_VALUES,
                         ids=[f"{f}={v!r}" for f, v, _ in BAD_VALUES])
def test_bad_value(field, value, allowed):
  with pytest.raises(ConfigError) as e:
    validate_config(_cfg(**{field.replace(".", "__"): value}), num_devices=1)
  msg = str(e.value)
  assert msg.startswith("Invalid config:\n  - ")
  assert f"- {field}={value!r}: " in msg, msg
  assert allowed in msg, msg
  assert msg.count("\n  - ") == 1, msg  # only this field is reported


def test_every_field_has_a_bad_value_test():
  assert {f for f, _, _ in BAD_VALUES} == set(known_fields())


@pytest.mark.parametrize("encoder,widths,ok", [
    ("lenet5", (4, 8), True), ("alexnet", (8, 8, 8, 8, 8), True), ("vgg16", (4, 4, 8, 8, 8), True),
    ("alexnet", (8, 8), False), ("vgg16", (4,) * 13, False), ("vgg16", (4, 4, 8, 8), False),
])
def test_widths_count_per_encoder(encoder, widths, ok):
  cfg = _cfg(model__encoder=encoder, model__widths=widths, data__image_size=32)
  if ok:
    validate_config(cfg)
  else:
    expected = f"model.widths={widths!r}: {encoder} takes five"
    with pytest.raises(ConfigError, match=re.escape(expected)):
      validate_config(cfg)


def test_unknown_fields_name_the_nearest():
  cfg = _cfg()
  cfg["ran"]["lamda"] = 0.3
  cfg["nonexistent"] = 1
  cfg["encoder"] = "vgg16"
  cfg["model"]["widths"] = {"a": 1}  # a section where a value belongs
  with pytest.raises(ConfigError) as e:
    validate_config(cfg)
  msg = str(e.value)
  assert "- ran.lamda=0.3: unknown field; nearest valid names: ['ran.lam']." in msg
  assert "- encoder='vgg16': unknown field; nearest valid names: ['model.encoder']." in msg
  assert "- nonexistent=1: unknown field; no similar name, the valid names there are [" in msg
  assert "'batch_size'" in msg and "'ran.*'" in msg
  assert "- model.widths.a=1: unknown field" in msg
  cfg = _cfg()
  cfg["ran"] = 3  # a value where a section belongs
  with pytest.raises(ConfigError, match=r"- ran=3: a section of fields \(ran\.\*\), not a value"):
    validate_config(cfg)


def test_nearest_fields():
  known = known_fields()
  assert nearest_fields("batchsize", known) == ["batch_size"]
  assert nearest_fields("ran.fuse", known) == ["ran.fused"]
  assert nearest_fields("model.conv", known) == ["model.conv_impl"]
  assert nearest_fields("qqqqqq", known) == []


def test_unknown_override_from_argv():
  assert unknown_override(["train.py", "--config=c.py", "--config.ran.lam=0.3"]) is None
  assert unknown_override(["train.py", "--config.data.name", "mnist"]) is None
  msg = unknown_override(["train.py", "--config=c.py", "--config.ran.lam=0.3",
                          "--config.ran.lamda=0.3"])
  assert msg == ("Invalid config:\n"
                 "  - ran.lamda=0.3: unknown field; nearest valid names: ['ran.lam'].")
  msg = unknown_override(["train.py", "--config.nosuch.field", "x"])
  assert msg.startswith("Invalid config:\n  - nosuch.field='x': unknown field;")


def test_batch_not_divisible_by_devices():
  with pytest.raises(ConfigError, match=r"batch_size=6 is not divisible by the 4 devices.*of 4"):
    validate_config(_cfg(batch_size=6), num_devices=4)
  with pytest.raises(ConfigError, match=r"eval_batch_size=30 is not divisible by the 4 devices"):
    validate_config(_cfg(eval_batch_size=30), num_devices=4)


def test_all_problems_reported_together():
  with pytest.raises(ConfigError) as e:
    validate_config(_cfg(ran__lam=2.0, ran__k=0, model__conv_impl="cudnn"), num_devices=1)
  assert "ran.lam" in str(e.value) and "ran.k" in str(e.value) and "model.conv_impl" in str(e.value)


def test_task_configs_validate():
  """Every task config, and its smoke variant, has only known fields with valid values."""
  import glob
  import importlib

  names = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                 if not p.endswith(("common.py", "__init__.py")))
  assert {"digits_lenet", "mnist_lenet", "mnist_lenet_private", "har_lenet"} <= set(names)
  for name in names:
    for arg in (None, "smoke"):
      validate_config(importlib.import_module(f"configs.{name}").get_config(arg))


def test_entanglement_needs_an_attribute():
  with pytest.raises(ConfigError, match="ran.entangle=1.0: the entanglement penalty needs"):
    validate_config(_cfg(ran__entangle=1.0), num_devices=1)
  with pytest.raises(ConfigError, match="ran.hsic=2.0: the dependence penalty needs"):
    validate_config(_cfg(ran__hsic=2.0), num_devices=1)
  validate_config(_cfg(ran__entangle=1.0, data__name="uci_har", data__attribute="subject"),
                  num_devices=1)


def test_smoke_variant_and_unknown_variant():
  full, smoke = digits_lenet.get_config(), digits_lenet.get_config("smoke")
  assert (smoke.max_steps, smoke.num_epochs, smoke.batch_size, smoke.data.train_limit,
          smoke.data.test_limit) == (6, 2, 16, 48, 40)     # common.apply_smoke's shrink
  assert full.num_epochs > smoke.num_epochs and full.ran == smoke.ran   # the game is unchanged
  with pytest.raises(ValueError, match="Unknown config variant 'fast'"):
    digits_lenet.get_config("fast")
  assert common.get_base_config().ran.recon_reduction == "sum"


def test_paper_variant_is_algorithm_1_as_published():
  """':paper' removes everything the shipped configs add to the game's end, for every task."""
  import glob
  import importlib

  base = common.get_base_config().ran
  fields = ("schedule", "lr_warmup_steps", "lr_floor", "ema_decay", "target_psnr")
  assert digits_lenet.get_config().ran.target_psnr > 0      # the shipped end: capped push
  for p in glob.glob(os.path.join(ROOT, "configs", "*.py")):
    name = os.path.basename(p)[:-3]
    if name in ("common", "__init__"):
      continue
    ran = importlib.import_module(f"configs.{name}").get_config("paper").ran
    assert {f: ran[f] for f in fields} == {f: base[f] for f in fields}, name


# ---------------------------------------------------------------- through train.py
# Few: each subprocess that reaches the trainer costs ~10 s on a 2-core machine.


def test_cli_bad_values_stop_before_the_data_loads(tmp_path):
  wd = tmp_path / "wd"
  r = run_train(["--config=configs/digits_lenet.py:smoke", f"--workdir={wd}",
                 "--config.ran.lam=1.7", "--config.model.conv_impl=cudnn",
                 "--config.model.widths=(3,)"])
  assert r.returncode == 2, r.stderr[-2000:]
  assert "error: Invalid config:\n" in r.stderr
  assert "- ran.lam=1.7: lambda must be a number in [0, 1]" in r.stderr
  assert "- model.conv_impl='cudnn': allowed values are ['auto', 'fast', 'xla']." in r.stderr
  assert "- model.widths=(3,): lenet5 takes two conv widths, got (3,)." in r.stderr
  assert "Traceback" not in r.stderr and "Dataset digits" not in r.stderr
  assert not os.path.exists(wd)  # the trainer creates the workdir after loading the data


def test_cli_unknown_fields_and_unparsable_values(tmp_path):
  # These fail while the flags are parsed, before JAX is imported: cheap subprocesses.
  base = ["--config=configs/digits_lenet.py:smoke", f"--workdir={tmp_path / 'wd'}"]
  r = run_train(base + ["--config.ran.lamda=0.3"])
  assert r.returncode == 2, r.stderr[-2000:]
  assert r.stderr.strip() == ("error: Invalid config:\n"
                              "  - ran.lamda=0.3: unknown field; nearest valid names: ['ran.lam'].")
  r = run_train(base + ["--config.nonexistent=1"])
  assert r.returncode == 2, r.stderr[-2000:]
  assert r.stderr.startswith("error: Invalid config:\n  - nonexistent=1: unknown field; no similar")
  r = run_train(base + ["--config.ran.k=abc"])
  assert r.returncode == 2, r.stderr[-2000:]
  assert r.stderr.startswith("error: flag --config.ran.k=abc: invalid literal for int()")


def test_cli_input_shape_that_does_not_fit(tmp_path):
  # 8x8 digits are too small for VGG-16's five poolings
  r = run_train(["--config=configs/digits_lenet.py:smoke", f"--workdir={tmp_path / 'wd'}",
                 "--config.model.encoder=vgg16", "--config.data.image_size=8"])
  assert r.returncode == 2, r.stderr[-2000:]
  assert "Encoder vgg16" in r.stderr and "too small" in r.stderr
