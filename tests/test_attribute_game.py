"""The attribute game: attribute heads in the generative stage, confusion in the adversarial."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from ran_jax import losses, stages
from ran_jax.models import build_models


def _config(**ran):
  c = common.get_base_config()
  c.model.widths = (4, 8)
  c.model.classifier_hidden = (16,)
  c.model.conv_impl = "xla"
  c.ran.lam = 1.0
  c.ran.k = 1
  c.ran.attribute_hidden = (8,)
  for key, value in ran.items():
    c.ran[key] = value
  return c


def _models(c, num_attributes=4):
  return build_models(c.model, (28, 28, 1), 10, (0.0, 1.0), c.ran, num_attributes)


@pytest.fixture(scope="module")
def game():
  c = _config(attribute_weight=5.0, l3=3e-3, reinit_every_steps=1)
  models = _models(c)
  opts = stages.make_optimizers(c.ran)
  state = jax.jit(lambda r: stages.init_state(models, opts, r))(jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  attr = np.arange(16) % 4
  # The attribute is visible in the input (a bright corner per value), so heads can learn it.
  x = rng.uniform(0, 0.5, (16, 28, 28, 1))
  x[np.arange(16), attr * 4, 0, 0] = 1.0
  batch = {"image": jnp.asarray(x, jnp.float32),
           "label": jnp.asarray(np.arange(16) % 10, jnp.int32),
           "attribute": jnp.asarray(attr, jnp.int32)}
  fns = stages.bind_stages(models, opts, c.ran)
  gen, adv = jax.jit(fns.gen), jax.jit(fns.adv)
  trained, first = gen(state, batch)
  for _ in range(20):
    trained, last = gen(trained, batch)
  return dict(c=c, models=models, state=state, batch=batch, fns=fns, gen=gen, adv=adv,
              trained=trained, gen_first=first, gen_last=last)


def test_confusion_loss_is_zero_only_at_uniform():
  assert float(losses.confusion_loss(jnp.zeros((3, 5)))) == pytest.approx(0.0, abs=1e-6)
  assert float(losses.confusion_loss(jnp.array([[4.0, 0.0, 0.0]]))) > 0.5
  g = jax.grad(lambda lg: losses.confusion_loss(lg))(jnp.array([[2.0, 0.0]]))
  assert float(g[0, 0]) > 0 > float(g[0, 1])  # pushes the confident class down


def test_off_by_default_no_heads():
  c = _config(attribute_weight=0.0)
  assert not _models(c).attribute_heads
  params, _ = jax.eval_shape(_models(c).init, jax.random.PRNGKey(0))
  assert "attribute" not in params


def test_generative_stage_trains_heads_and_leaves_the_encoder(game):
  assert set(game["state"].params["attribute"]) == {"linear", "mlp"}
  assert float(game["gen_last"]["gen/attribute_ce"]) < float(game["gen_first"]["gen/attribute_ce"])
  chex.assert_trees_all_equal(game["trained"].params["encoder"], game["state"].params["encoder"])


def test_adversarial_stage_pushes_the_encoder_against_frozen_heads(game):
  s = game["trained"]
  s2, first = game["adv"](s, game["batch"])
  assert float(first["adv/attribute_confusion"]) > 0
  chex.assert_trees_all_equal(s2.params["attribute"], s.params["attribute"])
  # Without the attribute term the same step moves the encoder differently.
  adv0 = functools.partial(stages.adversarial_step,
                           **{**game["fns"].adv.keywords, "defences": dataclasses.replace(
                               game["fns"].adv.keywords["defences"], attribute_weight=0.0)})
  s3, m3 = jax.jit(adv0)(s, game["batch"])
  assert "adv/attribute_confusion" not in m3
  delta = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), s2.params["encoder"],
                       s3.params["encoder"])
  assert max(jax.tree.leaves(delta)) > 0
  # Played alone against the frozen heads, the encoder makes them unsure.
  for _ in range(20):
    s2, last = game["adv"](s2, game["batch"])
  assert float(last["adv/attribute_confusion"]) < 0.5 * float(first["adv/attribute_confusion"])


def test_reinit_restarts_the_heads_too(game):
  s = dataclasses.replace(game["trained"], step=jnp.asarray(1, jnp.int32))
  fresh = jax.jit(game["fns"].reinit)(s)
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), fresh.params["attribute"],
                       s.params["attribute"])
  assert min(jax.tree.leaves(moved)) > 0


def test_missing_attribute_in_batch_is_a_clear_error(game):
  batch = {k: v for k, v in game["batch"].items() if k != "attribute"}
  with pytest.raises(ValueError, match="set data.attribute"):
    game["fns"].gen(game["state"], batch)


def test_heads_need_an_attribute_with_two_values():
  with pytest.raises(ValueError, match="at least 2 values"):
    _models(_config(attribute_weight=1.0), num_attributes=1)


def test_recommended_har_config_trains_end_to_end_with_the_game(tmp_path):
  """har_lenet_private:smoke (subject game, compactness, noise) through the trainer and export."""
  import json

  import data_fakes

  from ran_jax import export, input_pipeline, trainer
  from ran_jax.configs import har_lenet_private

  c = har_lenet_private.get_config("smoke")
  c.data.manual_dir = data_fakes.write_har_npz(str(tmp_path / "m"), n_train=48, n_test=40)
  c.data.data_dir = str(tmp_path / "tfds")
  c.model.widths = (4, 8)
  c.model.classifier_hidden = (16,)
  c.ran.attribute_hidden = (8,)
  c.ran.k = 1
  c.num_epochs, c.max_steps = 1, 2
  final = trainer.train_and_evaluate(c, str(tmp_path / "wd"))
  # The test figure is the exported networks' on noisy releases, the noise of eval batch i
  # drawn from fold_in(PRNGKey(seed), i) (padded batches of eval_batch_size): recomputed here.
  exported = export.load_trained(str(tmp_path / "wd"))
  te = input_pipeline.load_dataset(exported.config.data).test
  te = te.get(np.arange(len(te)))
  x, y = np.asarray(te["image"], np.float32), np.asarray(te["label"])
  assert exported.feature_noise > 0
  correct = 0
  for i, start in enumerate(range(0, len(x), c.eval_batch_size)):
    idx = np.minimum(np.arange(start, start + c.eval_batch_size), len(x) - 1)
    keep = np.arange(start, start + c.eval_batch_size) < len(x)
    z = exported.encode(x[idx], jax.random.fold_in(jax.random.PRNGKey(c.seed), i))
    correct += int(np.sum((np.argmax(np.asarray(exported.classify(z)), -1) == y[idx]) & keep))
  assert final["accuracy"] == pytest.approx(correct / len(x), abs=1e-6)
  records = [json.loads(line) for line in open(tmp_path / "wd" / "metrics.jsonl")]
  train = [r for r in records if r["kind"] == "train"]
  assert all("gen/attribute_ce" in r and "adv/attribute_confusion" in r for r in train)
  trained = export.load_trained(str(tmp_path / "wd"))
  assert set(trained.params["attribute"]) == {"linear", "mlp"}
  assert trained.meta["num_attributes"] == 3   # the fake's subjects 1..3


# ---------------------------------------------------------------- attribute entanglement


def test_entanglement_is_chance_level_zero_and_high_for_attribute_clusters():
  rng = np.random.default_rng(0)
  attr = jnp.asarray(np.arange(64) % 4, jnp.int32)
  labels = jnp.asarray(np.arange(64) // 32, jnp.int32)          # two classes of 32
  centres = rng.normal(0, 1, (4, 8))
  clustered = stages.standardise(jnp.asarray(centres[np.arange(64) % 4]
                                             + 0.05 * rng.normal(0, 1, (64, 8)), jnp.float32))
  mixed = stages.standardise(jnp.asarray(rng.normal(0, 1, (64, 8)), jnp.float32))
  high = float(losses.attribute_entanglement(clustered, attr, labels, 0.1))
  low = float(losses.attribute_entanglement(mixed, attr, labels, 0.1))
  chex.assert_tree_all_finite((high, low))
  assert high > 0.3 > 0.05 > low >= 0.0
  # Soft neighbours that share the attribute exactly as often as the batch: zero.
  flat = jnp.zeros((8, 4), jnp.float32)
  flat_loss = losses.attribute_entanglement(flat, attr[:8], labels[:8], 0.1)
  assert float(flat_loss) == pytest.approx(0.0, abs=1e-4)
  # Its gradient pulls the examples of different attributes together: descending it mixes them.
  z = stages.standardise(jnp.asarray(centres[np.arange(64) % 4] + 0.3 * rng.normal(0, 1, (64, 8)),
                                     jnp.float32))
  f = jax.jit(lambda v: losses.attribute_entanglement(stages.standardise(v), attr, labels, 0.1))
  start, grad = float(f(z)), jax.jit(jax.grad(f))
  for _ in range(100):
    z = z - 20.0 * grad(z)
  assert start > 0.3 and float(f(z)) < 0.1 * start
  # Only classmates count: an attribute that coincides with the class costs nothing.
  by_class = stages.standardise(jnp.asarray(centres[np.arange(64) // 32]
                                            + 0.05 * rng.normal(0, 1, (64, 8)), jnp.float32))
  assert float(losses.attribute_entanglement(by_class, labels, labels, 0.1)) == pytest.approx(
      0.0, abs=1e-4)
  # An example without a classmate in the batch adds nothing (and no NaN).
  lone = losses.attribute_entanglement(mixed[:3], attr[:3], jnp.asarray([0, 1, 2]), 0.1)
  assert float(lone) == 0.0


def test_entanglement_in_the_disc_and_adv_stages(game):
  c = _config(entangle=2.0)
  models = _models(c)
  opts = stages.make_optimizers(c.ran)
  state = jax.jit(lambda r: stages.init_state(models, opts, r))(jax.random.PRNGKey(0))
  on = stages.bind_stages(models, opts, c.ran)
  want = stages.Defences((stages.Penalty("entangle", 2.0, (("temperature", 0.1),)),), 0.0)
  assert on.disc.keywords["defences"] == on.adv.keywords["defences"] == want
  off = stages.bind_stages(models, opts, _config().ran)
  batch = {**game["batch"], "label": jnp.asarray(np.arange(16) % 2, jnp.int32)}  # 8 classmates
  for name in ("disc", "adv"):
    s_on, m_on = jax.jit(getattr(on, name))(state, batch)
    s_off, m_off = jax.jit(getattr(off, name))(state, batch)
    assert float(m_on[f"{name}/loss"]) > float(m_off[f"{name}/loss"])   # the penalty is in it
    delta = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), s_on.params["encoder"],
                         s_off.params["encoder"])
    assert max(jax.tree.leaves(delta)) > 0
  batch = {k: v for k, v in batch.items() if k != "attribute"}
  with pytest.raises(ValueError, match="set data.attribute"):
    on.disc(state, batch)


# ---------------------------------------------------------------- class-conditional HSIC


def _reference_nhsic(z, attr, labels, bandwidth):
  """The normalised HSIC per class written out with explicit centring matrices (numpy)."""
  z = np.asarray(z, np.float64)
  d2 = ((z[:, None, :] - z[None, :, :]) ** 2).mean(-1)
  b = len(z)
  scale = d2[~np.eye(b, dtype=bool)].mean()
  k_all = np.exp(-d2 / (bandwidth * scale))
  total = weight = 0.0
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    n = len(idx)
    h = np.eye(n) - 1.0 / n
    k = h @ k_all[np.ix_(idx, idx)] @ h
    ell = h @ (attr[idx, None] == attr[None, idx]).astype(np.float64) @ h
    if np.sum(ell * ell) <= 1e-6:
      continue
    total += n * np.sum(k * ell) / np.sqrt(np.sum(k * k) * np.sum(ell * ell))
    weight += n
  return total / weight


def test_conditional_hsic_matches_its_definition_and_separates_dependence():
  rng = np.random.default_rng(1)
  attr = np.arange(64) % 4
  labels = np.arange(64) // 32                       # two classes of 32, all 4 values in each
  centres = rng.normal(0, 1, (4, 8))
  clustered = stages.standardise(jnp.asarray(centres[attr] + 0.1 * rng.normal(0, 1, (64, 8)),
                                             jnp.float32))
  mixed = stages.standardise(jnp.asarray(rng.normal(0, 1, (64, 8)), jnp.float32))
  a, y = jnp.asarray(attr, jnp.int32), jnp.asarray(labels, jnp.int32)
  for z in (clustered, mixed):
    for bw in (0.5, 2.0):
      np.testing.assert_allclose(float(losses.conditional_hsic(z, a, y, 2, bw)),
                                 _reference_nhsic(z, attr, labels, bw), rtol=1e-4, atol=1e-6)
  high = float(losses.conditional_hsic(clustered, a, y, 2))
  low = float(losses.conditional_hsic(mixed, a, y, 2))
  # (a finite batch gives independent features a small positive value: the estimator's bias)
  assert high > 0.8 > 0.25 > low >= 0.0, (high, low)
  # Only inside a class: an attribute that is the class costs nothing, and a class whose
  # examples all share one value adds nothing (no NaN).
  by_class = stages.standardise(jnp.asarray(centres[labels] + 0.1 * rng.normal(0, 1, (64, 8)),
                                            jnp.float32))
  assert float(losses.conditional_hsic(by_class, y, y, 2)) == 0.0
  # Descending it removes the dependence.
  f = jax.jit(lambda v: losses.conditional_hsic(stages.standardise(v), a, y, 2))
  z, grad = clustered, jax.jit(jax.grad(f))
  chex.assert_tree_all_finite(grad(z))
  for _ in range(150):
    z = z - 30.0 * grad(z)
  assert float(f(z)) < 0.1 * high


def test_hsic_is_a_declared_defence_in_both_encoder_stages(game):
  c = _config(hsic=3.0, hsic_bandwidth=0.5)
  models = _models(c)
  opts = stages.make_optimizers(c.ran)
  state = jax.jit(lambda r: stages.init_state(models, opts, r))(jax.random.PRNGKey(0))
  on = stages.bind_stages(models, opts, c.ran)
  want = stages.Defences((stages.Penalty("hsic", 3.0, (("bandwidth", 0.5),)),), 0.0)
  assert on.disc.keywords["defences"] == on.adv.keywords["defences"] == want
  off = stages.bind_stages(models, opts, _config().ran)
  batch = {**game["batch"], "label": jnp.asarray(np.arange(16) % 2, jnp.int32)}
  for name in ("disc", "adv"):
    s_on, m_on = jax.jit(getattr(on, name))(state, batch)
    s_off, m_off = jax.jit(getattr(off, name))(state, batch)
    assert float(m_on[f"{name}/loss"]) > float(m_off[f"{name}/loss"])
    delta = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), s_on.params["encoder"],
                         s_off.params["encoder"])
    assert max(jax.tree.leaves(delta)) > 0
  with pytest.raises(ValueError, match="set data.attribute"):
    on.disc(state, {k: v for k, v in batch.items() if k != "attribute"})


def test_heads_read_the_features_before_the_release_noise(game):
  """With release noise on, both stages' attribute terms equal the heads on the clean
  features, recomputed here; on the noisy release they would differ by far more."""
  c = _config(attribute_weight=5.0)
  c.model.feature_noise = 1.0
  models = _models(c)
  assert models.feature_noise == 1.0
  opts = stages.make_optimizers(c.ran)
  state = jax.jit(lambda r: stages.init_state(models, opts, r))(jax.random.PRNGKey(3))
  fns = stages.bind_stages(models, opts, c.ran)
  batch = game["batch"]
  _, gen_m = jax.jit(fns.gen)(state, batch)
  _, adv_m = jax.jit(fns.adv)(state, batch)

  def heads_on(z):
    logits = stages.attribute_logits(models, state.params, z)
    ce = min(float(losses.cross_entropy(lg, batch["attribute"])) for lg in logits.values())
    confusion = float(jnp.mean(jnp.stack([losses.confusion_loss(lg) for lg in logits.values()])))
    return ce, confusion

  clean, _ = stages.features(models, state.params["encoder"], state.batch_stats["encoder"],
                             batch["image"], True)
  ce, confusion = heads_on(clean)
  np.testing.assert_allclose(float(gen_m["gen/attribute_ce"]), ce, rtol=1e-5)
  np.testing.assert_allclose(float(adv_m["adv/attribute_confusion"]), confusion, rtol=1e-5)
  # The test can tell the two apart: on a noisy release the heads' figures move well past
  # the tolerance above.
  noisy = stages.release(models, clean, jax.random.PRNGKey(7))
  ce_noisy, confusion_noisy = heads_on(noisy)
  assert abs(ce_noisy - ce) > 1e-3 * ce and abs(confusion_noisy - confusion) > 1e-3 * confusion
