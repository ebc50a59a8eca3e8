"""Learning-rate schedules and weight averaging (ran.schedule, ran.ema_decay)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from ran_jax import stages
from ran_jax.models import build_models


def _config(**ran):
  c = common.get_base_config()
  c.model.widths = (4, 8)
  c.model.classifier_hidden = (16,)
  c.model.conv_impl = "xla"
  c.ran.k = 2
  for key, value in ran.items():
    c.ran[key] = value
  return c


def _setup(total_steps=10, **ran):
  c = _config(**ran)
  models = build_models(c.model, (28, 28, 1), 10, (0.0, 1.0), c.ran)
  opts = stages.make_optimizers(c.ran, total_steps)
  bound = stages.bind_stages(models, opts, c.ran)

  def init(r):
    s = stages.init_state(models, opts, r)
    return stages.init_ema(s) if bound.ema is not None else s

  state = jax.jit(init)(jax.random.PRNGKey(0))
  step = jax.jit(lambda s, b: stages.ran_iteration(s, b, stages=bound, k=c.ran.k))
  return state, step


@pytest.fixture(scope="module")
def runs():
  """Three iterations each of: constant rates, a cosine schedule, constant + EMA."""
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.uniform(0, 1, (8, 28, 28, 1)), jnp.float32),
           "label": jnp.asarray(np.arange(8) % 10, jnp.int32)}
  out = {}
  for name, ran in [("constant", {}), ("cosine", dict(schedule="cosine", lr_floor=0.0)),
                    ("ema", dict(ema_decay=0.9))]:
    state, step = _setup(total_steps=3, k=1, **ran)
    states = [state]
    for _ in range(3):
      states.append(step(states[-1], batch)[0])
    out[name] = states
  return out


@pytest.mark.parametrize("kind", ["cosine", "step"])
def test_schedules_reach_the_floor_at_the_last_step_of_each_stage(kind):
  c = _config(schedule=kind, lr_floor=0.04, lr_warmup_steps=2, l1=1e-3, l3=2e-4)
  total = 20
  disc = stages.learning_rate(c.ran, "disc", total)
  adv = stages.learning_rate(c.ran, "adv", total)
  # disc updates k=2 times per iteration, adv once: both end at the floor on the last one.
  assert float(disc(0)) == 0.0 and float(adv(0)) == 0.0          # warm-up starts at 0
  np.testing.assert_allclose(float(disc(2 * 2)), 1e-3, rtol=1e-6)  # peak after warm-up
  np.testing.assert_allclose(float(disc(2 * total)), 0.04 * 1e-3, rtol=1e-5)
  np.testing.assert_allclose(float(adv(total)), 0.04 * 2e-4, rtol=1e-5)
  mid = float(adv(total // 2 + 1))
  assert 0.04 * 2e-4 < mid < 2e-4


def test_constant_schedule_is_a_float_and_others_need_the_step_count():
  assert stages.learning_rate(_config().ran, "gen") == 1e-3
  with pytest.raises(ValueError, match="number of training steps"):
    stages.make_optimizers(_config(schedule="cosine").ran)


def test_schedule_lowers_the_step_size_and_keeps_the_rng_stream(runs):
  s0, s_const, s_cos = runs["constant"][0], runs["constant"][-1], runs["cosine"][-1]
  # The stage rng reads Adam's own count, which the schedule's second count leaves alone.
  assert int(optax.tree_utils.tree_get_all_with_path(s_cos.opt_state["disc"], "count")[0][1]) == 3
  chex.assert_trees_all_equal(s_cos.rng, s_const.rng)

  def moved(s):
    return float(optax.tree_utils.tree_norm(
        jax.tree.map(jnp.subtract, s.params["encoder"], s0.params["encoder"])))

  assert 0 < moved(s_cos) < moved(s_const)


def test_ema_tracks_the_weights_and_leaves_them_alone(runs):
  states, plain = runs["ema"], runs["constant"]
  chex.assert_trees_all_equal(states[0].ema["params"]["encoder"], states[0].params["encoder"])
  # The raw weights are exactly those of a run without averaging.
  chex.assert_trees_all_equal(states[-1].params, plain[-1].params)
  chex.assert_trees_all_equal(states[-1].opt_state, plain[-1].opt_state)
  assert not plain[-1].ema
  # Step 1: the decay is min(0.9, 2/11), so the average moves most of the way at once.
  d = 2.0 / 11.0
  want = jax.tree.map(lambda e, c: d * e + (1 - d) * c, states[0].params["classifier"],
                      states[1].params["classifier"])
  chex.assert_trees_all_close(states[1].ema["params"]["classifier"], want, atol=1e-6)
  s = states[-1]
  lag = optax.tree_utils.tree_norm(
      jax.tree.map(jnp.subtract, s.params["classifier"], s.ema["params"]["classifier"]))
  assert float(lag) > 0
  view = stages.eval_view(s)
  chex.assert_trees_all_equal(view.params["encoder"], s.ema["params"]["encoder"])
  chex.assert_trees_all_equal(view.batch_stats["encoder"], s.ema["batch_stats"]["encoder"])
  chex.assert_trees_all_equal(view.params["decoder"], s.params["decoder"])
  assert stages.eval_view(plain[-1]) is plain[-1]


def test_shipped_configs_end_stably_and_paper_variant_is_algorithm_1():
  from configs import digits_lenet, har_lenet_private, mnist_lenet_private

  for mod in (digits_lenet, mnist_lenet_private, har_lenet_private):
    c = mod.get_config()
    assert c.ran.schedule == "cosine" and c.ran.ema_decay > 0
    p = mod.get_config("paper,smoke")
    assert p.ran.schedule == "constant" and p.ran.ema_decay == 0 and p.max_steps == 6
  with pytest.raises(ValueError, match="Unknown config variant 'papr'"):
    digits_lenet.get_config("papr")
