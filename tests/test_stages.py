"""The three Algorithm-1 stages: objectives, frozen parts, compile-once, determinism."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ran_jax import losses, parallel, stages
from tests.helpers import tiny_setup


def _eval_objectives(models, state, batch, lam, red="sum"):
  """CE, recon and O_a of `state` on `batch`, train-mode forward, nothing updated."""
  z, _ = stages.encode(models, state.params["encoder"], state.batch_stats["encoder"],
                       batch["image"], True)
  logits = stages.classify(models, state.params["classifier"], z, False)
  x_rec, _ = stages.decode(models, state.params["decoder"], state.batch_stats["decoder"], z, True)
  ce = losses.cross_entropy(logits, batch["label"])
  rec = losses.recon_error(batch["image"], x_rec, red)
  return float(ce), float(rec), float(losses.adversarial_objective(ce, rec, lam))


def _sub(tree, keys):
  return {k: tree[k] for k in keys}


@pytest.fixture(scope="module")
def setup():
  return tiny_setup(lam=0.3, lr=3e-3)


def test_discriminative_lowers_ce_and_freezes_decoder(setup):
  models, opts, ran, state, batch = setup
  step = jax.jit(stages.bind_stages(models, opts, ran).disc)
  ce0, _, _ = _eval_objectives(models, state, batch, ran.lam)
  s = state
  for _ in range(5):
    s, m = step(s, batch)
  ce1, _, _ = _eval_objectives(models, s, batch, ran.lam)
  assert ce1 < ce0 * 0.8, (ce0, ce1)
  chex.assert_trees_all_equal(s.params["decoder"], state.params["decoder"])
  chex.assert_trees_all_equal(s.batch_stats["decoder"], state.batch_stats["decoder"])
  chex.assert_trees_all_equal(_sub(s.opt_state, ["gen", "adv"]),
                              _sub(state.opt_state, ["gen", "adv"]))
  assert int(s.step) == 0  # only the adversarial stage ends an iteration
  assert set(m) == {"disc/loss", "disc/ce", "disc/accuracy"}
  chex.assert_tree_all_finite(m)


def test_generative_lowers_mse_and_freezes_encoder_classifier(setup):
  models, opts, ran, state, batch = setup
  step = jax.jit(stages.bind_stages(models, opts, ran).gen)
  _, r0, _ = _eval_objectives(models, state, batch, ran.lam)
  s = state
  for _ in range(5):
    s, m = step(s, batch)
  _, r1, _ = _eval_objectives(models, s, batch, ran.lam)
  assert r1 < r0 * 0.9, (r0, r1)
  chex.assert_trees_all_equal(_sub(s.params, ["encoder", "classifier"]),
                              _sub(state.params, ["encoder", "classifier"]))
  chex.assert_trees_all_equal(s.batch_stats["encoder"], state.batch_stats["encoder"])
  chex.assert_trees_all_equal(_sub(s.opt_state, ["disc", "adv"]),
                              _sub(state.opt_state, ["disc", "adv"]))
  assert set(m) == {"gen/loss", "gen/recon_sse"}


def test_adversarial_lowers_its_objective_and_freezes_decoder(setup):
  models, opts, ran, state, batch = setup
  step = jax.jit(stages.bind_stages(models, opts, ran).adv)
  _, _, oa0 = _eval_objectives(models, state, batch, ran.lam)
  s = state
  for _ in range(5):
    s, m = step(s, batch)
  _, _, oa1 = _eval_objectives(models, s, batch, ran.lam)
  assert oa1 < oa0, (oa0, oa1)
  chex.assert_trees_all_equal(s.params["decoder"], state.params["decoder"])
  chex.assert_trees_all_equal(s.batch_stats["decoder"], state.batch_stats["decoder"])
  chex.assert_trees_all_equal(_sub(s.opt_state, ["disc", "gen"]),
                              _sub(state.opt_state, ["disc", "gen"]))
  assert int(s.step) == 5
  np.testing.assert_allclose(
      float(m["adv/loss"]),
      ran.lam * float(m["adv/ce"]) - (1 - ran.lam) * float(m["adv/recon_sse"]),
      rtol=1e-5)


def test_adversarial_raises_reconstruction_error_when_lambda_small():
  models, opts, ran, state, batch = tiny_setup(lam=0.05, lr=1e-2)
  fns = stages.bind_stages(models, opts, ran)
  gen, adv = jax.jit(fns.gen), jax.jit(fns.adv)
  s = state
  for _ in range(10):  # a decoder that has learned something
    s, m_gen = gen(s, batch)
  _, r_gen, _ = _eval_objectives(models, s, batch, ran.lam)
  for _ in range(15):
    s, _ = adv(s, batch)
  _, r_adv, _ = _eval_objectives(models, s, batch, ran.lam)
  assert r_adv > r_gen * 1.1, (r_gen, r_adv)


def test_recon_reduction_conventions():
  x = jnp.zeros((2, 4, 4, 1))
  y = jnp.ones((2, 4, 4, 1)) * 0.5
  assert float(losses.recon_error(x, y, "sum")) == pytest.approx(16 * 0.25)
  assert float(losses.recon_error(x, y, "mean")) == pytest.approx(0.25)


def test_each_stage_compiles_once():
  models, opts, ran, state, batch = tiny_setup(k=2)
  fns = stages.bind_stages(models, opts, ran)

  def disc(s, b):
    return fns.disc(s, b)

  def gen(s, b):
    return fns.gen(s, b)

  def adv(s, b):
    return fns.adv(s, b)

  chex.clear_trace_counter()
  traced = stages.StageFns(*(jax.jit(chex.assert_max_traces(f, n=1)) for f in (disc, gen, adv)))
  s = state
  for _ in range(3):
    s, _ = stages.ran_iteration(s, batch, stages=traced, k=2)
  assert int(s.step) == 3
  # the check can fail: a new batch shape forces a second trace
  half = jax.tree.map(lambda a: a[:4], batch)
  with pytest.raises(AssertionError, match="traced"):
    traced.disc(s, half)
  chex.clear_trace_counter()


def test_same_seed_same_result_and_other_seed_differs():
  def run(seed):
    models, opts, ran, state, batch = tiny_setup(seed=seed)
    fns = stages.bind_stages(models, opts, ran)
    it = jax.jit(functools.partial(stages.ran_iteration, stages=fns, k=2))
    for _ in range(2):
      state, _ = it(state, batch)
    return state.params

  a, b, c = run(1), run(1), run(2)
  chex.assert_trees_all_equal(a, b)
  assert not np.allclose(a["encoder"]["conv1"]["kernel"], c["encoder"]["conv1"]["kernel"])


def test_sharded_iteration_matches_single_device():
  """The fused iteration over a 4-device mesh equals the unsharded one."""
  assert jax.device_count() >= 4, "conftest sets 4 fake CPU devices"
  models, opts, ran, state, batch = tiny_setup(k=2, batch=8)
  fn = functools.partial(stages.ran_iteration, stages=stages.bind_stages(models, opts, ran), k=2)
  ref_state, ref_m = jax.jit(fn)(state, batch)

  mesh = parallel.make_mesh(jax.devices()[:4])
  repl, dsh = parallel.replicated(mesh), parallel.data_sharding(mesh)
  sharded = jax.jit(fn, in_shardings=(repl, dsh), out_shardings=(repl, repl))
  s = jax.device_put(state, repl)
  b = jax.device_put(batch, dsh)
  assert len(b["image"].sharding.device_set) == 4
  out_state, out_m = sharded(s, b)
  # Adam normalises updates, so float reassociation in the all-reduce shows up
  # at the 1e-5 level on parameters whose gradients are near zero.
  chex.assert_trees_all_close(out_state.params, ref_state.params, atol=1e-4, rtol=1e-3)
  chex.assert_trees_all_close(out_m, ref_m, atol=1e-4, rtol=1e-4)


def test_train_state_is_a_pytree():
  models, opts, ran, state, batch = tiny_setup()
  leaves, treedef = jax.tree.flatten(state)
  again = jax.tree.unflatten(treedef, leaves)
  assert dataclasses.is_dataclass(again) and isinstance(again, stages.TrainState)
