"""The fast conv path (conv_impl='fast') computes what Flax's convs compute.

Forward values and gradients of every building block and of whole encoders /
decoders are compared with the plain path (lax.conv_general_dilated,
nn.ConvTranspose + crop, nn.max_pool), in float32 at highest matmul precision.
"""

import chex
import flax.linen as nn
import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from ran_jax import stages
from ran_jax.models import build_encoder_spec, fast_conv, layer_shapes
from ran_jax.models.modules import Decoder, Encoder, RANModels, unpool
from ran_jax.models.spec import same_pad_lo

DN = ("NHWC", "HWIO", "NHWC")


@pytest.fixture(autouse=True)
def _highest_precision():
  jax.config.update("jax_default_matmul_precision", "highest")
  yield
  jax.config.update("jax_default_matmul_precision", None)


def _rand(seed, shape):
  return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)


def _assert_same_values_and_grads(f, g, a, b):
  """f(a, b) == g(a, b), and so are the gradients of sum(sin(.)); returns f(a, b).

  Each side is one jitted program computing its values and gradients: one compilation,
  where executing op by op compiles every operation on its own."""

  def values_and_grads(h):
    loss = lambda a, b: jnp.sum(jnp.sin(h(a, b)))  # noqa: E731
    return jax.jit(lambda a, b: (h(a, b), jax.grad(loss, (0, 1))(a, b)))(a, b)

  (yf, gf), (yg, gg) = values_and_grads(f), values_and_grads(g)
  chex.assert_trees_all_close(yf, yg, atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(gf, gg, atol=1e-4, rtol=1e-4)
  return yf


@pytest.mark.parametrize("xshape,kernel,strides,padding", [
    ((2, 9, 9, 3), (5, 5), (1, 1), "SAME"),
    ((2, 9, 9, 3), (5, 5), (1, 1), "VALID"),
    ((2, 10, 1, 4), (5, 1), (1, 1), "SAME"),   # HAR layout: 1-D kernel along T
    ((1, 23, 21, 3), (11, 11), (4, 4), "SAME"),  # AlexNet-224's strided first layer
    ((2, 7, 8, 2), (3, 3), (2, 2), "VALID"),
])
@pytest.mark.parametrize("method", ["toeplitz", "rows", "auto"])
def test_conv2d_matches_lax(xshape, kernel, strides, padding, method):
  x, w = _rand(0, xshape), _rand(1, kernel + (xshape[-1], 4))

  def f_fast(x, w):
    return fast_conv.conv2d(x, w, strides, padding, method=method)

  def f_xla(x, w):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=DN)

  _assert_same_values_and_grads(f_fast, f_xla, x, w)


@pytest.mark.parametrize("n,k,s,pad,c", [
    ((10, 10), (5, 5), (1, 1), "VALID", 3),
    ((14, 14), (5, 5), (1, 1), "SAME", 2),
    ((16, 1), (5, 1), (1, 1), "SAME", 2),
    ((23, 21), (11, 11), (4, 4), "SAME", 2),
    ((9, 8), (3, 3), (2, 2), "VALID", 2),
    ((9, 8), (4, 4), (3, 3), "SAME", 2),
])
def test_conv_transpose_cropped_matches_flax(n, k, s, pad, c):
  """Mirror of an encoder conv: Flax ConvTranspose(VALID) then the decoder's crop."""
  x_enc = jnp.zeros((1,) + n + (c,))
  z = lax.conv_general_dilated(x_enc, jnp.zeros(k + (c, 3)), s, pad, dimension_numbers=DN)
  z = _rand(0, (2,) + z.shape[1:3] + (3,))
  w = _rand(1, k + (3, c))
  lo = tuple(same_pad_lo(t, kk, ss) if pad == "SAME" else 0 for t, kk, ss in zip(n, k, s))

  def f_xla(z, w):
    y = lax.conv_transpose(z, w, s, "VALID", dimension_numbers=DN)
    y = y[:, lo[0]:lo[0] + n[0], lo[1]:lo[1] + n[1]]
    return jnp.pad(y, ((0, 0), (0, n[0] - y.shape[1]), (0, n[1] - y.shape[2]), (0, 0)))

  def f_fast(z, w):
    return fast_conv.conv_transpose_cropped(z, w, s, lo, n)

  y = _assert_same_values_and_grads(f_fast, f_xla, z, w)
  chex.assert_shape(y, (2,) + n + (c,))


