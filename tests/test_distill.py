"""Distillation from a trained teacher (ran.distill_*): the loss, its wiring into the two
stages that train the classifier, the teacher's logits in the training batches, bad input."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ran_jax import losses, stages
from ran_jax.config_lib import ConfigError, validate_config
from tests.test_defences import _setup


def _np_kl(teacher, student, t):
  def log_softmax(v):
    v = v / t
    v = v - v.max(-1, keepdims=True)
    return v - np.log(np.exp(v).sum(-1, keepdims=True))

  p = np.exp(log_softmax(teacher))
  return float(np.mean(np.sum(p * (log_softmax(teacher) - log_softmax(student)), -1)))


def test_task_loss_known_answers():
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(8, 5)), rng.normal(size=(8, 5))
  y = np.arange(8) % 5
  ce = float(losses.cross_entropy(jnp.asarray(s), jnp.asarray(y)))
  assert float(losses.task_loss(jnp.asarray(s), jnp.asarray(y))) == ce
  assert float(losses.task_loss(jnp.asarray(s), jnp.asarray(y), jnp.asarray(t), 0.0, 2.0)) == ce
  # identical predictions: nothing to distil
  assert float(losses.task_loss(jnp.asarray(s), jnp.asarray(y), jnp.asarray(s), 1.0, 3.0)) == (
      pytest.approx(0.0, abs=1e-6))
  for w, temp in ((1.0, 1.0), (0.3, 2.0)):
    want = (1 - w) * ce + w * temp ** 2 * _np_kl(t, s, temp)
    got = float(losses.task_loss(jnp.asarray(s), jnp.asarray(y), jnp.asarray(t), w, temp))
    assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("step", ["disc", "adv"])
def test_both_classifier_stages_minimise_the_distilled_loss(step):
  """With no release noise and no dropout the stage's loss is a function of the batch alone:
  a teacher equal to the classifier's own logits leaves only (1 - w) CE; a uniform teacher
  adds w T^2 KL(uniform || classifier), as computed here independently. Without a teacher in
  the batch the loss is the plain one."""
  w, temp = 0.75, 2.0
  c, models, opts, state, b = _setup(ran__lam=1.0, ran__distill_weight=w,
                                     ran__distill_temperature=temp, ran__distill_from="x")
  fns = stages.bind_stages(models, opts, c.ran)
  fn = jax.jit(getattr(fns, step))
  z, _ = stages.features(models, state.params["encoder"], state.batch_stats["encoder"],
                         b["image"], True)
  own = stages.classify(models, state.params["classifier"], z, True)
  ce = float(losses.cross_entropy(own, b["label"]))
  key = f"{step}/loss"
  plain = float(fn(state, b)[1][key])
  assert plain == pytest.approx(ce, rel=1e-5)
  same = float(fn(state, {**b, "teacher": own})[1][key])
  assert same == pytest.approx((1 - w) * ce, rel=1e-5)
  uniform = float(fn(state, {**b, "teacher": jnp.zeros_like(own)})[1][key])
  want = (1 - w) * ce + w * temp ** 2 * _np_kl(np.zeros(own.shape), np.asarray(own), temp)
  assert uniform == pytest.approx(want, rel=1e-5)


def test_config_needs_a_teacher_and_a_weight_in_range():
  from configs import common

  c = common.get_base_config()
  c.ran.distill_weight = 0.5
  with pytest.raises(ConfigError, match="ran.distill_weight=0.5: distillation needs a teacher"):
    validate_config(c)
  c.ran.distill_from = "runs/dnn"
  validate_config(c)
  c.ran.distill_weight = 1.5
  with pytest.raises(ConfigError, match="ran.distill_weight"):
    validate_config(c)
  c.ran.distill_weight, c.ran.distill_temperature = 0.5, 0.0
  with pytest.raises(ConfigError, match="ran.distill_temperature"):
    validate_config(c)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
  """A finished smoke run (the DNN: lambda 1, no defences) to distil from."""
  from ran_jax import configs, trainer

  cfg = configs.get_config("digits_lenet:smoke")
  cfg.ran.lam, cfg.export_deployment = 1.0, False
  wd = str(tmp_path_factory.mktemp("teacher") / "dnn")
  trainer.train_and_evaluate(cfg, wd)
  return wd


def test_a_run_distils_from_a_finished_run(teacher_run, tmp_path):
  """The teacher's logits ride in every training batch, equal to the teacher's classifier on
  its clean features; the student trains; a workdir without a finished run is refused by
  name before anything is written."""
  from ran_jax import configs, export, input_pipeline, trainer

  teacher_dir = teacher_run
  cfg = configs.get_config("digits_lenet:smoke")
  cfg.export_deployment = False
  cfg.ran.distill_weight, cfg.ran.distill_from = 0.5, teacher_dir
  source = trainer.with_teacher(input_pipeline.load_dataset(cfg.data), cfg.ran)
  idx = np.array([3, 0, 7])
  got = source.train.get(idx)
  teacher = export.load_trained(teacher_dir)
  want = np.asarray(teacher.classify(teacher.features(got["image"])))
  np.testing.assert_allclose(got["teacher"], want, rtol=1e-5, atol=1e-5)
  assert set(got) == {"image", "label", "teacher"}

  student = str(tmp_path / "student")
  final = trainer.train_and_evaluate(cfg, student)
  assert np.isfinite(final["accuracy"])
  with open(os.path.join(student, "config.json")) as f:
    assert json.load(f)["ran"]["distill_from"] == teacher_dir

  cfg.ran.distill_from = str(tmp_path / "nothing")
  with pytest.raises(ConfigError, match="ran.distill_from=.*no finished run"):
    trainer.train_and_evaluate(cfg, str(tmp_path / "never"))
  assert not os.path.exists(tmp_path / "never")
