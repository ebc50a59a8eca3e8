"""Known answers for the arithmetic of ran_jax/stages.py that the behavioural tests
(tests/test_stages.py: "the loss went down", "the frozen part stayed") cannot pin down:
the learning-rate schedules step by step, the moving average's formula, the
standardisation the attribute heads read, the test pass's sums over a padded batch, the
privacy target's error, the warm-up's first step, the decoders' re-initialisation step and
the distillation settings reaching the stages. Each expected value is computed here by
hand from the documented formula, not by the code under test.
"""

import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ran_jax import losses, stages
from tests.helpers import tiny_setup


def _ran(**kw):
  return ml_collections.ConfigDict(dict(l1=0.1, l2=0.2, l3=0.3, k=2, **kw))


def _values(schedule, n):
  return np.array([float(schedule(t)) for t in range(n)])


# ---------------------------------------------------------------- learning-rate schedules


def test_cosine_schedule_with_warm_up_step_by_step():
  # disc: k=2 updates per iteration, 10 iterations -> 20 updates, warm-up 3 iterations -> 6
  sched = stages.learning_rate(_ran(schedule="cosine", lr_warmup_steps=3, lr_floor=0.1),
                               "disc", 10)
  peak, warm, decay, alpha = 0.1, 6, 14, 0.1
  want = [peak * t / warm if t < warm else
          peak * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * min(t - warm, decay) / decay))
                  + alpha) for t in range(24)]
  np.testing.assert_allclose(_values(sched, 24), want, rtol=1e-5, atol=1e-7)


def test_cosine_schedule_without_warm_up_or_floor_fields_decays_to_zero():
  # adv: one update per iteration; no lr_warmup_steps / lr_floor in the config: 0 and 0
  sched = stages.learning_rate(_ran(schedule="cosine"), "adv", 8)
  want = [0.3 * 0.5 * (1 + math.cos(math.pi * min(t, 8) / 8)) for t in range(10)]
  np.testing.assert_allclose(_values(sched, 10), want, rtol=1e-5, atol=1e-7)
  assert float(sched(8)) == pytest.approx(0.0, abs=1e-7)


def test_step_schedule_halves_twice_at_half_and_three_quarters():
  # gen: k=2 -> 20 updates, warm-up 3 -> 6, 14 left: sqrt(floor) at 7 and again at 11
  sched = stages.learning_rate(_ran(schedule="step", lr_warmup_steps=3, lr_floor=0.25),
                               "gen", 10)
  peak, warm = 0.2, 6
  want = [peak * t / warm for t in range(warm)] + [peak] * 7 + [peak * 0.5] * 4 + \
      [peak * 0.25] * 5
  np.testing.assert_allclose(_values(sched, 22), want, rtol=1e-5, atol=1e-7)


def test_step_schedule_without_warm_up():
  sched = stages.learning_rate(_ran(schedule="step", lr_floor=0.04), "adv", 8)
  # 8 updates: x0.2 from update 4, x0.04 from update 3*8//4 + 1 = 7
  want = [0.3] * 4 + [0.06] * 3 + [0.012] * 3
  np.testing.assert_allclose(_values(sched, 10), want, rtol=1e-5)


@pytest.mark.parametrize("total, want", [
    (7, [0.3] * 3 + [0.15] * 3 + [0.075] * 2),     # 7 updates: x0.5 from 3 = 7 // 2, from 6
    (2, [0.3, 0.15, 0.075]),                        # at least one update before each step
    (1, [0.3, 0.15, 0.075])])
def test_step_schedule_boundaries_of_short_and_odd_trainings(total, want):
  sched = stages.learning_rate(_ran(schedule="step", lr_floor=0.25), "adv", total)
  np.testing.assert_allclose(_values(sched, len(want)), want, rtol=1e-5)


def test_a_warm_up_of_one_update():
  sched = stages.learning_rate(_ran(schedule="cosine", lr_warmup_steps=1, lr_floor=0.5),
                               "adv", 5)
  want = [0.0] + [0.3 * (0.5 * 0.5 * (1 + math.cos(math.pi * (t - 1) / 4)) + 0.5)
                  for t in range(1, 6)]
  np.testing.assert_allclose(_values(sched, 6), want, rtol=1e-5, atol=1e-7)