@pytest.mark.parametrize("n,pool,k,lo,t", [
    ((5, 5), (2, 2), (5, 5), (0, 0), (14, 14)),   # LeNet: mirror of the VALID conv2
    ((14, 14), (2, 2), (5, 5), (2, 2), (28, 28)),  # LeNet: mirror of the SAME conv1
    ((32, 1), (2, 1), (5, 1), (2, 0), (64, 1)),    # HAR layout
    ((4, 4), (2, 2), (3, 3), (1, 1), (8, 8)),      # AlexNet / VGG 3x3
    ((3, 3), (3, 3), (5, 5), (1, 1), (7, 9)),      # 3x3 pooling, output cropped
])
def test_unpool_conv_transpose_equals_unpool_then_conv(n, pool, k, lo, t):
  """The decoder's un-pooling folded into the next transposed conv changes nothing."""
  z, w = _rand(0, (2,) + n + (3,)), _rand(1, k + (3, 2))
  up = (n[0] * pool[0], n[1] * pool[1])

  def f_ref(z, w):
    return fast_conv.conv_transpose_cropped(unpool(z, pool, up), w, (1, 1), lo, t, method="xla")

  def f_fold(z, w):
    return fast_conv.unpool_conv_transpose_cropped(z, w, pool, lo, t)

  y = _assert_same_values_and_grads(f_fold, f_ref, z, w)
  chex.assert_shape(y, (2,) + t + (2,))


def test_conv_method_choice():
  """Toeplitz on LeNet's layers, XLA on thin wide layers, row patches on wide 3x3 ones."""
  choose = fast_conv.choose_method
  assert choose((128, 32, 32, 1), (5, 5, 1, 6), (1, 1)) == "toeplitz"    # LeNet conv1
  assert choose((128, 14, 14, 6), (5, 5, 6, 16), (1, 1)) == "toeplitz"   # LeNet conv2
  assert choose((128, 36, 36, 3), (5, 5, 3, 64), (1, 1)) == "xla"        # AlexNet conv1
  assert choose((128, 10, 10, 192), (3, 3, 192, 384), (1, 1)) == "rows"  # AlexNet conv3
  with pytest.raises(ValueError, match="method"):
    fast_conv.conv2d(jnp.zeros((1, 4, 4, 1)), jnp.zeros((3, 3, 1, 1)), method="winograd")


@pytest.mark.parametrize("shape,window", [((2, 8, 8, 3), (2, 2)), ((2, 9, 7, 3), (2, 2)),
                                          ((2, 9, 1, 3), (2, 1))])
def test_max_pool_matches_flax_with_ties(shape, window):
  # Rounded values make ties common, as constant backgrounds do after ReLU: the
  # gradient must go to the first maximum of each window, like nn.max_pool's.
  x = jnp.round(_rand(0, shape))
  scale = jnp.arange(1.0, shape[-1] + 1.0)

  def loss(pool):
    return lambda x: jnp.sum(jnp.sin(pool(x)) * scale)

  fast = lambda x: fast_conv.max_pool(x, window, window)  # noqa: E731
  plain = lambda x: nn.max_pool(x, window, window, padding="VALID")  # noqa: E731
  np.testing.assert_array_equal(fast(x), plain(x))
  np.testing.assert_array_equal(jax.grad(loss(fast))(x), jax.grad(loss(plain))(x))


MODEL_CASES = [
    ("lenet5", (28, 28, 1), None),
    ("lenet5", (128, 1, 9), None),
    ("alexnet", (32, 32, 3), (4, 4, 4, 4, 4)),
    ("alexnet", (224, 224, 3), (2, 2, 2, 2, 2)),
    ("vgg16", (32, 32, 3), (2, 2, 2, 2, 2)),
]


@pytest.mark.parametrize("encoder,shape,widths", MODEL_CASES)
def test_encoder_decoder_fast_equals_xla(encoder, shape, widths):
  spec = build_encoder_spec(encoder, shape, widths)
  fast = RANModels(spec, shape, 10, (8,), conv_impl="fast")
  plain = RANModels(spec, shape, 10, (8,), conv_impl="xla")
  pf, sf = fast.init(jax.random.PRNGKey(0))
  px, sx = plain.init(jax.random.PRNGKey(0))
  # Same parameter tree, same initial values: checkpoints are interchangeable.
  chex.assert_trees_all_equal(pf, px)
  chex.assert_trees_all_equal(sf, sx)
  x = jax.random.uniform(jax.random.PRNGKey(1), (2,) + shape)
  x = x.at[:, : shape[0] // 3].set(0.0)  # a constant region: pooling ties

  def loss(params, models):
    z, _ = models.encoder.apply({"params": params["encoder"], "batch_stats": sx["encoder"]}, x,
                                train=True, mutable=["batch_stats"])
    xr, _ = models.decoder.apply({"params": params["decoder"], "batch_stats": sx["decoder"]}, z,
                                 train=True, mutable=["batch_stats"])
    return jnp.sum(jnp.square(xr - x)) + 1e-2 * jnp.sum(jnp.square(z)), (z, xr)

  vg = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  (lf, (zf, rf)), gf = vg(pf, fast)
  (lx, (zx, rx)), gx = vg(px, plain)
  chex.assert_shape(rf, x.shape)
  chex.assert_trees_all_close((lf, zf, rf), (lx, zx, rx), atol=1e-4, rtol=1e-4)
  # Gradients relative to each tree's scale (biases before batch-norm have ~0 gradient).
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(gx))
  chex.assert_trees_all_close(gf, gx, atol=2e-4 * scale, rtol=1e-3)


