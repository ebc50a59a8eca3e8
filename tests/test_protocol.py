"""The privacy protocol by known answers on data with a planted leak: each threat's
attackers are fitted, early-stopped and scored on that threat's features (one release, the
mean of N releases, the clean features, N releases of one person), the worst case is the
strongest attacker, and each declared defence term pushes its quantity the right way.

Reconstruction: the "encoder" is the identity map on inputs x ~ N(0, I_16), released with
N(0, s^2) noise. The best linear attacker of a threat whose features carry noise of
variance v then has the known per-example summed squared error 16 v / (1 + v) (the
Wiener filter x' = z / (1 + v)); v = s^2 for one release, s^2 / N for the mean of N,
0 for the clean features. An attacker fitted on one threat and scored on another misses
it: fitted on one release (weight 1/2 at s = 1) and scored on the mean of 4, 16 (0.25 +
0.0625) = 5.0, not 3.2.
"""

import dataclasses
import os


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ran_jax import losses, stages
from ran_jax.privacy import attackers as atk
from ran_jax.privacy import attribute_attackers as aa
from ran_jax.privacy import identity, protocol
from tests.test_attribute_game import _config, _models
from tests.test_identity import FAST, FakeTrained, make_source

D = 16   # input values per example


def _data(n_fit, n_val, n_test, seed=0):
  rng = np.random.default_rng(seed)
  x = [rng.standard_normal((n, 4, 4, 1)).astype(np.float32) for n in (n_fit, n_val, n_test)]
  y = [rng.integers(0, 2, n).astype(np.int32) for n in (n_fit, n_val, n_test)]
  return protocol.Data(x[0], y[0], x[1], y[1], x[2], y[2], (4, 4, 1), 2, (-10.0, 10.0))


def _flat(x):
  return x.reshape(len(x), -1)


def _wiener(v):
  return D * v / (1.0 + v)


# ---------------------------------------------------------------- release threats


def test_threat_features_are_the_documented_draws():
  z = np.random.default_rng(1).standard_normal((500, 16)).astype(np.float32)
  single, mean4, clean = protocol.threats(0.8, releases=(4, 1), clean=True)
  assert [t.name for t in (single, mean4, clean)] == ["single", "mean_4", "clean"]
  assert [t.draws for t in (single, mean4, clean)] == [1, 4, 0]
  assert [t.noise(0.8) for t in (single, mean4, clean)] == [0.8, 0.4, 0.0]
  one = np.random.default_rng([3, 1]).standard_normal(z.shape).astype(np.float32)
  np.testing.assert_allclose(single.features(z, 0.8, (3, 1)), z + 0.8 * one, rtol=1e-6)
  draws = [np.random.default_rng([3, 1, r]).standard_normal(z.shape) for r in range(4)]
  np.testing.assert_allclose(mean4.features(z, 0.8, (3, 1)), z + 0.8 * np.mean(draws, 0),
                             rtol=1e-5, atol=1e-6)
  assert np.std(mean4.features(z, 0.8, (3, 1)) - z) == pytest.approx(0.4, rel=0.03)
  np.testing.assert_array_equal(clean.features(z, 0.8, (3, 1)), z)
  mean2 = protocol.threats(0.8, releases=(2,))[1]
  two = [np.random.default_rng([3, 1, r]).standard_normal(z.shape) for r in range(2)]
  np.testing.assert_allclose(mean2.features(z, 0.8, (3, 1)), z + 0.8 * np.mean(two, 0),
                             rtol=1e-5, atol=1e-6)
  # without release noise every threat is one release
  assert [t.name for t in protocol.threats(0.0, releases=(4,), clean=True)] == ["single"]
  assert [t.name for t in protocol.threats(0.5, releases=(4,))] == ["single", "mean_4"]


@pytest.fixture(scope="module")
def ridge_result():
  data = _data(6000, 1000, 2000)
  cfg = protocol.AttackConfig(attackers=("ridge",), retrain_classifier=False, n_show=2,
                              n_scatter=50)
  result, _ = protocol.attack_features(data, _flat, cfg, feature_noise=1.0, identity=True,
                                       releases=(4,), clean=True, name="planted")
  return result