def test_a_warm_up_longer_than_training_is_cut_one_update_short_of_the_end():
  # 5 updates, warm-up asked for 100: the ramp takes 4, the 5th is the peak
  sched = stages.learning_rate(_ran(schedule="cosine", lr_warmup_steps=100, lr_floor=0.5),
                               "adv", 5)
  np.testing.assert_allclose(_values(sched, 5), [0.0, 0.075, 0.15, 0.225, 0.3], rtol=1e-5)


def test_one_training_step_is_enough_for_a_schedule():
  sched = stages.learning_rate(_ran(schedule="cosine", lr_floor=0.5), "adv", 1)
  assert float(sched(0)) == pytest.approx(0.3)
  assert float(sched(1)) == pytest.approx(0.15)


# ---------------------------------------------------------------- the moving average


@pytest.fixture(scope="module")
def setup():
  return tiny_setup(lam=0.3, lr=3e-3, batch=6)


@pytest.mark.parametrize("step, decay, d", [(0, 0.99, 0.1), (5, 0.99, 6 / 15),
                                            (1000, 0.9, 0.9)])
def test_moving_average_formula(setup, step, decay, d):
  """ema <- d ema + (1 - d) current, d = min(decay, (1 + step) / (10 + step))."""
  _, _, _, state, _ = setup
  s = stages.init_ema(state)
  moved = jax.tree.map(lambda p: p + 1.0, s.params)     # the weights move on by 1
  s = dataclasses.replace(s, params=moved, step=jnp.asarray(step, s.step.dtype))
  out = stages.update_ema(s, decay=decay)
  want = jax.tree.map(lambda e: e + (1.0 - d), state.params)   # d e + (1-d)(e+1)
  chex.assert_trees_all_close(out.ema["params"]["encoder"], want["encoder"], rtol=1e-5,
                              atol=1e-5)
  chex.assert_trees_all_close(out.ema["params"]["classifier"], want["classifier"], rtol=1e-5,
                              atol=1e-5)
  chex.assert_trees_all_equal(out.params, moved)        # the weights themselves untouched


# ---------------------------------------------------------------- standardisation


def test_standardise_each_flattened_feature_over_the_batch():
  rng = np.random.default_rng(0)
  z = rng.normal(3.0, 0.01, (7, 3, 2)).astype(np.float32)   # small spread: eps shows
  flat = z.reshape(7, 6).astype(np.float64)
  want = (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-6)
  out = np.asarray(stages.standardise(jnp.asarray(z)))
  assert out.shape == (7, 6)
  np.testing.assert_allclose(out, want, rtol=2e-3, atol=2e-3)
  np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-4)


# ---------------------------------------------------------------- the test pass


def test_test_pass_sums_only_the_real_examples_of_a_padded_batch(setup):
  """The padded rows (mask 0, garbage values) add nothing, and the real rows are scored
  in eval mode: the same sums as the real rows alone, whatever the padding holds."""
  models, _, _, state, batch = setup
  real = {"image": batch["image"][:4], "label": batch["label"][:4],
          "mask": jnp.ones((4,), jnp.float32)}
  garbage = jnp.full((2,) + batch["image"].shape[1:], 50.0)
  padded = {"image": jnp.concatenate([real["image"], garbage]),
            "label": jnp.concatenate([real["label"], jnp.array([3, 7], jnp.int32)]),
            "mask": jnp.array([1, 1, 1, 1, 0, 0], jnp.float32)}
  key = jax.random.PRNGKey(1)
  a = jax.jit(lambda s, b, k: stages.test_step(s, b, k, models=models))(state, real, key)
  b = jax.jit(lambda s, b, k: stages.test_step(s, b, k, models=models))(state, padded, key)
  assert float(b["count"]) == 4.0
  chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-5)
  # and the sums are the per-example losses of an eval-mode forward, added up
  z, _ = stages.encode(models, state.params["encoder"], state.batch_stats["encoder"],
                       real["image"], False, key)
  logits = stages.classify(models, state.params["classifier"], z, False)
  x_rec, _ = stages.decode(models, state.params["decoder"], state.batch_stats["decoder"], z,
                           False)
  x = np.asarray(real["image"], np.float64)
  err = (x - np.asarray(x_rec, np.float64)) ** 2
  assert float(a["recon_sse"]) == pytest.approx(err.reshape(4, -1).sum(1).sum(), rel=1e-4)
  assert float(a["recon_mse"]) == pytest.approx(err.reshape(4, -1).mean(1).sum(), rel=1e-4)
  assert float(a["correct"]) == float(np.sum(np.argmax(logits, -1) == np.asarray(real["label"])))
  assert float(a["ce"]) == pytest.approx(
      float(jnp.sum(losses.cross_entropy_per_example(logits, real["label"]))), rel=1e-5)


