"""Declared attacker budgets and the searched attackers (ran_jax.privacy.budget,
attribute_attackers, inversion): known answers on data with a planted leak."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ran_jax import attack
from ran_jax.privacy import attribute_attackers as aa
from ran_jax.privacy import budget, identity, inversion


@pytest.mark.parametrize("module", [budget, aa, identity])
def test_doctests(module):
  result = doctest.testmod(module)
  assert result.attempted > 0 and result.failed == 0


# The declared budgets (written into every result; docs/results/attacker_budgets.md; lists for
# tuples), the searches behind the published figures:
# a figure's meaning is its budget, so a change here must be deliberate and documented.
DECLARED = {'light': {'name': 'light',
                      'reconstruction': {'attackers': ['mirrored_decoder', 'mlp_decoder', 'ridge'],
                                         'max_epochs': 15,
                                         'releases': [],
                                         'mlp_hidden': [[1024, 1024]],
                                         'learning_rates': [0.001],
                                         'inversion': False,
                                         'inversion_steps': 200,
                                         'inversion_weights': [0.01, 0.1, 1.0, 10.0],
                                         'fit_fractions': [0.5, 1.0]},
                      'identity': {'families': ['logreg', 'mlp', 'knn', 'forest', 'extra_trees'],
                                   'draws': [1, 4],
                                   'max_fit_rows': 60000,
                                   'mlp_hidden': [[256]],
                                   'trees': [200],
                                   'min_leaf': [1, 5],
                                   'boosting_rounds': [100],
                                   'knn_ks': [1, 3, 5, 9, 15, 25, 45, 75, 125],
                                   'calibrate': True,
                                   'set_attacker': True,
                                   'set_groups': 400,
                                   'fit_fractions': [0.25, 0.5, 1.0]},
                      'identity_tolerance': 0.005,
                      'reconstruction_tolerance': 0.02},
            'thorough': {'name': 'thorough',
                         'reconstruction': {'attackers': ['mirrored_decoder', 'mlp_decoder',
                                                          'resnet_decoder', 'ridge'],
                                            'max_epochs': 100,
                                            'releases': [4, 16],
                                            'mlp_hidden': [[1024, 1024], [2048, 2048],
                                                           [1024, 1024, 1024]],
                                            'learning_rates': [0.001, 0.0003],
                                            'inversion': True,
                                            'inversion_steps': 200,
                                            'inversion_weights': [0.01, 0.1, 1.0, 10.0],
                                            'fit_fractions': [0.25, 0.5, 1.0]},
                         'identity': {'families': ['logreg', 'mlp', 'knn', 'forest', 'extra_trees',
                                                   'boosting'],
                                      'draws': [1, 4, 16],
                                      'max_fit_rows': 60000,
                                      'mlp_hidden': [[256], [512, 512], [1024, 1024]],
                                      'trees': [100, 200, 400],
                                      'min_leaf': [1, 5],
                                      'boosting_rounds': [100, 300],
                                      'knn_ks': [1, 3, 5, 9, 15, 25, 45, 75, 125],
                                      'calibrate': True,
                                      'set_attacker': True,
                                      'set_groups': 1000,
                                      'fit_fractions': [0.25, 0.5, 1.0]},
                         'identity_tolerance': 0.005,
                         'reconstruction_tolerance': 0.02}}


def test_the_declared_budgets_are_the_published_ones():
  import json

  got = {k: json.loads(json.dumps(v.to_dict())) for k, v in budget.BUDGETS.items()}
  assert got == DECLARED
  assert budget.get_budget("strong") is budget.BUDGETS["thorough"]


def test_budgets_are_written_into_the_configs():
  light, thorough = (attack.attack_config(preset=p) for p in ("light", "thorough"))
  assert light.budget == "light" and not light.inversion
  assert thorough.inversion and len(thorough.mlp_hidden) == 3 and thorough.learning_rates
  assert attack.attack_config(preset="strong").budget == "thorough"   # the earlier name
  icfg = attack.identity_config(preset="thorough")
  assert icfg.budget == "thorough" and tuple(icfg.draws) == (1, 4, 16)
  assert "boosting" in icfg.attackers and "boosting" not in attack.identity_config().attackers
  with pytest.raises(ValueError, match="allowed"):
    attack.attack_config(preset="huge")


def test_budgets_cannot_be_changed_in_place():
  import dataclasses

  b = budget.get_budget("light")
  for part in (b, b.reconstruction, b.identity):
    with pytest.raises(dataclasses.FrozenInstanceError):
      part.name = "x"


def test_marks_known_answers_at_and_around_the_tolerance():
  """The last doubling relative to the figure; a move or an edge gain equal to the tolerance
  is still converged; two points are enough to measure a doubling; a perfect last fit moves
  nothing."""
  assert budget.doubling_moves([0.3, 0.4]) == pytest.approx(0.1)
  assert budget.doubling_moves([5.0, 4.0], higher_is_more_leakage=False) == 1.0
  m = budget.reconstruction_mark([50.0, 40.0, 39.0], {"capacity": 0.03}, 0.02)
  assert m["last_doubling"] == round(1 / 39, 12)
  assert m["reason"] == ("fit set: the last doubling moved the error by 2.6 % > 2 %; "
                         "capacity: the largest value searched still gained 3.0 % on validation")
  assert budget.reconstruction_mark([40.0, 39.0], {}, 0.02)["last_doubling"] == round(1 / 39, 12)
  assert budget.reconstruction_mark([0.9, 0.5], {}, 0.02)["last_doubling"] == 0.8
  assert budget.reconstruction_mark([5.0, 0.0], {}, 0.02)["last_doubling"] == 0.0
  assert budget.reconstruction_mark([51.0, 50.0], {"capacity": 0.02}, 0.02)["converged"]
  assert budget.identity_mark([0.30, 0.305], {"draws": 0.005}, 0.005)["converged"]
  assert not budget.identity_mark([0.30, 0.306], {}, 0.005)["converged"]


def test_convergence_marks_count_only_moves_towards_more_leakage():
  assert budget.identity_mark([0.2, 0.3, 0.31], {}, 0.005)["converged"] is False
  assert budget.identity_mark([0.2, 0.3, 0.29], {}, 0.005)["converged"] is True
  assert budget.identity_mark([0.2, 0.3, 0.3], {"draws": 0.02}, 0.005)["converged"] is False
  m = budget.reconstruction_mark([50.0, 40.0, 39.0], {}, 0.02)   # 2.6 % of 39
  assert not m["converged"] and "fit set" in m["reason"]
  assert budget.reconstruction_mark([50.0, 39.5, 39.0], {}, 0.02)["converged"]
  assert budget.mark_label(None) == "not checked"


def _noisy_attribute(n, sigma, rng, d=6, a=5):
  """Releases whose attribute sits in a small mean shift drowned in noise."""
  att = rng.integers(0, a, n)
  means = np.random.default_rng(7).normal(0, 1, (a, d))
  return (means[att] * 0.6 + sigma * rng.normal(0, 1, (n, d))).astype(np.float32), att


def test_noise_draws_are_searched_and_more_draws_win_on_noisy_releases():
  """An attacker who draws 8 noisy releases per training input beats one who uses one (a
  kNN on one draw overfits the noise); the search picks the larger draw on validation and
  reports the gain at the grid's edge."""
  rng = np.random.default_rng(0)
  clean, att = _noisy_attribute(300, 0.0, rng)
  draws = [clean + 1.5 * rng.normal(0, 1, clean.shape).astype(np.float32) for _ in range(8)]
  zv, av = _noisy_attribute(600, 1.5, np.random.default_rng(1))
  cfg = identity.IdentityConfig(knn_ks=(1, 5, 25, 75))
  s = aa.search("knn", draws, att, zv, av, 5, cfg, 0, draws=(1, 8))
  one = max(p["val_top1"] for p in s.grid if p["draws"] == 1)
  eight = max(p["val_top1"] for p in s.grid if p["draws"] == 8)
  assert s.chosen.val_top1 == max(p["val_top1"] for p in s.grid)   # the best on validation
  assert s.chosen.settings["draws"] == 8 and eight > one + 0.02, (one, eight)
  assert s.edge_gains["draws"] == pytest.approx(eight - one)