def test_each_threat_is_fitted_and_scored_on_its_own_features(ridge_result):
  r = ridge_result
  assert r["attackers"]["ridge"]["mse_sum"] == pytest.approx(_wiener(1.0), rel=0.04)   # 8.0
  # the released features taken as the reconstruction: all of the noise, 16 s^2
  assert r["attackers"]["identity"]["mse_sum"] == pytest.approx(D * 1.0, rel=0.04)
  mean4 = r["releases"]["mean_4"]
  assert mean4["trained_on"] == "mean_4"
  assert mean4["attackers"]["ridge"]["mse_sum"] == pytest.approx(_wiener(0.25), rel=0.04)  # 3.2
  clean = r["releases"]["clean"]
  assert clean["trained_on"] == "clean"
  assert clean["attackers"]["ridge"]["mse_sum"] < 0.01
  assert set(mean4["attackers"]) == {"ridge"}   # the identity attacker scores one release only


def test_worst_case_is_the_strongest_attacker(ridge_result):
  r = ridge_result
  assert r["worst"]["attacker"] == "ridge"
  assert r["worst"]["mse_sum"] == r["attackers"]["ridge"]["mse_sum"]
  assert r["worst"]["psnr"] == max(m["psnr"] for m in r["attackers"].values())
  assert r["releases"]["mean_4"]["worst"]["mse_sum"] == (
      r["releases"]["mean_4"]["attackers"]["ridge"]["mse_sum"])
  by = {"a": {"mse_sum": 5.0, "mse_mean": 0.3, "psnr": 20.0, "ssim": 0.1},
        "b": {"mse_sum": 2.0, "mse_mean": 0.1, "psnr": 18.0, "ssim": 0.4},
        "c": {"mse_sum": 9.0, "mse_mean": 0.6, "psnr": 25.0, "ssim": 0.2}}
  assert protocol.worst_case(by) == {"attacker": "b", "mse_sum": 2.0, "mse_mean": 0.1,
                                     "psnr": 25.0, "ssim": 0.4}
  assert protocol.worst_case({}) == {}


def test_trained_attackers_draw_their_threats_noise_and_validate_on_its_features(monkeypatch):
  """The neural families: fresh noise of the threat's std in every batch, early stopping on
  the threat's validation features (explicit seeds), scored on its test features."""
  calls = []
  real = atk.fit_group

  def spy(jobs, inputs, targets, val_inputs, val_targets, **kw):
    calls.append({"names": [j.name for j in jobs], "inputs": inputs, "val": val_inputs,
                  "noise": kw.get("input_noise", 0.0)})
    return real(jobs, inputs, targets, val_inputs, val_targets, **kw)

  monkeypatch.setattr(atk, "fit_group", spy)
  data = _data(200, 40, 40)
  cfg = protocol.AttackConfig(attackers=("mlp_decoder",), mlp_hidden=(32,),
                              attacker_fit=atk.FitConfig(batch_size=64, max_epochs=2),
                              retrain_classifier=False, n_show=2, n_scatter=10, seed=7)
  sigma = 0.6
  result, _ = protocol.attack_features(data, _flat, cfg, feature_noise=sigma,
                                       releases=(4,), clean=True, name="spy")
  by_threat = {c["names"][0].split("/")[1]: c for c in calls}
  assert set(by_threat) == {"mlp_decoder[32]", "mean_4", "clean"}
  assert [c["noise"] for c in calls] == [sigma, sigma / 2, 0.0]
  zc_val = _flat(data.x_val)
  for c, threat in zip(calls, protocol.threats(sigma, (4,), True)):
    np.testing.assert_array_equal(c["inputs"], _flat(data.x_fit))   # noise drawn in-step
    seed = (7, 1) if threat.name == "single" else (7, 1, threat.draws)
    np.testing.assert_array_equal(c["val"], threat.features(zc_val, sigma, seed))
  assert set(result["releases"]) == {"mean_4", "clean"}


# ---------------------------------------------------------------- identity threats


