"""The fused Algorithm-1 iteration equals the per-stage loop (trainer.make_iteration)."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import pytest

from ran_jax import parallel, stages, trainer
from ran_jax.models import build_encoder_spec
from ran_jax.models.modules import RANModels


def _ran(fused: bool, k: int = 2):
  return ml_collections.ConfigDict({"k": k, "lam": 0.5, "l1": 1e-3, "l2": 1e-3, "l3": 1e-3,
                                     "recon_reduction": "sum", "fused": fused})


@pytest.mark.parametrize("conv_impl", ["fast", "xla"])
def test_fused_iteration_equals_per_stage_loop(conv_impl):
  mesh = parallel.make_mesh()
  spec = build_encoder_spec("lenet5", (28, 28, 1), (4, 8))
  models = RANModels(spec, (28, 28, 1), 10, (16,), dropout=0.1, conv_impl=conv_impl)
  optimizers = stages.make_optimizers(_ran(True))
  host = {"image": jax.random.uniform(jax.random.PRNGKey(1), (8, 28, 28, 1)),
          "label": jnp.arange(8, dtype=jnp.int32) % 10}
  batch = parallel.to_global(jax.device_get(host), mesh)
  results = []
  for fused in (True, False):
    iteration = trainer.make_iteration(models, optimizers, _ran(fused), mesh)
    state = trainer.create_state(models, optimizers, 0, mesh)
    for _ in range(2):
      state, metrics = iteration(state, batch)
    results.append((jax.device_get(state), jax.device_get(metrics)))
  (sf, mf), (sp, mp) = results
  assert int(sf.step) == int(sp.step) == 2
  chex.assert_trees_all_close(mf, mp, atol=1e-5, rtol=1e-5)
  # Adam turns float-noise gradients (conv biases before batch-norm) into lr-sized
  # steps, so parameters are compared to a few learning rates at most.
  chex.assert_trees_all_close(sf.params, sp.params, atol=5e-3, rtol=0)
  chex.assert_trees_all_close(sf.batch_stats, sp.batch_stats, atol=2e-3, rtol=1e-3)
  chex.assert_trees_all_close(sf.opt_state, sp.opt_state, atol=1e-3, rtol=1e-3)


def test_fused_iteration_compiles_once():
  spec = build_encoder_spec("lenet5", (28, 28, 1), (4, 8))
  models = RANModels(spec, (28, 28, 1), 10, (16,))
  optimizers = stages.make_optimizers(_ran(True))
  bound = stages.bind_stages(models, optimizers, _ran(True))
  fn = chex.assert_max_traces(lambda s, b: stages.ran_iteration(s, b, stages=bound, k=1), n=1)
  step = jax.jit(fn, donate_argnums=0)
  state = stages.init_state(models, optimizers, jax.random.PRNGKey(0))
  batch = {"image": jnp.zeros((4, 28, 28, 1)), "label": jnp.zeros((4,), jnp.int32)}
  for _ in range(3):
    state, _ = step(state, batch)
  assert int(state.step) == 3