def test_calibration_rescues_summed_log_probabilities_from_zeros():
  """A per-release model that gives the true person probability 0 on one release of a group
  loses the group under plain summed log-probabilities; smoothing chosen on validation
  groups keeps it."""
  a = np.repeat(np.arange(2), 50)
  p = np.full((100, 2), 0.0)
  p[np.arange(100), a] = 0.7
  p[np.arange(100), 1 - a] = 0.3
  p[::5] = np.eye(2)[1 - a[::5]]          # every fifth release confidently wrong
  groups = np.stack([np.flatnonzero(a == k)[:10] for k in (0, 1)] * 20)
  plain = aa.person_top1(aa.calibrated_log(p, aa.LOG_EPS, 1.0), groups, a).mean()
  c = aa.calibrate(p, groups, a)
  assert plain == 0.0 and c["val_person_top1"] == 1.0 and c["smoothing"] > aa.LOG_EPS


def test_set_attacker_reads_what_per_release_classifiers_cannot():
  """The person is in the spread of his releases, not in any one of them: per-release
  classifiers are at chance, the set attacker's pooled statistics name him."""
  rng = np.random.default_rng(0)

  def data(n):
    att = np.arange(n) % 2
    return (rng.normal(0, 1, (n, 4)) * (0.5 + att[:, None])).astype(np.float32), att

  (zf, af), (zv, av), (zt, at) = data(600), data(200), data(200)
  cfg = identity.IdentityConfig(forest_trees=100)
  groups_v = identity.person_groups(av, 10, 200, 0)
  groups_t = identity.person_groups(at, 10, 200, 1)
  sa = aa.fit_set_attacker([zf], af, zv, av, groups_v, 2, cfg, 10, 100, 0)
  top1 = (sa.predict(aa.pooled(zt, groups_t)).argmax(-1) == at[groups_t[:, 0]]).mean()
  logreg = aa.candidates("logreg", zf, af, zv, av, 2, cfg, 0)[0].val_top1
  assert top1 > 0.95 and logreg < 0.65, (top1, logreg)