@pytest.fixture(scope="module")
def identity_spy():
  """attack_identity on a planted attribute, recording the features every family is
  searched, refit and scored on, per setting."""
  src = make_source(n=240)
  trained = FakeTrained(16, sigma=0.5)
  cfg = identity.IdentityConfig(**{**FAST, "attackers": ("logreg", "knn"), "releases": (4,),
                                   "raw": False, "label_only": False, "draws": (1,),
                                   "fit_fractions": (), "set_attacker": False})
  seen = {}
  real_search, real_refit = aa.search, aa.refit_with

  def search(family, z_draws, a_fit, z_val, a_val, *args, **kw):
    setting = args[-1].split("/")[1] if len(args) >= 4 else kw.get("name", "").split("/")[1]
    seen.setdefault(setting, {})["fit"] = np.asarray(z_draws[0])
    seen[setting]["val"] = np.asarray(z_val)
    return real_search(family, z_draws, a_fit, z_val, a_val, *args, **kw)

  def refit(searched, *args, name="", **kw):
    predict = real_refit(searched, *args, name=name, **kw)

    def scored(z):
      seen[name.split("/")[1]]["test"] = np.asarray(z)
      return predict(z)

    return scored

  mp = pytest.MonkeyPatch()
  mp.setattr(aa, "search", search)
  mp.setattr(aa, "refit_with", refit)
  try:
    result = identity.attack_identity(trained, src, cfg)
  finally:
    mp.undo()
  pool = identity.split_pool(src, cfg)
  clean = {part: np.asarray(trained.features(jnp.asarray(pool.x[getattr(pool, part)])))
           for part in ("fit", "val", "test")}
  return result, seen, clean


@pytest.mark.parametrize("setting,std", [("single", 0.5), ("mean_4", 0.25), ("clean", 0.0)])
def test_identity_attackers_fit_validate_and_score_on_their_settings_features(identity_spy,
                                                                             setting, std):
  result, seen, clean = identity_spy
  assert set(result["settings"]) == {"single", "mean_4", "clean"}
  for part in ("fit", "val", "test"):
    residual = seen[setting][part] - clean[part]
    if std:
      # within 4 standard errors of a sample std (1 / sqrt(2 n) relative): the other
      # settings' stds (0, 0.25, 0.5) are 100 % apart
      assert np.std(residual) == pytest.approx(std, rel=4 / np.sqrt(2 * residual.size)), part
    else:
      np.testing.assert_allclose(residual, 0.0, atol=1e-6)


def test_identity_worst_case_is_the_strongest_family(identity_spy):
  result, *_ = identity_spy
  for name, s in result["settings"].items():
    tops = {f: a["top1"] for f, a in s["attackers"].items()}
    assert s["worst"]["attacker"] == max(tops, key=tops.get), name
    assert s["worst"]["top1"] == max(tops.values())
    persons = {f: a["person_top1"] for f, a in s["attackers"].items()}
    assert s["person"]["top1"] == max(persons.values())
  # the planted attribute: the clean features name it better than one noisy release
  h = identity.headline(result)
  assert h["clean"] >= h["single"] > result["chance"] + 0.2
  assert h["worst"] == max(h["single"], h["clean"], h["person"])


def test_person_threat_sums_log_probabilities_over_one_persons_releases():
  """Each release alone names the wrong person more often than not; summed, the groups are
  named right: [0.4, 0.35, 0.25] x 2 and [0.2, 0.5, 0.3] sum to person 1 (log-probs)."""
  p = np.array([[0.4, 0.35, 0.25], [0.4, 0.35, 0.25], [0.05, 0.9, 0.05],   # person 1
                [0.1, 0.1, 0.8], [0.6, 0.2, 0.2], [0.1, 0.1, 0.8]])       # person 2
  attribute = np.array([1, 1, 1, 2, 2, 2])
  groups = np.array([[0, 1, 2], [3, 4, 5]])
  logp = aa.calibrated_log(p, 0.0, 1.0)
  np.testing.assert_array_equal(aa.person_top1(logp, groups, attribute), [1.0, 1.0])
  assert np.mean(p.argmax(-1) == attribute) == pytest.approx(3 / 6)
  # a temperature does not change the argmax of a sum; smoothing towards uniform can
  np.testing.assert_array_equal(aa.person_top1(aa.calibrated_log(p, 0.0, 3.0), groups,
                                               attribute), [1.0, 1.0])
  rows = identity.person_groups(np.array([0, 0, 0, 1, 1, 2, 1, 0]), 3, 50, [0, 3])
  assert rows.shape == (50, 3)
  attr = np.array([0, 0, 0, 1, 1, 2, 1, 0])
  for row in rows:      # three different releases of one person (2 has too few)
    assert len(set(row)) == 3 and len(set(attr[row])) == 1 and attr[row[0]] != 2


