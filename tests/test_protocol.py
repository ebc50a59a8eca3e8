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