def test_white_box_inversion_beats_the_decoder_it_starts_from():
  """A linear encoder of rank 16 on 16-d inputs: inversion from a poor start (the mean
  input) through the encoder recovers the input; the weight is chosen on validation and
  the decoder alone stays a candidate."""
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.normal(0, 1, (16, 16)) / 4, jnp.float32)

  def features(x):
    return x.reshape(len(x), -1) @ w

  x = rng.uniform(0.1, 0.9, (200, 16)).astype(np.float32)
  z = np.asarray(features(jnp.asarray(x)))
  x0 = np.full_like(x, 0.5)
  rec, info = inversion.search_and_invert(jax.jit(features), z[:100], x0[:100], x[:100],
                                          z[100:], x0[100:], (0.0, 1.0), (0.01, 1.0), 300)
  start = float(np.square(x0[100:] - x[100:]).sum(1).mean())
  err = float(np.square(rec - x[100:]).sum(1).mean())
  assert info["weight"] == 0.01 and err < 0.2 * start, (err, start, info)


def test_reconstruction_worst_case_is_searched_marked_and_inverted():
  """attack_features with a capacity grid, inversion through the encoder and a fit-set
  curve: every searched capacity is reported, the worst case carries its mark, and the
  inversion (started from the best decoder) is never worse than that decoder."""
  from ran_jax.privacy import attackers as atk
  from ran_jax.privacy import protocol

  rng = np.random.default_rng(0)
  x = rng.uniform(0, 1, (700, 4, 4, 1)).astype(np.float32)
  y = rng.integers(0, 2, 700).astype(np.int32)
  w = jnp.asarray(rng.normal(0, 1, (16, 12)) / 4, jnp.float32)

  def features(v):
    return jnp.tanh(v.reshape(len(v), -1) @ w)

  data = protocol.Data(x[:450], y[:450], x[450:550], y[450:550], x[550:], y[550:], (4, 4, 1), 2,
                       (0.0, 1.0))
  cfg = protocol.AttackConfig(attackers=("mlp_decoder", "ridge"), mlp_hidden=((16,), (32,)),
                              attacker_fit=atk.FitConfig(batch_size=64, max_epochs=20),
                              retrain_classifier=False, inversion=True, inversion_steps=50,
                              inversion_weights=(0.1,), fit_fractions=(0.5, 1.0), n_show=2,
                              n_scatter=10)
  r, _ = protocol.attack_features(data, jax.jit(features), cfg, invert_features=jax.jit(features),
                                  name="t")
  mlp = r["attackers"]["mlp_decoder"]
  assert [g["capacity"] for g in mlp["search"]] == [[16], [32]]
  assert mlp["capacity"] in ([16], [32])
  inv = r["attackers"]["inversion"]
  assert inv["started_from"] == "mlp_decoder" and inv["mse_sum"] <= mlp["mse_sum"] * 1.001
  w_ = r["worst"]
  assert w_["mse_sum"] == min(a["mse_sum"] for a in r["attackers"].values())
  assert w_["convergence"]["fractions"] == [0.5, 1.0] and len(w_["convergence"]["fit_curve"]) == 2