# ---------------------------------------------------------------- defence terms

QUANTITY = {  # each declared penalty's quantity, on the clean features (as the term sees them)
    "compactness": lambda z, b, m: losses.within_class_variance(z, b["label"], m.num_classes),
    "entangle": lambda z, b, m: losses.attribute_entanglement(stages.standardise(z),
                                                              b["attribute"], b["label"], 0.1),
    "hsic": lambda z, b, m: losses.conditional_hsic(stages.standardise(z), b["attribute"],
                                                    b["label"], m.num_classes, 1.0),
}


def _batch():
  rng = np.random.default_rng(0)
  attr = np.arange(16) % 4
  x = rng.uniform(0, 0.5, (16, 28, 28, 1))
  x[np.arange(16), attr * 4, 0, 0] = 1.0     # the attribute is visible in the input
  return {"image": jnp.asarray(x, jnp.float32),
          "label": jnp.asarray(np.arange(16) % 2, jnp.int32),
          "attribute": jnp.asarray(attr, jnp.int32)}


def test_every_declared_term_has_its_quantity_here():
  assert set(QUANTITY) == set(stages.PENALTY_TERMS)


@pytest.mark.parametrize("term", sorted(stages.PENALTY_TERMS))
@pytest.mark.parametrize("stage", ["disc", "adv"])
def test_each_defence_term_lowers_its_quantity(term, stage):
  """Ten steps of one encoder stage from one state, with the term and without: the term's
  quantity on the new features ends lower with it (the sign of its effect)."""
  batch = _batch()
  on_c, off_c = _config(**{term: 5.0, "l1": 3e-3, "l3": 3e-3}), _config(l1=3e-3, l3=3e-3)
  models = _models(on_c)
  opts = stages.make_optimizers(on_c.ran)
  state = jax.jit(lambda r: stages.init_state(models, opts, r))(jax.random.PRNGKey(0))
  ends = {}
  for label, c in (("on", on_c), ("off", off_c)):
    fn = jax.jit(getattr(stages.bind_stages(models, opts, c.ran), stage))
    s = state
    for _ in range(10):
      s, _ = fn(s, batch)
    z, _ = stages.features(models, s.params["encoder"], s.batch_stats["encoder"],
                           batch["image"], False)
    ends[label] = float(QUANTITY[term](z, batch, models))
  assert ends["on"] < ends["off"], ends


def test_the_reconstruction_push_raises_the_decoders_error():
  """lambda < 1 in the adversarial stage: the frozen decoder's error on the new features is
  higher than after the same steps at lambda = 1 (the task alone)."""
  batch = _batch()
  push, task = _config(lam=0.5, l3=3e-3), _config(lam=1.0, l3=3e-3)
  models = _models(push)
  opts = stages.make_optimizers(push.ran)
  state = jax.jit(lambda r: stages.init_state(models, opts, r))(jax.random.PRNGKey(0))
  gen = jax.jit(stages.bind_stages(models, opts, push.ran).gen)
  for _ in range(10):
    state, _ = gen(state, batch)
  errs = {}
  for label, c in (("push", push), ("task", task)):
    fn = jax.jit(stages.bind_stages(models, opts, c.ran).adv)
    s = state
    for _ in range(5):
      s, m = fn(s, batch)
    errs[label] = float(m["adv/" + losses.recon_metric_name(c.ran.recon_reduction)])
  assert errs["push"] > errs["task"], errs


def test_config_dataclass_round_trip():
  cfg = protocol.AttackConfig(attackers=("ridge",), seed=3)
  assert cfg.to_dict()["attackers"] == ("ridge",) and cfg.to_dict()["seed"] == 3
  assert dataclasses.replace(cfg, seed=4).seed == 4


# ---------------------------------------------------------------- the parts, by known answers


