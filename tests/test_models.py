"""Encoder / decoder / classifier shapes and the mirrored decoder."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ran_jax.models import (ConvSpec, RANModels, ShapeError, build_encoder_spec, feature_shape,
                            layer_shapes)

CASES = [
    ("lenet5", (28, 28, 1), None),
    ("lenet5", (32, 1, 9), None),          # HAR-style [T, 1, channels]
    ("lenet5", (32, 32, 1), None),         # spectrogram-style
    ("alexnet", (32, 32, 3), (8, 8, 8, 8, 8)),
    ("alexnet", (129, 131, 3), (4, 4, 4, 4, 4)),  # ImageNet-style strided first conv, odd sizes
    ("vgg16", (32, 32, 3), (4, 4, 4, 4, 4)),
    ("vgg16", (37, 45, 3), (4, 4, 4, 4, 4)),      # non-divisible sizes
]


@pytest.mark.parametrize("encoder,shape,widths", CASES)
def test_shapes_and_range(encoder, shape, widths):
  spec = build_encoder_spec(encoder, shape, widths)
  m = RANModels(spec, shape, 7, (12, 9), value_range=(-2.0, 3.0))
  params, stats = jax.jit(m.init)(jax.random.PRNGKey(0))
  x = jax.random.uniform(jax.random.PRNGKey(1), (3,) + shape, minval=-2.0, maxval=3.0)

  @jax.jit
  def forward(params, stats, x):
    z = m.encoder.apply({"params": params["encoder"], "batch_stats": stats["encoder"]}, x,
                        train=False)
    logits = m.classifier.apply({"params": params["classifier"]}, z, train=False)
    y = m.decoder.apply({"params": params["decoder"], "batch_stats": stats["decoder"]}, z,
                        train=False)
    return z, logits, y

  z, logits, y = forward(params, stats, x)
  chex.assert_shape(z, (3,) + feature_shape(spec, shape))
  chex.assert_shape(logits, (3, 7))
  chex.assert_shape(y, (3,) + shape)
  chex.assert_tree_all_finite((z, logits, y))
  assert float(y.min()) >= -2.0 and float(y.max()) <= 3.0


@pytest.mark.parametrize("encoder,shape,widths", CASES[:4])
def test_decoder_mirrors_encoder_layer_by_layer(encoder, shape, widths):
  spec = build_encoder_spec(encoder, shape, widths)
  m = RANModels(spec, shape, 3, (8,))
  params, stats = jax.eval_shape(m.init, jax.random.PRNGKey(0))
  convs = [ly for ly in spec if isinstance(ly, ConvSpec)]
  shapes = layer_shapes(spec, shape)
  in_channels = {ly.name: shapes[i][2] for i, ly in enumerate(spec)}
  for layer in convs:
    ek = params["encoder"][layer.name]["kernel"]
    dk = params["decoder"]["de" + layer.name]["kernel"]
    # the transposed conv maps the layer's output channels back to its input channels
    assert ek.shape[:2] == dk.shape[:2] == layer.kernel
    assert dk.shape[2] == layer.features and dk.shape[3] == in_channels[layer.name]
  # hidden decoder layers carry batch-norm, the output layer does not
  assert set(stats["decoder"]) == {f"de{ly.name}_bn" for ly in convs[1:]}
  assert set(stats["encoder"]) == {f"{ly.name}_bn" for ly in convs}


def test_bad_shapes_are_named():
  with pytest.raises(ShapeError, match="too small"):
    build_encoder_spec("vgg16", (16, 16, 3))
  with pytest.raises(ShapeError, match=r"\[H, W, C\]"):
    build_encoder_spec("lenet5", (28, 28))
  with pytest.raises(ValueError, match="Unknown encoder 'resnet'"):
    build_encoder_spec("resnet", (28, 28, 1))


def test_batchnorm_train_vs_eval():
  spec = build_encoder_spec("lenet5", (28, 28, 1))
  m = RANModels(spec, (28, 28, 1), 10, (8,))
  params, stats = m.init(jax.random.PRNGKey(0))
  x = jax.random.uniform(jax.random.PRNGKey(1), (16, 28, 28, 1)) * 5 + 3
  v = {"params": params["encoder"], "batch_stats": stats["encoder"]}
  z_train, upd = m.encoder.apply(v, x, train=True, mutable=["batch_stats"])
  z_eval = m.encoder.apply(v, x, train=False)
  # train mode normalises with batch statistics and moves the running averages
  assert not np.allclose(z_train, z_eval)
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), upd["batch_stats"],
                       stats["encoder"])
  assert max(jax.tree.leaves(moved)) > 0