# ---------------------------------------------------------------- the privacy target


def test_target_recon_error_from_the_psnr():
  # PSNR 20 dB on values in [0, 2]: per value (2 - 0)^2 x 10^-2 = 0.04
  mean = ml_collections.ConfigDict(dict(target_psnr=20.0, recon_reduction="mean"))
  assert stages.target_recon_error(mean, (4, 5, 1), (0.0, 2.0)) == pytest.approx(0.04)
  summed = ml_collections.ConfigDict(dict(target_psnr=20.0, recon_reduction="sum"))
  assert stages.target_recon_error(summed, (4, 5, 1), (0.0, 2.0)) == pytest.approx(0.8)
  assert stages.target_recon_error(summed, (4, 5, 1), (-1.0, 1.0)) == pytest.approx(0.8)
  off = ml_collections.ConfigDict(dict(target_psnr=0.0, recon_reduction="sum"))
  assert stages.target_recon_error(off, (4, 5, 1), (0.0, 1.0)) is None


# ---------------------------------------------------------------- warm-up and re-init


def test_the_reconstruction_term_switches_on_at_the_warm_up_step(setup):
  models, opts, _, state, batch = setup
  adv = jax.jit(lambda s, b: stages.adversarial_step(
      s, b, models=models, optimizer=opts["adv"], lam=0.3, warmup_steps=3))
  for step, on in ((2, False), (3, True)):
    s = dataclasses.replace(state, step=jnp.asarray(step, state.step.dtype))
    _, m = adv(s, batch)
    term = m["adv/recon_sse"] if on else 0.0
    assert float(m["adv/loss"]) == pytest.approx(
        float(losses.adversarial_objective(m["adv/ce"], term, 0.3)), rel=1e-5), step


def test_without_a_warm_up_the_reconstruction_term_is_on_from_the_first_step(setup):
  models, opts, _, state, batch = setup
  _, m = jax.jit(lambda s, b: stages.adversarial_step(
      s, b, models=models, optimizer=opts["adv"], lam=0.3))(state, batch)
  assert int(state.step) == 0
  assert float(m["adv/loss"]) == pytest.approx(
      float(losses.adversarial_objective(m["adv/ce"], m["adv/recon_sse"], 0.3)), rel=1e-5)


def test_the_attribute_confusion_switches_on_at_the_warm_up_step():
  from tests.test_attribute_game import _config, _models

  c = _config(attribute_weight=5.0)
  models = _models(c)
  opts = stages.make_optimizers(c.ran)
  state = jax.jit(lambda r: stages.init_state(models, opts, r))(jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.uniform(0, 1, (8, 28, 28, 1)), jnp.float32),
           "label": jnp.asarray(np.arange(8) % 10, jnp.int32),
           "attribute": jnp.asarray(np.arange(8) % 4, jnp.int32)}
  adv = jax.jit(lambda s, b: stages.adversarial_step(
      s, b, models=models, optimizer=opts["adv"], lam=1.0, warmup_steps=3,
      defences=stages.Defences(attribute_weight=5.0)))
  for step, on in ((2, 0.0), (3, 1.0)):
    s = dataclasses.replace(state, step=jnp.asarray(step, state.step.dtype))
    _, m = adv(s, batch)
    assert float(m["adv/attribute_confusion"]) > 1e-4
    want = float(losses.adversarial_objective(m["adv/ce"], on * m["adv/recon_sse"], 1.0)
                 + on * 5.0 * m["adv/attribute_confusion"])
    assert float(m["adv/loss"]) == pytest.approx(want, rel=1e-5), step