class _Fitted:
  """What `atk.fit_group` returns for one job, with a chosen validation loss: its
  reconstruction is the constant `out`."""

  def __init__(self, best_val, out, shape):
    self.best_val, self.out, self.shape = best_val, out, shape
    self.epochs, self.best_epoch, self.lr_cuts, self.converged = 3, 2, 0, True

  def predict(self, z):
    return np.full((len(z),) + self.shape, self.out, np.float32)


@pytest.fixture
def fake_fits(monkeypatch):
  """atk.fit_group and atk.fit_ridge replaced by recorders: `val_of(job name)` sets each
  trained job's validation loss; every call's jobs, inputs and sizes are kept."""
  calls = {"group": [], "ridge": []}
  val_of = {"fn": lambda name: 1.0}

  def group(jobs, inputs, targets, val_inputs, val_targets, **kw):
    calls["group"].append({"names": [j.name for j in jobs], "n": len(inputs),
                           "inputs": inputs, "noise": kw.get("input_noise", 0.0)})
    return {j.name: _Fitted(val_of["fn"](j.name), 0.0, targets["x"].shape[1:]) for j in jobs}

  def ridge(z, x, z_val, x_val, value_range):
    call = {"z": np.asarray(z), "n": len(z), "val": np.asarray(z_val), "scored": []}
    calls["ridge"].append(call)

    def predict(q):
      call["scored"].append(np.asarray(q))
      return np.zeros((len(q),) + x.shape[1:], np.float32)

    return dataclasses.make_dataclass("R", ["predict", "alpha"])(predict, 1.0)

  monkeypatch.setattr(atk, "fit_group", group)
  monkeypatch.setattr(atk, "fit_ridge", ridge)
  return calls, val_of


def _cfg(**kw):
  base = dict(attackers=("mlp_decoder",), mlp_hidden=(8,), retrain_classifier=False,
              n_show=2, n_scatter=10, fit_fractions=(1.0,))
  return protocol.AttackConfig(**{**base, **kw})


def test_search_keeps_the_lowest_validation_loss_and_measures_the_edge(fake_fits):
  """A grid of three capacities x two learning rates: the lowest validation loss is the
  family's attacker, the grid is recorded, and a choice on the largest capacity carries the
  gain over the one before it, relative to it: (5 - 4) / 5 = 0.2."""
  calls, val_of = fake_fits
  vals = {("8", "0.001"): 9.0, ("8", "0.01"): 7.0, ("16", "0.001"): 6.0,
          ("16", "0.01"): 5.0, ("32", "0.001"): 4.5, ("32", "0.01"): 4.0}
  val_of["fn"] = lambda n: vals[(n.split("[")[1][:-1], n.split("lr=")[1].split("]")[0])]
  cfg = _cfg(mlp_hidden=((8,), (16,), (32,)), learning_rates=(1e-3, 1e-2), fit_fractions=(0.5,),
             tolerance=0.1)
  result, _ = protocol.attack_features(_data(40, 10, 10), _flat, cfg, name="g")
  names = calls["group"][0]["names"]
  assert names[:2] == ["g/mlp_decoder[8][lr=0.001]", "g/mlp_decoder[8][lr=0.01]"]
  assert len(names) == 6
  m = result["attackers"]["mlp_decoder"]
  assert m["capacity"] == [32] and m["learning_rate"] == 0.01
  assert sorted(g["val_loss"] for g in m["search"]) == sorted(vals.values())
  mark = result["worst"]["convergence"]
  assert mark["edge_gains"] == {"capacity": pytest.approx(0.2)}
  assert not mark["converged"] and "capacity" in mark["reason"]
  # the refit on half the fit part: the chosen job again, on 20 of 40 examples
  refit = calls["group"][1]
  assert refit["names"] == ["g/mlp_decoder[32][lr=0.01]/fraction0.5"] and refit["n"] == 20
  assert mark["fractions"] == [0.5, 1.0]


def test_two_capacities_measure_the_edge_too(fake_fits):
  calls, val_of = fake_fits
  val_of["fn"] = lambda n: 8.0 if "[8]" in n else 6.0
  result, _ = protocol.attack_features(_data(40, 10, 10), _flat,
                                       _cfg(mlp_hidden=((8,), (16,)), fit_fractions=(0.5,),
                                            tolerance=0.5), name="g")
  assert result["worst"]["convergence"]["edge_gains"] == {"capacity": pytest.approx(0.25)}


