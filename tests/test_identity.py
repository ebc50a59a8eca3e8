"""Attribute-inference attacks (ran_jax.privacy.identity) on tiny synthetic data: splits that
cannot leak, attackers that find a planted attribute and none where there is none,
repeated releases, and the reconstruction protocol's repeated-release threats."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ran_jax.data.source import ArraySplit, DataError, DataSource, attach_attribute
from ran_jax.privacy import identity, protocol

N_ATTR = 4


class FakeTrained:
  """A frozen 'encoder': tanh of a fixed linear map, released with N(0, sigma^2) noise."""

  def __init__(self, dim_in, dim_out=8, sigma=0.0, seed=0):
    self.w = jnp.asarray(np.random.default_rng(seed).normal(0, 1, (dim_in, dim_out)) / 4,
                         jnp.float32)
    self.feature_noise = sigma

  def features(self, x):
    return jnp.tanh(x.reshape(x.shape[0], -1) @ self.w)

  def encode(self, x, key=None):
    z = self.features(x)
    return z + self.feature_noise * jax.random.normal(key, z.shape) if self.feature_noise else z


def make_source(n=240, planted=True, rule="stratified", seed=0, label_reveals=False):
  """[n, 4, 4, 1] inputs whose mean depends on the attribute (planted) or not at all; the
  task label is independent of the attribute, or (label_reveals) names its pair."""
  rng = np.random.default_rng(seed)
  att = np.arange(n) % N_ATTR
  means = rng.normal(0, 1, (N_ATTR, 16))
  x = (means[att] if planted else 0) + rng.normal(0, 0.6, (n, 16))
  x = x.reshape(n, 4, 4, 1).astype(np.float32)
  y = rng.integers(0, 2, n)
  if not planted:
    att = rng.permutation(att)
  if label_reveals:
    y = att // 2
  te = np.arange(n) % 3 == 0
  src = DataSource("fake", ArraySplit(x[~te], y[~te]), ArraySplit(x[te], y[te]), (4, 4, 1), 2,
                   (-10.0, 10.0))
  order = np.arange(n)
  return attach_attribute(src, "who", {"train": att[~te], "test": att[te]},
                          {"train": order[~te], "test": order[te]}, rule)


FAST = dict(seeds=(0,), bootstrap=200, person_groups=200, person_releases=5,
            fit=identity.atk.FitConfig(batch_size=64, max_epochs=30, patience=3))


@pytest.fixture(scope="module")
def planted_result():
  src = make_source()
  cfg = identity.IdentityConfig(**FAST)
  return identity.attack_identity(FakeTrained(16), src, cfg)


def test_attackers_find_a_planted_attribute(planted_result):
  r = planted_result
  assert r["chance"] == pytest.approx(0.25) and 0.2 <= r["majority"] <= 0.3
  assert set(r["settings"]) == {"single", "raw"}  # noise-free: N releases = one = clean
  single = r["settings"]["single"]
  assert set(single["attackers"]) == set(identity.IdentityConfig().attackers)
  assert single["worst"]["top1"] == max(a["top1"] for a in single["attackers"].values())
  assert single["worst"]["top1"] > 0.8
  lo, hi = single["worst"]["ci95"]
  assert lo <= single["worst"]["top1"] <= hi and hi - lo < 0.3
  assert single["person"]["top1"] >= single["worst"]["top1"] - 0.05  # 5 releases help
  assert r["settings"]["raw"]["relative_to_raw"] == pytest.approx(1.0)
  assert single["relative_to_raw"] > 0.5


def test_label_only_floor(planted_result):
  """The same attackers given only the task label: near chance where the label says
  nothing of the person (while the releases name it), at the level the label reveals where
  it does (the label names one of two pairs: 1/2), for one example and for a person."""
  floor = planted_result["label_only"]
  assert set(floor["attackers"]) == set(identity.IdentityConfig().attackers)
  assert floor["worst"]["top1"] < 0.45 < planted_result["settings"]["single"]["worst"]["top1"]
  h = identity.headline(planted_result)
  assert h["label_only"] == floor["worst"]["top1"]
  assert h["label_only_person"] == floor["person"]["top1"]
  src = make_source(seed=4, label_reveals=True)
  cfg = identity.IdentityConfig(**{**FAST, "raw": False})
  r = identity.attack_identity(FakeTrained(16), src, cfg)
  floor = r["label_only"]
  assert floor["worst"]["top1"] == pytest.approx(0.5, abs=0.12)
  assert floor["person"]["top1"] == pytest.approx(0.5, abs=0.12)
  alone = identity.label_only_floor(src, cfg)   # no encoder: the same attackers, split, seeds
  assert alone["label_only"]["worst"] == floor["worst"] and alone["chance"] == r["chance"]
  off = identity.attack_identity(FakeTrained(16), src, identity.IdentityConfig(
      **{**FAST, "raw": False, "label_only": False, "attackers": ("logreg",)}))
  assert "label_only" not in off and identity.headline(off)["label_only"] is None


def test_no_leakage_is_reported_where_there_is_none():
  src = make_source(planted=False, seed=1)
  cfg = identity.IdentityConfig(**{**FAST, "attackers": ("logreg", "knn"), "raw": False})
  r = identity.attack_identity(FakeTrained(16), src, cfg)
  w = r["settings"]["single"]["worst"]
  assert w["top1"] < 0.45 and w["ci95"][0] < 0.3  # chance 0.25, 80 test examples


def test_averaging_releases_defeats_the_noise():
  src = make_source(seed=2)
  cfg = identity.IdentityConfig(**{**FAST, "attackers": ("knn",), "raw": False,
                                   "releases": (16,)})
  r = identity.attack_identity(FakeTrained(16, sigma=1.5), src, cfg)
  assert set(r["settings"]) == {"single", "mean_16", "clean"}
  top = {k: v["worst"]["top1"] for k, v in r["settings"].items()}
  assert top["single"] < top["mean_16"] - 0.1 and top["single"] < top["clean"] - 0.1, top


def test_time_split_drops_the_boundary_windows():
  n = 120
  att, lab = np.arange(n) % 2, (np.arange(n) // 2) % 3
  x = np.zeros((n, 2, 2, 1), np.float32)
  src = DataSource("har", ArraySplit(x[:80], lab[:80]), ArraySplit(x[80:], lab[80:]),
                   (2, 2, 1), 3)
  attach_attribute(src, "subject", {"train": att[:80], "test": att[80:]},
                   {"train": np.arange(80), "test": np.arange(40)}, "time")
  pool = identity.split_pool(src, identity.IdentityConfig())
  # The pool lists train then test rows in file (time) order; a group is (subject, activity)
  # over both splits. Ranks in time within a group: fit < val < test, one window dropped at
  # each boundary (consecutive windows overlap).
  rank = np.empty(n, int)
  for a in range(2):
    for c in range(3):
      g = np.flatnonzero((pool.attribute == a) & (pool.label == c))
      rank[g] = np.arange(len(g))
      f, v, t = (rank[np.intersect1d(part, g)] for part in (pool.fit, pool.val, pool.test))
      assert len(f) and len(v) and len(t)
      assert v.min() - f.max() == 2 and t.min() - v.max() == 2
      assert len(t) == 7 and len(f) + len(v) == 11  # 20 windows: 12 | drop 1 | 7 test
  assert not set(pool.fit) & set(pool.test) and not set(pool.val) & set(pool.test)
  n_used = len(pool.fit) + len(pool.val) + len(pool.test)
  assert n_used < n and len(pool.test) / n_used == pytest.approx(0.4, abs=0.1)


def test_recording_split_and_missing_attribute():
  src = make_source(rule="recording")
  src.train.order, src.test.order = src.train.order % 50, src.test.order % 50
  pool = identity.split_pool(src, identity.IdentityConfig())
  order = np.r_[src.train.order, src.test.order]
  assert order[pool.test].max() < 5 and order[pool.val].min() >= 5
  assert order[pool.val].max() < 10 and order[pool.fit].min() >= 10
  src.attribute_name = ""
  with pytest.raises(DataError, match="carries no attribute"):
    identity.split_pool(src, identity.IdentityConfig())


def test_person_groups_hold_one_person_each():
  att = np.r_[np.zeros(12), np.ones(3), np.full(10, 2)].astype(int)
  g = identity.person_groups(att, 10, 50, 0)
  assert g.shape == (50, 10)
  for row in g:
    assert len(set(row)) == 10 and len(set(att[row])) == 1 and att[row[0]] != 1


def test_reconstruction_attackers_trained_on_repeated_releases():
  """The reconstruction protocol's further threats for a noisy encoder: attackers trained
  on the mean of 4 releases and on the clean features reconstruct better than from one
  release; a noise-free encoder has no further threat."""
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 1, (300, 4, 4, 1)).astype(np.float32)
  y = rng.integers(0, 2, 300)
  data = protocol.Data(x[:200], y[:200], x[200:240], y[200:240], x[240:], y[240:], (4, 4, 1), 2,
                       (0.0, 1.0))
  trained = FakeTrained(16, dim_out=16, sigma=0.5)
  cfg = protocol.AttackConfig(attackers=("ridge",), retrain_classifier=False)
  feats = lambda b: np.asarray(trained.features(b))  # noqa: E731
  res, _ = protocol.attack_features(data, feats, cfg, feature_noise=0.5, releases=(4,),
                                    clean=True)
  single = res["worst"]["mse_sum"]
  mean4 = res["releases"]["mean_4"]["worst"]["mse_sum"]
  clean = res["releases"]["clean"]["worst"]["mse_sum"]
  assert clean < mean4 < single
  quiet, _ = protocol.attack_features(data, feats, cfg, releases=(4,), clean=True)
  assert "releases" not in quiet


def test_format_identity_prints_every_setting(planted_result):
  text = identity.format_identity(planted_result)
  assert "chance 0.2500" in text and "label only 0." in text
  for setting in ("single", "raw", "label only"):
    assert any(line.startswith(setting) for line in text.splitlines())


def test_forest_finds_what_linear_and_distance_attackers_miss():
  """An attribute in the signs of two features (an XOR, among 20 uninformative ones of a
  larger scale): logistic regression cannot separate it and kNN is drowned by the other features,
  the forest's axis-aligned splits name it; its probabilities have one column per attribute
  value even when a value is absent from its fit data."""
  rng = np.random.default_rng(0)

  def data(n):
    z = np.concatenate([rng.uniform(-1, 1, (n, 2)), rng.normal(0, 3, (n, 20))], 1)
    return z.astype(np.float32), ((z[:, 0] > 0) ^ (z[:, 1] > 0)).astype(np.int64)

  (zf, af), (zv, av), (zt, at) = data(1500), data(300), data(600)
  cfg = identity.IdentityConfig(**FAST)
  top1 = {}
  for fam in ("logreg", "knn", "forest"):
    proba, chosen = identity.fit_attacker(fam, zf, af, zv, av, 3, cfg, seed=0)
    p = proba(zt)
    assert p.shape == (600, 3) and np.allclose(p.sum(1), 1.0)
    top1[fam] = float((p.argmax(-1) == at).mean())
  assert top1["forest"] > 0.85, top1
  assert top1["logreg"] < 0.6 and top1["knn"] < top1["forest"] - 0.1, top1
  assert chosen["min_samples_leaf"] in cfg.forest_min_leaf
