"""The fast conv path inside a whole model: gradients equal the XLA path's.

Regression test: a max-pool backward that compared `x == max` recomputed in a
different fusion dropped ~10% of the encoder gradient inside jit (and differed
between device layouts), although each op passed in isolation.
"""

import chex
import jax
import jax.numpy as jnp

from ran_jax import parallel
from ran_jax.models import RANModels, build_encoder_spec


def _grads(impl, mesh=None):
  spec = build_encoder_spec("lenet5", (28, 28, 1))
  m = RANModels(spec, (28, 28, 1), 10, (16,), conv_impl=impl)
  p, s = jax.jit(m.init)(jax.random.PRNGKey(0))
  x = jax.random.uniform(jax.random.PRNGKey(1), (16, 28, 28, 1))

  def loss(pe, pd):
    z, _ = m.encoder.apply({"params": pe, "batch_stats": s["encoder"]}, x, train=True,
                           mutable=["batch_stats"])
    y, _ = m.decoder.apply({"params": pd, "batch_stats": s["decoder"]}, z, train=True,
                           mutable=["batch_stats"])
    return jnp.sum((y - x) ** 2)

  fn = jax.grad(loss, argnums=(0, 1))
  if mesh is None:
    return jax.jit(fn)(p["encoder"], p["decoder"])
  repl, dsh = parallel.replicated(mesh), parallel.data_sharding(mesh)
  x = jax.device_put(x, dsh)
  return jax.jit(fn, in_shardings=(repl, repl))(p["encoder"], p["decoder"])


def test_fast_model_gradients_match_xla_and_sharding():
  ref = _grads("xla")
  fast = _grads("fast")
  chex.assert_trees_all_close(fast, ref, rtol=1e-4, atol=1e-3)
  mesh = parallel.make_mesh(jax.devices()[:4])
  chex.assert_trees_all_close(_grads("fast", mesh), ref, rtol=1e-4, atol=1e-3)