def test_one_point_grid_has_no_search_record_and_no_edge(fake_fits):
  calls, _ = fake_fits
  result, _ = protocol.attack_features(_data(40, 10, 10), _flat, _cfg(fit_fractions=(0.0, 0.5)),
                                       name="g")
  assert calls["group"][0]["names"] == ["g/mlp_decoder[8]"]      # no [lr=...] with one rate
  m = result["attackers"]["mlp_decoder"]
  assert "search" not in m and "capacity" not in m
  mark = result["worst"]["convergence"]
  assert mark["edge_gains"] == {"capacity": 0.0}
  assert mark["fractions"] == [0.5, 1.0]       # 0 is no fit set: left out
  # only the whole fit part: no refit, no mark
  result, _ = protocol.attack_features(_data(40, 10, 10), _flat, _cfg(), name="h")
  assert result["worst"]["convergence"] is None


def test_ridge_fits_on_one_fixed_copy_of_each_threats_features(fake_fits):
  """Ridge's training features: one release drawn from (seed, 0), the mean of 4 from
  (seed, 0, 4), the clean features as they are; its refit on a fraction draws (seed, 0, 41)
  on the fraction's examples, chosen by the permutation of (seed, 41)."""
  calls, _ = fake_fits
  data, sigma = _data(40, 10, 10), 0.5
  cfg = _cfg(attackers=("ridge",), seed=3, fit_fractions=(0.25,))
  result, _ = protocol.attack_features(data, _flat, cfg, feature_noise=sigma, releases=(2, 4),
                                       clean=True, name="r")
  z = _flat(data.x_fit)
  single, mean2, mean4, clean = protocol.threats(sigma, (2, 4), True)
  fits = [c for c in calls["ridge"] if c["n"] == 40]
  np.testing.assert_array_equal(fits[0]["z"], single.features(z, sigma, (3, 0)))
  np.testing.assert_array_equal(fits[1]["z"], mean2.features(z, sigma, (3, 0, 2)))
  np.testing.assert_array_equal(fits[2]["z"], mean4.features(z, sigma, (3, 0, 4)))
  np.testing.assert_array_equal(fits[3]["z"], z)
  fits = fits[:1] + fits[2:]   # below: one release, the mean of 4, clean
  # validated and scored on each threat's own copies of the validation and test parts
  zv, zt = _flat(data.x_val), _flat(data.x_test)
  for fit, threat, seeds in zip(fits, (single, mean4, clean),
                                (((3, 1), (3, 2)), ((3, 1, 4), (3, 2, 4)), ((), ()))):
    np.testing.assert_array_equal(fit["val"], threat.features(zv, sigma, seeds[0]))
    np.testing.assert_array_equal(fit["scored"][0], threat.features(zt, sigma, seeds[1]))
  refits = [c for c in calls["ridge"] if c["n"] != 40]
  keep = np.sort(np.random.default_rng([3, 41]).permutation(40)[:10])
  assert [c["n"] for c in refits] == [10, 10, 10, 10]
  np.testing.assert_array_equal(refits[0]["z"], single.features(z[keep], sigma, (3, 0, 41)))
  assert result["worst"]["convergence"]["fractions"] == [0.25, 1.0]
  # a fraction of a handful of examples still fits on two
  calls["ridge"].clear()
  protocol.attack_features(data, _flat, _cfg(attackers=("ridge",), fit_fractions=(0.05,)),
                           name="r")
  assert [c["n"] for c in calls["ridge"]] == [40, 2]


def test_attack_features_scores_what_it_was_asked_to(fake_fits):
  calls, _ = fake_fits
  data = _data(40, 10, 10)
  module = atk.MLPDecoder(data.input_shape, (8,), data.value_range)
  result, _ = protocol.attack_features(data, _flat, _cfg(attackers=("ridge",)),
                                       feature_noise=0.5, mirrored=module, name="a")
  assert set(result["attackers"]) == {"ridge"} and calls["group"] == []
  assert result["feature_shape"] == [16]
  assert "releases" not in result                           # no further threat by default
  assert "accuracy_retrained" not in result
  with pytest.raises(TypeError):
    protocol.attack_features(data, _flat, _cfg(), 0.5)      # the options are keyword-only