@pytest.mark.parametrize("encoder,shape", [
    ("lenet5", (28, 28, 1)), ("lenet5", (128, 1, 9)), ("alexnet", (32, 32, 3)),
    ("alexnet", (224, 224, 3)), ("vgg16", (32, 32, 3)), ("vgg16", (224, 224, 3))])
def test_fast_decoder_keeps_exact_shapes(encoder, shape):
  spec = build_encoder_spec(encoder, shape)
  feat = layer_shapes(spec, shape)[-1]
  for impl in ("fast", "xla"):
    enc, dec = Encoder(spec, conv_impl=impl), Decoder(spec, shape, conv_impl=impl)
    x = jax.ShapeDtypeStruct((2,) + shape, jnp.float32)
    z = jax.eval_shape(lambda x, enc=enc: enc.init_with_output(jax.random.PRNGKey(0), x, False)[0],
                       x)
    assert z.shape == (2,) + feat
    y = jax.eval_shape(lambda z, dec=dec: dec.init_with_output(jax.random.PRNGKey(0), z, False)[0],
                       z)
    assert y.shape == (2,) + shape, (impl, y.shape)


def test_fast_iteration_equals_xla_iteration():
  """One Algorithm-1 iteration (k=2, SGD) gives the same state on both paths."""
  spec = build_encoder_spec("lenet5", (28, 28, 1), (4, 8))
  # A schedule gives SGD the update count that the stages fold into their RNG.
  optimizers = {s: optax.sgd(optax.constant_schedule(0.05)) for s in stages.STAGES}
  ran = ml_collections.ConfigDict({"recon_reduction": "sum", "lam": 0.5})
  batch = {"image": jax.random.uniform(jax.random.PRNGKey(2), (8, 28, 28, 1)),
           "label": jnp.arange(8) % 10}
  out = []
  for impl in ("fast", "xla"):
    models = RANModels(spec, (28, 28, 1), 10, (16,), conv_impl=impl)
    bound = stages.bind_stages(models, optimizers, ran)
    state = stages.init_state(models, optimizers, jax.random.PRNGKey(0))
    out.append(jax.jit(lambda s, b, bound=bound: stages.ran_iteration(s, b, stages=bound, k=2))(
        state, batch))
  (sf, mf), (sx, mx) = out
  chex.assert_trees_all_close(mf, mx, atol=1e-4, rtol=1e-4)
  chex.assert_trees_all_close(sf.params, sx.params, atol=1e-5, rtol=1e-4)
  chex.assert_trees_all_close(sf.batch_stats, sx.batch_stats, atol=1e-5, rtol=1e-4)


def test_unknown_conv_impl_is_rejected():
  with pytest.raises(ValueError, match="conv_impl"):
    RANModels(build_encoder_spec("lenet5", (28, 28, 1)), (28, 28, 1), 10, (8,), conv_impl="cudnn")


def test_bfloat16_compute_keeps_float32_params():
  """model.dtype='bfloat16': bf16 compute on the fast path, f32 params and outputs."""
  spec = build_encoder_spec("lenet5", (28, 28, 1), (4, 8))
  m16 = RANModels(spec, (28, 28, 1), 10, (16,), dtype=jnp.bfloat16, conv_impl="fast")
  m32 = RANModels(spec, (28, 28, 1), 10, (16,), conv_impl="fast")
  params, stats = m16.init(jax.random.PRNGKey(0))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 28, 28, 1))

  def recon(models, p):
    z, _ = models.encoder.apply({"params": p["encoder"], "batch_stats": stats["encoder"]}, x,
                                train=True, mutable=["batch_stats"])
    xr, _ = models.decoder.apply({"params": p["decoder"], "batch_stats": stats["decoder"]}, z,
                                 train=True, mutable=["batch_stats"])
    return xr

  recon = jax.jit(recon, static_argnums=0)
  r16, r32 = recon(m16, params), recon(m32, params)
  assert r16.dtype == jnp.float32
  chex.assert_tree_all_finite(jax.jit(jax.grad(lambda p: jnp.sum(recon(m16, p))))(params))
  chex.assert_trees_all_close(r16, r32, atol=5e-2)
