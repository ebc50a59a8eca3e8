"""`model.release_step`: the clean features rounded to a grid before the release noise, in
evaluation, the exported networks and the phone's LiteRT encoder; training sees them
unrounded."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ran_jax import config_lib, export, input_pipeline, parallel, stages
from ran_jax.models import build_models
from ran_jax.program import InputSpec, build_program

STEP = 0.25


def test_round_to_step_values_and_straight_through_gradient():
  z = jnp.array([-0.99, -0.13, 0.0, 0.124, 0.126, 0.6, 0.99])
  np.testing.assert_allclose(np.asarray(stages.round_to_step(z, STEP)),
                             [-1.0, -0.25, 0.0, 0.0, 0.25, 0.5, 1.0], atol=1e-7)
  assert stages.round_to_step(z, 0.0) is z                       # off: untouched
  g = jax.grad(lambda v: jnp.sum(stages.round_to_step(v, STEP) * jnp.arange(7.0)))(z)
  np.testing.assert_allclose(np.asarray(g), np.arange(7.0))        # the identity's gradient


def test_a_negative_step_is_refused():
  from configs import digits_lenet

  c = digits_lenet.get_config("smoke")
  c.model.release_step = -0.1
  with pytest.raises(config_lib.ConfigError, match="release_step"):
    config_lib.validate_config(c)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """An exported (untrained) noisy encoder with a 16-d bottleneck and the release step."""
  from configs import digits_lenet

  c = digits_lenet.get_config("smoke")
  c.model.widths, c.model.classifier_hidden, c.model.conv_impl = (4, 8), (16,), "xla"
  c.model.bottleneck_dim, c.model.feature_noise, c.model.release_step = 16, 0.1, STEP
  source = input_pipeline.load_dataset(c.data)
  program = build_program(c, parallel.make_mesh(), InputSpec.of(source), total_steps=6)
  state = program.create_state(0)
  wd = str(tmp_path_factory.mktemp("step") / "run")
  export.export_trained(wd, state, c, program.input_spec, source.name)
  x = np.asarray(source.test.get(np.arange(8))["image"], np.float32)
  return wd, x


def test_exported_encoder_releases_rounded_features_plus_noise(run):
  wd, x = run
  trained = export.load_trained(wd)
  assert trained.models.release_step == STEP
  z = np.asarray(trained.features(x))
  np.testing.assert_allclose(z / STEP, np.round(z / STEP), atol=1e-5)   # on the grid
  assert len(np.unique(np.round(z / STEP))) > 1                           # and not constant
  key = jax.random.PRNGKey(3)
  noise = trained.feature_noise * np.asarray(jax.random.normal(key, z.shape, jnp.float32))
  np.testing.assert_allclose(np.asarray(trained.encode(x, key)), z + noise, atol=1e-5)
  # the same parameters without the step give other (unrounded) features
  mc = trained.config.model.copy_and_resolve_references()
  mc.release_step = 0.0
  plain = build_models(mc, tuple(trained.meta["input_shape"]), trained.meta["num_classes"],
                       tuple(trained.meta["value_range"]))
  unrounded = np.asarray(stages.features(plain, trained.params["encoder"],
                                         trained.batch_stats["encoder"], x, False)[0])
  np.testing.assert_allclose(z, np.round(unrounded / STEP) * STEP, atol=1e-5)
  assert np.abs(z - unrounded).max() > 1e-3
  # training sees unrounded features (batch statistics there, so compared only to the grid)
  z_train, _ = stages.features(trained.models, trained.params["encoder"],
                               trained.batch_stats["encoder"], x, True)
  off_grid = np.abs(np.asarray(z_train) / STEP - np.round(np.asarray(z_train) / STEP))
  assert off_grid.max() > 1e-3


@pytest.mark.slow  # TensorFlow's conversion: about 10 s
def test_litert_encoder_rounds_too(run):
  """The phone's .tflite computes round(features / step) * step + sigma * eps, as JAX does."""
  from ran_jax.deploy import client, convert

  wd, x = run
  trained = export.load_trained(wd)
  enc = client.TFLiteEncoder.from_bytes(convert.convert_encoder(trained))
  eps = np.random.default_rng(1).normal(0, 1, (3, 16)).astype(np.float32)
  want = np.asarray(trained.features(x[:3])) + trained.feature_noise * eps
  np.testing.assert_allclose(enc(x[:3], eps), want, atol=1e-5)