def test_no_retrained_classifier_when_switched_off(monkeypatch, fake_fits):
  fits = []
  monkeypatch.setattr(atk, "fit", lambda *a, **k: fits.append(a) or _Fitted(0.0, 0.0, (2,)))
  data = _data(40, 10, 10)
  head = atk.MLPDecoder(data.input_shape, (8,), data.value_range)
  result, _ = protocol.attack_features(data, _flat, _cfg(), classifier_module=head, name="c")
  assert fits == [] and "accuracy_retrained" not in result
  result, _ = protocol.attack_features(data, _flat, _cfg(retrain_classifier=True), name="c")
  assert fits == [] and "accuracy_retrained" not in result      # nothing to retrain
  result, _ = protocol.attack_features(data, _flat, _cfg(retrain_classifier=True),
                                       classifier_module=head, name="c")
  assert len(fits) == 1
  assert result["accuracy_retrained"] == pytest.approx(np.mean(data.y_test == 0))   # argmax 0


def test_non_finite_features_of_either_part_are_refused():
  data = _data(20, 5, 5)

  def nan_on_test(x):
    z = _flat(x).copy()
    if len(x) == 5 and np.array_equal(x, data.x_test):
      z[0, 0] = np.nan
    return z

  with pytest.raises(FloatingPointError, match="non-finite"):
    protocol.attack_features(data, nan_on_test, _cfg(), name="n")


def test_pca3_projects_on_the_top_three_axes_and_pads_short_features():
  """Features whose centred columns are orthogonal with spreads 5, 4, 3, 2, 1 about a
  mean of 7: the projection is the first three columns, centred (up to sign)."""
  rng = np.random.default_rng(0)
  u, _ = np.linalg.qr(rng.standard_normal((50, 5)) - 0.0)
  u = u - u.mean(0)
  u, _ = np.linalg.qr(u)           # orthonormal and centred columns
  z = u * np.array([5.0, 4.0, 3.0, 2.0, 1.0]) + 7.0
  out = protocol.pca3(z.reshape(50, 5, 1))
  assert out.shape == (50, 3) and out.dtype == np.float32
  np.testing.assert_allclose(np.abs(out), np.abs(z - z.mean(0))[:, :3], atol=1e-4)
  short = protocol.pca3(z[:, :2])
  assert short.shape == (50, 3)
  np.testing.assert_allclose(np.abs(short[:, :2]), np.abs(z[:, :2] - z[:, :2].mean(0)),
                             atol=1e-4)
  np.testing.assert_array_equal(short[:, 2], 0.0)


class _Split:
  def __init__(self, n, offset):
    self.x = (np.arange(n, dtype=np.float32) + offset).reshape(n, 1, 1, 1)
    self.y = np.arange(n) % 2

  def __len__(self):
    return len(self.x)

  def get(self, idx):
    return {"image": self.x[idx], "label": self.y[idx]}


def _source(n_train, n_test):
  return dataclasses.make_dataclass(
      "S", ["train", "test", "input_shape", "num_classes", "value_range"])(
          _Split(n_train, 0), _Split(n_test, 1000), (1, 1, 1), 2, (0, 2000))


def test_prepare_data_limits_and_splits_the_training_part():
  d = protocol.prepare_data(_source(50, 30), protocol.AttackConfig())
  assert (len(d.x_fit), len(d.x_val), len(d.x_test)) == (45, 5, 30)      # 10 % validation
  assert sorted(np.concatenate([d.x_fit, d.x_val]).ravel()) == list(range(50))
  perm = np.random.default_rng(0).permutation(50)
  np.testing.assert_array_equal(d.x_val.ravel(), perm[:5])
  d = protocol.prepare_data(_source(50, 30), protocol.AttackConfig(attack_train_limit=20,
                                                                   test_limit=1))
  assert (len(d.x_fit), len(d.x_val), len(d.x_test)) == (18, 2, 1)
  assert d.x_test.ravel().tolist() == [1000.0]                  # the first test example
  assert sorted(np.concatenate([d.x_fit, d.x_val]).ravel()) == list(range(20))
  d = protocol.prepare_data(_source(4, 30), protocol.AttackConfig(test_limit=99))
  assert (len(d.x_fit), len(d.x_val), len(d.x_test)) == (3, 1, 30)   # at least one to validate
  d = protocol.prepare_data(_source(50, 30), protocol.AttackConfig(attack_train_limit=2))
  assert (len(d.x_fit), len(d.x_val)) == (1, 1)                     # the fewest that fit
  with pytest.raises(ValueError, match="attack_train_limit=1.*none to fit"):
    protocol.prepare_data(_source(50, 30), protocol.AttackConfig(attack_train_limit=1))


