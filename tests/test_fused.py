"""The fused Algorithm-1 iteration equals the per-stage loop (program.build_program)."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import optax
import pytest

from configs import common
from ran_jax import parallel, stages
from ran_jax.models import build_encoder_spec
from ran_jax.models.modules import RANModels
from ran_jax.program import InputSpec, build_program


def _ran(fused: bool, k: int = 2):
  return ml_collections.ConfigDict({"k": k, "lam": 0.5, "l1": 1e-3, "l2": 1e-3, "l3": 1e-3,
                                     "recon_reduction": "sum", "fused": fused})


def _config(fused, conv_impl, **defences):
  c = common.get_base_config()
  c.model.widths = (4, 8)
  c.model.classifier_hidden = (16,)
  c.model.dropout = 0.1
  c.model.conv_impl = conv_impl
  c.ran.k = 2
  c.ran.fused = fused
  for key, value in defences.items():
    section, field = key.split("__")
    c[section][field] = value
  return c


DEFENDED = dict(model__bottleneck_dim=12, model__feature_noise=0.2, ran__extra_decoders=("mlp",),
                ran__reinit_every_steps=2, ran__compactness=0.1, ran__mlp_decoder_hidden=(32,))


@pytest.mark.parametrize("conv_impl,defences", [("fast", {}), ("xla", {}), ("fast", DEFENDED)])
def test_fused_iteration_equals_per_stage_loop(conv_impl, defences, monkeypatch):
  # Plain SGD (a schedule, so the stages' RNG sees an update count): its updates are the
  # gradients times the rate, so the paths agree to float rounding, far below one update
  # (0.05 x a gradient); Adam would turn rounding-level gradient differences into
  # lr-sized steps.
  monkeypatch.setattr(stages, "make_optimizers", lambda *_, **__: {
      s: optax.sgd(optax.constant_schedule(0.05)) for s in stages.STAGES})
  mesh = parallel.make_mesh()
  host = {"image": jax.random.uniform(jax.random.PRNGKey(1), (8, 28, 28, 1)),
          "label": jnp.arange(8, dtype=jnp.int32) % 10}
  batch = parallel.to_global(jax.device_get(host), mesh)
  results = []
  for fused in (True, False):
    program = build_program(_config(fused, conv_impl, **defences), mesh,
                            InputSpec((28, 28, 1), 10))
    state = program.create_state(0)
    for _ in range(2):
      state, metrics = program.iteration(state, batch)
    results.append((jax.device_get(state), jax.device_get(metrics)))
  (sf, mf), (sp, mp) = results
  assert int(sf.step) == int(sp.step) == 2
  chex.assert_trees_all_close(mf, mp, atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(sf.params, sp.params, atol=1e-5, rtol=1e-4)
  chex.assert_trees_all_close(sf.batch_stats, sp.batch_stats, atol=1e-5, rtol=1e-4)
  chex.assert_trees_all_close(sf.opt_state, sp.opt_state, atol=0, rtol=0)
  # Both moved: two iterations change every trained network by far more than the tolerance.
  start = program.create_state(0)
  for part in ("encoder", "classifier", "decoder"):
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), sf.params[part],
                         jax.device_get(start.params[part]))
    assert max(jax.tree.leaves(moved)) > 1e-3, part


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
