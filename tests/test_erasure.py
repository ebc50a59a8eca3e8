"""Linear erasure of an attribute (ran_jax.privacy.erasure, ran_jax.erase): LEACE removes all
linear information, the class-conditional eraser keeps the task, the change is minimal; the
eraser folded into the exported encoder (features, releases, the converted network), its file
(round trip, damage), the eraser part of every attribute split, and `ran_jax.erase` on a run."""

import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from ran_jax import export, input_pipeline, parallel
from ran_jax.data.source import ArraySplit, DataSource, attach_attribute
from ran_jax.privacy import erasure, identity
from ran_jax.program import InputSpec, build_program

K = 3


def _synthetic(n=4000, d=12, correlated=True, seed=0):
  """Features = class mean + attribute mean + noise; the attribute equals the class 70 % of
  the time (correlated) or is independent of it."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, K, n)
  a = np.where(rng.random(n) < 0.7, y, rng.integers(0, K, n)) if correlated \
      else rng.integers(0, K, n)
  x = rng.normal(0, 2, (K, d))[y] + rng.normal(0, 1, (K, d))[a] + rng.normal(0, 1, (n, d))
  return x, a, y


def _readable(x, t, n_fit=3000):
  """Held-out accuracy of a logistic regression reading `t` from `x`."""
  return LogisticRegression(max_iter=2000).fit(x[:n_fit], t[:n_fit]).score(x[n_fit:], t[n_fit:])


# ---------------------------------------------------------------- the fit


def test_leace_removes_all_linear_information():
  x, a, y = _synthetic(correlated=False)
  assert _readable(x, a) > 0.9
  e = erasure.fit_eraser(x[:3000], a[:3000], within_class=False)
  assert e.rank == K - 1 and e.matrix.shape == (12, 12) and e.bias.shape == (12,)
  assert erasure.residual_cross_covariance(e, x[:3000], a[:3000]) < 1e-10
  assert np.abs(erasure.cross_covariance(e.apply(x[:3000]), a[:3000])).max() < 1e-10
  assert abs(_readable(e.apply(x), a) - 1 / K) < 0.05       # chance, on held-out examples
  assert _readable(e.apply(x), y) > 0.95                     # the independent class stays


def test_within_class_eraser_keeps_the_task():
  """With the attribute tied to the class, plain LEACE erases part of the class too; the
  class-conditional eraser keeps the class and leaves the attribute readable only as well
  as the class itself reveals it (the label-only level)."""
  x, a, y = _synthetic(correlated=True)
  plain = erasure.fit_eraser(x[:3000], a[:3000], within_class=False)
  within = erasure.fit_eraser(x[:3000], a[:3000], y[:3000], within_class=True)
  assert within.fitted_on["within_class"] and not plain.fitted_on["within_class"]
  assert erasure.residual_cross_covariance(within, x[:3000], a[:3000], y[:3000]) < 1e-10
  label_only = _readable(np.eye(K)[y], a)
  assert _readable(x, a) > label_only + 0.1                 # the features say more than the class
  assert _readable(within.apply(x), a) <= label_only + 0.02
  assert _readable(within.apply(x), y) > 0.98
  assert _readable(plain.apply(x), y) < 0.85
  with pytest.raises(ValueError, match="task labels"):
    erasure.fit_eraser(x, a, within_class=True)


def test_the_change_is_minimal():
  """An attribute independent of the features barely moves them (one direction of 12, at
  about its share of the variance); a planted one moves them less than an orthogonal
  projection that also erases it (LEACE is the least change)."""
  x, a, _ = _synthetic(correlated=False)
  rng = np.random.default_rng(1)
  coin = rng.integers(0, 2, len(x))
  e = erasure.fit_eraser(x, coin, within_class=False)
  xc = x - x.mean(0)
  moved = np.mean(np.sum((e.apply(x) - x) ** 2, 1)) / np.mean(np.sum(xc ** 2, 1))
  assert e.rank == 1 and moved < 2 / x.shape[1]
  e = erasure.fit_eraser(x, a, within_class=False)
  cov = erasure.cross_covariance(x, a)
  q, _ = np.linalg.qr(cov[:, np.linalg.svd(cov)[1] > 1e-9])     # its column space
  ortho = x - xc @ q @ q.T
  assert np.abs(erasure.cross_covariance(ortho, a)).max() < 1e-10  # also an eraser
  change = lambda z: np.mean(np.sum((z - x) ** 2, 1))  # noqa: E731
  assert change(e.apply(x)) < change(ortho)


def test_apply_keeps_any_leading_shape_and_jax():
  x, a, _ = _synthetic(n=600, d=12, correlated=False)
  e = erasure.fit_eraser(x, a, within_class=False)
  grid = x[:8].reshape(2, 4, 2, 6).astype(np.float32)      # [2, 4] examples of 2 x 6 features
  out = e.apply(grid)
  assert out.shape == grid.shape and out.dtype == np.float32
  np.testing.assert_allclose(out.reshape(8, 12), e.apply(x[:8]), atol=1e-5)
  jitted = jax.jit(e.apply)(grid)
  np.testing.assert_allclose(np.asarray(jitted), out, atol=1e-5)
  with pytest.raises(erasure.EraserError, match="12 values"):
    e.apply(np.zeros((3, 5)))


# ---------------------------------------------------------------- the eraser part of the splits


def _source(rule, n=480):
  rng = np.random.default_rng(0)
  att, lab = np.arange(n) % 4, (np.arange(n) // 4) % 3
  x = rng.normal(0, 1, (n, 2, 2, 1)).astype(np.float32)
  tr = np.arange(n) < 320
  order = np.where(tr, np.arange(n), np.arange(n) - 320)
  if rule == "recording":
    order = order % 50
  src = DataSource("fake", ArraySplit(x[tr], lab[tr]), ArraySplit(x[~tr], lab[~tr]), (2, 2, 1), 3)
  return attach_attribute(src, "who", {"train": att[tr], "test": att[~tr]},
                          {"train": order[tr], "test": order[~tr]}, rule)


@pytest.mark.parametrize("rule", ["time", "recording", "stratified"])
@pytest.mark.parametrize("scored_part", ["test", "validation"])
def test_eraser_part_is_disjoint_from_every_attack_part(rule, scored_part):
  src = _source(rule)
  base = identity.split_pool(src, identity.IdentityConfig(scored_part=scored_part))
  assert len(base.eraser) == 0
  pool = identity.split_pool(src, identity.IdentityConfig(scored_part=scored_part,
                                                          eraser_fraction=0.2))
  er = set(pool.eraser)
  assert er and all(not er & set(p) for p in (pool.fit, pool.val, pool.test))
  assert len(pool.fit) < len(base.fit)
  if rule == "recording":
    order = np.r_[src.train.order, src.test.order]
    assert set(order[pool.eraser]) == set(range(10, 20))    # 0.2 of 50 recordings, after 5-9
    assert order[pool.fit].min() >= (25 if scored_part == "validation" else 20)
  if rule == "stratified":
    assert np.all(pool.split[pool.eraser] == 0)             # training-split examples only
    assert abs(len(pool.eraser) - 0.2 * len(pool.x)) <= 4
    again = identity.split_pool(src, identity.IdentityConfig(eraser_fraction=0.2, seed=5))
    np.testing.assert_array_equal(again.eraser, pool.eraser)   # its own seed, not the attack's
  if rule == "time":  # the earliest windows of each group, one dropped before the rest
    for a in range(4):
      for c in range(3):
        g = np.flatnonzero((pool.attribute == a) & (pool.label == c))
        rest = np.concatenate([np.intersect1d(p, g) for p in (pool.fit, pool.val, pool.test)])
        e = np.intersect1d(pool.eraser, g)
        assert len(e) and rest.min() - e.max() >= 2


def test_attacks_on_an_erased_run_hold_the_eraser_part_out():
  class Fitted:
    eraser = erasure.Eraser(np.eye(2), np.zeros(2), 1, {
        "attribute": "who", "eraser_fraction": 0.3, "eraser_seed": 7, "time_gap": 2,
        "val_recordings": 5})

  cfg = identity.with_eraser_split(identity.IdentityConfig(), Fitted(), "who")
  assert (cfg.eraser_fraction, cfg.eraser_seed, cfg.time_gap) == (0.3, 7, 2)
  assert identity.with_eraser_split(identity.IdentityConfig(), object()).eraser_fraction == 0


# ---------------------------------------------------------------- a run with an eraser


def who_arrays() -> dict:
  """A tiny own-data .npz's arrays: 28x28 inputs whose attribute `who` (4 values) is a
  brighter quadrant, labels independent of it; 160 training and 80 test examples."""
  rng = np.random.default_rng(0)
  arrays = {}
  for split, n in (("train", 160), ("test", 80)):
    who = np.arange(n) % 4
    x = rng.uniform(0, 0.5, (n, 28, 28, 1)).astype(np.float32)
    for i, w in enumerate(who):
      x[i, 14 * (w // 2):14 * (w // 2 + 1), 14 * (w % 2):14 * (w % 2 + 1), 0] += 0.5
    arrays.update({f"x_{split}": x, f"y_{split}": rng.integers(0, 3, n), f"who_{split}": who})
  return arrays


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """(workdir, export): an exported (untrained) noisy encoder with a 16-d bottleneck on a
  tiny .npz whose attribute `who` is a brighter quadrant; `export(wd)` exports it again."""
  from configs import digits_lenet

  arrays = who_arrays()
  root = tmp_path_factory.mktemp("erase")
  np.savez(root / "who.npz", **arrays)
  c = digits_lenet.get_config("smoke")
  c.data.name, c.data.attribute = str(root / "who.npz"), "who"
  c.data.train_limit = c.data.test_limit = 0
  c.model.widths, c.model.classifier_hidden, c.model.conv_impl = (4, 8), (16,), "xla"
  c.model.bottleneck_dim, c.model.feature_noise = 16, 0.1
  source = input_pipeline.load_dataset(c.data)
  program = build_program(c, parallel.make_mesh(), InputSpec.of(source), total_steps=6)
  state = program.create_state(0)

  def export_to(wd):
    export.export_trained(str(wd), state, c, program.input_spec, source.name)

  wd = str(root / "run")
  export_to(wd)
  return wd, export_to


@pytest.fixture()
def workdir(run):
  return run[0]


def _base_features(trained, x):
  return erasure.clean_features(trained, x, eraser=None)


def test_erase_folds_into_the_encoder_and_the_export(workdir):
  """`ran_jax.erase` on a run: the report, the file, and every way the run is loaded
  (features, releases, the network the deployment converts) includes the map."""
  import ran_jax
  from ran_jax.deploy import convert

  wd = os.path.join(os.path.dirname(workdir), "erased")
  shutil.copytree(workdir, wd)
  report = ran_jax.erase(workdir=wd, classifier_epochs=1)
  assert report["attribute"] == "who" and report["within_class"]
  assert 1 <= report["rank"] <= 3 and report["residual_cross_covariance"] < 1e-8
  assert report["split"]["rule"] == "stratified" and report["split"]["eraser_examples"] == 48
  assert report["split"]["eraser_test_split_examples"] == 0
  assert report["accuracy"]["test_examples"] == 80 and report["deployed"] is None
  assert set(report["accuracy"]) >= {"before", "refit_without_eraser",
                                     "erased_trained_classifier", "after"}
  with open(os.path.join(wd, "export", erasure.ERASER_REPORT)) as f:
    assert json.load(f)["rank"] == report["rank"]

  trained = export.load_trained(wd)
  plain = export.load_trained(wd, eraser=False)
  assert trained.eraser is not None and plain.eraser is None
  assert trained.eraser.fitted_on["classifier_refit"]["epochs"] == 1
  x = np.random.default_rng(0).uniform(0, 1, (5, 28, 28, 1)).astype(np.float32)
  base = np.asarray(plain.features(x))
  np.testing.assert_allclose(np.asarray(trained.features(x)), trained.eraser.apply(base),
                             atol=1e-5)
  assert np.abs(np.asarray(trained.features(x)) - base).max() > 1e-3    # it does move them
  key = jax.random.PRNGKey(3)
  np.testing.assert_allclose(np.asarray(trained.encode(x, key)),
                             np.asarray(plain.encode(x, key)) - base + trained.eraser.apply(base),
                             atol=1e-5)                     # the same noise on erased features
  # The refit classifier is the one loaded with the eraser.
  leaves = jax.tree.leaves(jax.tree.map(lambda p, q: float(np.abs(p - q).max()),
                                        trained.params["classifier"], plain.params["classifier"]))
  assert max(leaves) > 0
  # The function the LiteRT conversion converts is the erased encoder.
  fn, x_shape, z_shape = convert.encoder_fn(trained)
  eps = np.random.default_rng(1).normal(0, 1, z_shape).astype(np.float32)
  np.testing.assert_allclose(np.asarray(fn(x[:1], eps)),
                             trained.eraser.apply(base[:1]) + trained.feature_noise * eps,
                             atol=1e-5)
  # Attacks on the run hold the eraser part out.
  source = input_pipeline.load_dataset(trained.config.data)
  cfg = identity.with_eraser_split(identity.IdentityConfig(), trained, "who")
  pool = identity.split_pool(source, cfg)
  assert cfg.eraser_fraction == 0.2 and len(pool.eraser) == 48
  assert not set(pool.eraser) & set(np.r_[pool.fit, pool.val, pool.test])

  # Removal brings the trained encoder back.
  assert ran_jax.erase(workdir=wd, remove=True)["removed"]
  assert export.load_trained(wd).eraser is None


@pytest.mark.slow  # TensorFlow's conversion: about 10 s
def test_litert_encoder_includes_the_eraser(workdir, tmp_path):
  """The phone's .tflite of an erased run is one network that computes eraser(features) +
  noise: equal to the JAX release with the same eps."""
  from ran_jax.deploy import client, convert

  wd = tmp_path / "run"
  shutil.copytree(workdir, wd)
  trained = export.load_trained(str(wd))
  src = input_pipeline.load_dataset(trained.config.data)
  x = np.asarray(src.train.get(np.arange(64))["image"])
  e = erasure.fit_eraser(_base_features(trained, x), np.arange(64) % 4, within_class=False,
                         fitted_on={"eraser_fraction": 0.2, "step": trained.meta["step"]})
  erasure.save_eraser(wd / "export" / erasure.ERASER_FILE, e, trained.params["classifier"])
  erased = export.load_trained(str(wd))
  enc = client.TFLiteEncoder.from_bytes(convert.convert_encoder(erased))
  eps = np.random.default_rng(1).normal(0, 1, (3, 16)).astype(np.float32)
  want = e.apply(_base_features(trained, x[:3])) + erased.feature_noise * eps
  np.testing.assert_allclose(enc(x[:3], eps), want, atol=1e-5)
  unerased = _base_features(trained, x[:3]) + erased.feature_noise * eps
  assert np.abs(enc(x[:3], eps) - unerased).max() > 1e-3


def test_eraser_file_round_trip_and_damage(run, tmp_path):
  workdir, export_to = run
  trained = export.load_trained(workdir)
  src = input_pipeline.load_dataset(trained.config.data)
  x = np.asarray(src.train.get(np.arange(64))["image"])
  z = _base_features(trained, x)
  e = erasure.fit_eraser(z, np.arange(64) % 4, within_class=False,
                         fitted_on={"eraser_fraction": 0.2, "step": trained.meta["step"]})
  path = tmp_path / erasure.ERASER_FILE
  erasure.save_eraser(path, e, trained.params["classifier"])
  back, cls = erasure.load_eraser(path, 16, trained.params["classifier"])
  np.testing.assert_array_equal(back.matrix, e.matrix)
  np.testing.assert_array_equal(back.bias, e.bias)
  assert back.rank == e.rank and back.fitted_on == e.fitted_on
  jax.tree.map(np.testing.assert_array_equal, cls, trained.params["classifier"])
  # Loaded into a run: features are the eraser applied to the features without it.
  wd = tmp_path / "run"
  shutil.copytree(workdir, wd)
  shutil.copy(path, wd / "export" / erasure.ERASER_FILE)
  erased = export.load_trained(str(wd))
  np.testing.assert_allclose(np.asarray(erased.features(x)), e.apply(z), atol=1e-5)
  # A file from another step, of another size, or damaged: a clear error naming the file.
  target = wd / "export" / erasure.ERASER_FILE
  erasure.save_eraser(target, dataclasses.replace(e, fitted_on={"step": 99}),
                      trained.params["classifier"])
  with pytest.raises(erasure.EraserError, match="step 99"):
    export.load_trained(str(wd))
  small = erasure.fit_eraser(z[:, :8], np.arange(64) % 4, within_class=False)
  erasure.save_eraser(target, small, trained.params["classifier"])
  with pytest.raises(erasure.EraserError, match=f"{target}.*does not fit"):
    export.load_trained(str(wd))
  erasure.save_eraser(target, e)                           # no classifier in it
  with pytest.raises(erasure.EraserError, match="no classifier"):
    export.load_trained(str(wd))
  target.write_bytes(path.read_bytes()[:200])
  with pytest.raises(erasure.EraserError, match=f"Cannot read the eraser {target}"):
    export.load_trained(str(wd))
  assert export.load_trained(str(wd), eraser=False).eraser is None
  # A new export of the run removes its eraser (it was fitted on the old networks).
  shutil.copy(path, target)
  export_to(wd)
  assert not target.exists()