def test_reference_levels_are_the_class_means_and_the_mean_input():
  """Class 0 of the fit part has the inputs 0 and 2 (mean 1), class 1 has 4 (mean 4); a
  class without fit examples falls back to the overall mean (2)."""
  x = np.array([0.0, 2.0, 4.0], np.float32).reshape(3, 1, 1, 1)
  t = np.array([1.0, 5.0, 3.0], np.float32).reshape(3, 1, 1, 1)
  data = protocol.Data(x, np.array([0, 0, 1]), x[:1], np.array([0]), t, np.array([0, 1, 2]),
                       (1, 1, 1), 3, (0.0, 10.0))
  ref = protocol.reference_levels(data)
  assert ref["label_only"]["mse_sum"] == pytest.approx((0 + 1 + 1) / 3)   # 1, 4, 2 guessed
  assert ref["mean_image"]["mse_sum"] == pytest.approx((1 + 9 + 1) / 3)   # 2 guessed


def test_a_saved_point_can_be_saved_again(tmp_path):
  where = tmp_path / "sweep" / "points" / "p"            # its parents made as needed
  assert protocol.load(str(where)) == (None, None)
  protocol.save(str(where), {"a": 1}, {"z": np.zeros(2)})
  protocol.save(str(where), {"a": 2}, {"z": np.ones(2)})
  result, art = protocol.load(str(where))
  assert result == {"a": 2} and art["z"].tolist() == [1.0, 1.0]
  assert sorted(os.listdir(where)) == ["artifacts.npz", "result.json"]


def test_threats_are_values_and_a_mean_of_two_is_a_threat():
  t = protocol.Threat("single", 1)
  with pytest.raises(dataclasses.FrozenInstanceError):
    t.draws = 2
  assert {t: 1}[protocol.Threat("single", 1)] == 1
  assert [x.name for x in protocol.threats(0.5, (2, 1))] == ["single", "mean_2"]
  assert [x.name for x in protocol.threats(0.5)] == ["single"]


def test_attack_config_defaults_are_the_documented_ones():
  """The defaults every caller that sets nothing gets (AttackConfig's comments)."""
  c = protocol.AttackConfig()
  assert (c.attack_train_limit, c.val_fraction, c.test_limit, c.seed) == (0, 0.1, 0, 0)
  assert c.attackers == protocol.ATTACKERS and c.retrain_classifier
  assert (c.classifier_fit.max_epochs, c.classifier_fit.patience) == (30, 3)
  assert (c.resnet_width, c.resnet_blocks, c.inversion) == (64, 1, False)
  assert tuple(c.mlp_hidden) == (1024, 1024) and tuple(c.fit_fractions) == (1.0,)


def test_inversion_starts_from_the_decoder_with_the_lowest_validation_loss(fake_fits,
                                                                         monkeypatch):
  calls, val_of = fake_fits
  val_of["fn"] = lambda n: 1.0 if "resnet" in n else 2.0
  seen = {}

  def invert(features, z_val, x0_val, x_val, z_test, x0_test, *args):
    seen["x0"] = x0_test
    return np.asarray(x0_test), {"weight": 1.0}

  monkeypatch.setattr(protocol.inversion, "search_and_invert", invert)
  cfg = _cfg(attackers=("mlp_decoder", "resnet_decoder"), inversion=True, resnet_width=4)
  result, _ = protocol.attack_features(_data(40, 10, 10), _flat, cfg, name="i",
                                       invert_features=lambda x: x)
  assert result["attackers"]["inversion"]["started_from"] == "resnet_decoder"
  assert "x0" in seen