def test_decoders_are_fresh_at_multiples_of_the_period_never_at_step_zero(setup):
  models, opts, _, state, _ = setup
  reinit = jax.jit(lambda s: stages.reinit_decoders(s, models=models, optimizer=opts["gen"],
                                                    every=2))
  at = lambda n: dataclasses.replace(state, step=jnp.asarray(n, state.step.dtype))  # noqa: E731
  chex.assert_trees_all_equal(reinit(at(0)).params["decoder"], state.params["decoder"])
  chex.assert_trees_all_equal(reinit(at(3)).params["decoder"], state.params["decoder"])
  fresh = reinit(at(2)).params["decoder"]
  assert not all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), fresh,
                                              state.params["decoder"])))
  chex.assert_trees_all_equal(reinit(at(2)).params["encoder"], state.params["encoder"])


# ---------------------------------------------------------------- settings reach the stages


def test_distillation_and_defaults_reach_the_bound_stages(setup):
  models, opts, _, _, _ = setup
  ran = ml_collections.ConfigDict(dict(k=1, lam=0.4, l1=1e-3, l2=1e-3, l3=1e-3,
                                       recon_reduction="sum", distill_weight=0.5,
                                       distill_temperature=3.0, warmup_steps=2))
  fns = stages.bind_stages(models, opts, ran)
  assert fns.disc.keywords["distill"] == (0.5, 3.0)
  assert fns.adv.keywords["distill"] == (0.5, 3.0)
  assert fns.adv.keywords["lam"] == 0.4 and fns.adv.keywords["warmup_steps"] == 2
  assert fns.reinit is None and fns.ema is None
  bare = ml_collections.ConfigDict(dict(k=1, lam=0.4, l1=1e-3, l2=1e-3, l3=1e-3,
                                        recon_reduction="sum"))
  fns = stages.bind_stages(models, opts, bare)   # what a config without the fields gets
  assert fns.disc.keywords["distill"] == (0.0, 1.0)
  assert fns.adv.keywords["adversary_reduce"] == "min"
  assert fns.adv.keywords["softmin_temperature"] == 1.0
  assert fns.adv.keywords["warmup_steps"] == 0 and fns.adv.keywords["target_recon"] is None
  assert fns.reinit is None and fns.ema is None
  ema = stages.bind_stages(models, opts, ml_collections.ConfigDict(
      {**bare.to_dict(), "ema_decay": 0.9, "reinit_every_steps": 1}))
  assert ema.ema.keywords["decay"] == 0.9 and ema.reinit.keywords["every"] == 1


def test_the_generative_stage_reports_the_strongest_attribute_head():
  """With both heads (linear, MLP) the reported attribute cross-entropy is the lower and the
  accuracy the higher of the two: what the best head reads from the features."""
  from tests.test_attribute_game import _config, _models

  c = _config(attribute_weight=1.0)
  models = _models(c)
  assert set(models.attribute_heads) == {"linear", "mlp"}
  opts = stages.make_optimizers(c.ran)
  state = jax.jit(lambda r: stages.init_state(models, opts, r))(jax.random.PRNGKey(2))
  rng = np.random.default_rng(1)
  batch = {"image": jnp.asarray(rng.uniform(0, 1, (16, 28, 28, 1)), jnp.float32),
           "label": jnp.asarray(np.arange(16) % 10, jnp.int32),
           "attribute": jnp.asarray(rng.integers(0, 4, 16), jnp.int32)}
  _, m = jax.jit(lambda s, b: stages.generative_step(s, b, models=models,
                                                     optimizer=opts["gen"]))(state, batch)
  clean, _ = stages.features(models, state.params["encoder"], state.batch_stats["encoder"],
                             batch["image"], True)
  logits = stages.attribute_logits(models, state.params, clean)
  ces = [float(losses.cross_entropy(lg, batch["attribute"])) for lg in logits.values()]
  accs = [float(losses.accuracy(lg, batch["attribute"])) for lg in logits.values()]
  assert float(m["gen/attribute_ce"]) == pytest.approx(min(ces), rel=1e-5)
  assert float(m["gen/attribute_accuracy"]) == pytest.approx(max(accs))
  assert accs[0] != accs[1] and ces[0] != ces[1]   # the two heads tell apart
