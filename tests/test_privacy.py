"""Metrics against hand-computed values; attackers that must (and must not) succeed."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ran_jax.privacy import attackers as atk
from ran_jax.privacy import protocol, metrics


def naive_ssim(x, y, data_range, sigma=1.5, truncate=3.5):
  """Direct windowed SSIM of one 2-D image pair, written independently of metrics.py."""
  r = int(truncate * sigma + 0.5)
  t = np.arange(-r, r + 1)
  g = np.exp(-t ** 2 / (2 * sigma ** 2))
  w = np.outer(g, g) / np.outer(g, g).sum()
  xp, yp = np.pad(x, r, mode="symmetric"), np.pad(y, r, mode="symmetric")
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  out = np.zeros_like(x)
  for i in range(x.shape[0]):
    for j in range(x.shape[1]):
      a, b = xp[i:i + 2 * r + 1, j:j + 2 * r + 1], yp[i:i + 2 * r + 1, j:j + 2 * r + 1]
      ma, mb = (w * a).sum(), (w * b).sum()
      va, vb = (w * a * a).sum() - ma ** 2, (w * b * b).sum() - mb ** 2
      cab = (w * a * b).sum() - ma * mb
      out[i, j] = (((2 * ma * mb + c1) * (2 * cab + c2))
                   / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
  return out.mean()


def test_mse_conventions():
  x = np.zeros((2, 4, 4, 1))
  y = np.full((2, 4, 4, 1), 0.5)
  np.testing.assert_allclose(metrics.mse_per_example(x, y, "sum"), [4.0, 4.0])    # 16 * 0.25
  np.testing.assert_allclose(metrics.mse_per_example(x, y, "mean"), [0.25, 0.25])


def test_psnr_known_values():
  assert metrics.psnr(0.01, 1.0) == pytest.approx(20.0)
  assert metrics.psnr(1.0, 255.0) == pytest.approx(20 * np.log10(255.0))
  assert metrics.psnr(0.0, 1.0) == float("inf")
  m = metrics.reconstruction_metrics(np.zeros((3, 8, 8, 1)), np.full((3, 8, 8, 1), 0.1))
  assert m["psnr"] == pytest.approx(20.0)
  assert m["mse_sum"] == pytest.approx(64 * 0.01)
  # A [0, 2] data range raises PSNR by 20*log10(2) for the same error.
  m2 = metrics.reconstruction_metrics(np.zeros((3, 8, 8, 1)), np.full((3, 8, 8, 1), 0.1), (0, 2))
  assert m2["psnr"] == pytest.approx(20.0 + 20 * np.log10(2))


def test_ssim_known_values():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(2, 12, 12, 1))
  np.testing.assert_allclose(metrics.ssim_per_example(x, x, 1.0), [1.0, 1.0])
  # Constant images a, b: SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 * 1)^2.
  a, b = np.full((1, 9, 9, 1), 0.2), np.full((1, 9, 9, 1), 0.6)
  assert metrics.ssim_per_example(a, b, 1.0)[0] == pytest.approx((0.24 + 1e-4) / (0.40 + 1e-4))
  # A noisy pair against an independent direct implementation.
  y = np.clip(x + rng.normal(scale=0.2, size=x.shape), 0, 1)
  got = metrics.ssim_per_example(x, y, 1.0)
  want = [naive_ssim(x[i, ..., 0], y[i, ..., 0], 1.0) for i in range(2)]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert got.max() < 0.9


def test_ssim_data_range_matters():
  rng = np.random.default_rng(1)
  x = rng.uniform(size=(1, 10, 10, 1))
  y = x + 0.1
  assert metrics.ssim_per_example(x, y, 1.0)[0] < metrics.ssim_per_example(x, y, 255.0)[0]


def naive_ssim_axes(x, y, data_range, sigma=1.5, truncate=3.5):
  """The same windows written per axis: a 1-D Gaussian along each axis longer than 1 (an
  axis of length 1 has nothing to window), reflected at the edges as often as needed."""
  r = int(truncate * sigma + 0.5)
  t = np.arange(-r, r + 1)
  g = np.exp(-t ** 2 / (2 * sigma ** 2))
  g = g / g.sum()

  def window(a):
    for axis in (0, 1):
      if a.shape[axis] > 1:
        pad = [(r, r) if ax == axis else (0, 0) for ax in (0, 1)]
        p = np.pad(a, pad, mode="symmetric")
        a = sum(g[k] * np.take(p, range(k, k + a.shape[axis]), axis=axis)
                for k in range(2 * r + 1))
    return a

  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  mx, my = window(x), window(y)
  vx, vy, cxy = window(x * x) - mx ** 2, window(y * y) - my ** 2, window(x * y) - mx * my
  return (((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
          ).mean()


@pytest.mark.parametrize("shape", [(1, 16), (16, 1), (2, 9), (9, 2), (12, 12)])
def test_ssim_of_rows_columns_and_short_images_against_direct_windows(shape):
  """1-D signals (HAR's windows are [1, T] or [T, 1]), an image two rows high, and a
  square one, on a value range of width 2 (C2 = (0.03 x 2)^2)."""
  rng = np.random.default_rng(2)
  x = rng.uniform(-1, 1, size=(3,) + shape + (1,))
  y = np.clip(x + rng.normal(scale=0.3, size=x.shape), -1, 1)
  got = metrics.ssim_per_example(x, y, 2.0)
  want = [naive_ssim_axes(x[i, ..., 0], y[i, ..., 0], 2.0) for i in range(3)]
  np.testing.assert_allclose(got, want, rtol=1e-9)
  if shape == (12, 12):
    np.testing.assert_allclose(want, [naive_ssim(x[i, ..., 0], y[i, ..., 0], 2.0)
                                      for i in range(3)], rtol=1e-9)


def test_ssim_refuses_arrays_it_cannot_compare():
  x = np.zeros((2, 4, 4, 1))
  with pytest.raises(ValueError, match="ssim expects two"):
    metrics.ssim_per_example(x, np.zeros((2, 4, 5, 1)), 1.0)
  with pytest.raises(ValueError, match="ssim expects two"):
    metrics.ssim_per_example(x[..., 0], x[..., 0], 1.0)


def test_psnr_and_ssim_use_the_width_of_the_value_range():
  """On [-1, 1] the peak is 2: PSNR = 10 log10(4 / MSE), SSIM's constants use 2."""
  x, rec = np.zeros((3, 8, 8, 1)), np.full((3, 8, 8, 1), 0.1)
  m = metrics.reconstruction_metrics(x, rec, (-1.0, 1.0))
  assert m["psnr"] == pytest.approx(10 * np.log10(4.0 / 0.01))
  # constant images: (2ab + C1) / (a^2 + b^2 + C1) with C1 = (0.01 x 2)^2
  assert m["ssim"] == pytest.approx((0 + 4e-4) / (0.01 + 4e-4))


def _images(n, shape=(4, 4, 1), seed=0):
  return np.random.default_rng(seed).uniform(0.05, 0.95, size=(n,) + shape).astype(np.float32)


def test_ridge_recovers_invertible_linear_encoder():
  x = _images(600)
  a = np.random.default_rng(3).normal(size=(16, 16))
  z = x.reshape(600, -1) @ a                         # invertible linear "encoder"
  r = atk.fit_ridge(z[:400], x[:400], z[400:500], x[400:500], (0.0, 1.0))
  rec = r.predict(z[500:])
  assert rec.shape == (100, 4, 4, 1)
  np.testing.assert_allclose(rec, x[500:], atol=1e-4)


def test_ridge_cannot_invert_a_constant_encoder():
  x = _images(300)
  z = np.ones((300, 5))
  rec = atk.fit_ridge(z[:200], x[:200], z[200:250], x[200:250], (0.0, 1.0)).predict(z[250:])
  assert metrics.mse_per_example(x[250:], rec, "mean").mean() > 0.05   # ~ variance 0.075


def test_mlp_attacker_inverts_identity_encoder():
  x = _images(2048)
  cfg = atk.FitConfig(batch_size=64, learning_rate=3e-3, max_epochs=40, patience=4)
  f = atk.fit(atk.MLPDecoder((4, 4, 1), (128,)), atk.recon_loss, x[:1600], x[:1600],
              x[1600:1800], x[1600:1800], cfg)
  mse = metrics.mse_per_example(x[1800:], f.predict(x[1800:]), "mean").mean()
  assert mse < 2e-3, mse        # vs. ~0.067 for predicting the mean


def test_early_stopping_stops_and_keeps_best():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(512, 8)).astype(np.float32)
  x = _images(512, seed=5)                           # independent of z: nothing to learn
  cfg = atk.FitConfig(batch_size=64, max_epochs=200, patience=2)
  f = atk.fit(atk.MLPDecoder((4, 4, 1), (64,)), atk.recon_loss, z[:400], x[:400], z[400:],
              x[400:], cfg)
  assert f.epochs < 200 and f.best_epoch <= f.epochs
  # every plateau first cuts the learning rate; the last one stops the fit
  assert f.lr_cuts == cfg.lr_decays and f.converged
  assert f.epochs - f.best_epoch <= cfg.patience * (cfg.lr_decays + 1)


def test_worst_case_is_lowest_error():
  by = {"a": {"mse_sum": 5.0, "mse_mean": 0.5, "psnr": 10.0, "ssim": 0.2},
        "b": {"mse_sum": 2.0, "mse_mean": 0.2, "psnr": 12.0, "ssim": 0.1}}
  w = protocol.worst_case(by)
  assert w["attacker"] == "b" and w["mse_sum"] == 2.0
  assert w["psnr"] == 12.0 and w["ssim"] == 0.2


# ---------------------------------------------------------------- Fisher bound


def test_fisher_bound_of_a_linear_encoder_matches_closed_form_and_holds():
  from ran_jax.privacy import bound

  rng = np.random.default_rng(0)
  w = rng.normal(size=(16, 24)).astype(np.float32)
  fn = lambda x: x.reshape(x.shape[0], -1) @ w
  x = _images(256)
  sigma = 0.7
  got = bound.fisher_mse_bound(fn, x, sigma, num_probes=32)
  exact = sigma ** 2 * 16 / float(np.sum(w.astype(np.float64) ** 2))
  assert got["mse_mean"] == pytest.approx(exact, rel=0.03)
  assert got["mse_sum"] == pytest.approx(16 * got["mse_mean"])
  # The unbiased least-squares attacker on z = W^T x + noise cannot beat the bound.
  z = x.reshape(256, -1) @ w + sigma * rng.normal(size=(256, 24))
  x_hat = np.linalg.lstsq(w.T.astype(np.float64), z.T, rcond=None)[0].T
  ls_mse = float(np.mean((x_hat - x.reshape(256, -1)) ** 2))
  assert ls_mse >= exact
  assert bound.fisher_mse_bound(fn, x, 0.0)["mse_mean"] == 0.0


def test_attackers_see_the_release_noise():
  """An identity 'encoder' with noise: attackers train and score on noisy copies, so the
  release is far harder to invert than without noise."""
  x = _images(1200)
  data = protocol.Data(x[:900], np.zeros(900, np.int32), x[900:1000], np.zeros(100, np.int32),
                       x[1000:], np.zeros(200, np.int32), (4, 4, 1), 1, (0.0, 1.0))
  cfg = protocol.AttackConfig(attackers=("ridge",), retrain_classifier=False, n_show=2,
                              n_scatter=10)
  clean, _ = protocol.attack_features(data, lambda a: a, cfg, name="clean")
  noisy, _ = protocol.attack_features(data, lambda a: a, cfg, feature_noise=0.5, name="noisy")
  assert clean["worst"]["mse_mean"] < 1e-4
  assert noisy["worst"]["mse_mean"] > 0.02 and noisy["feature_noise"] == 0.5
  # the reference levels: the mean image scores the data's variance (uniform(0.05, 0.95))
  assert noisy["reference"]["mean_image"]["mse_mean"] == pytest.approx(0.9 ** 2 / 12, rel=0.15)


# ---------------------------------------------------------------- the compiled group training


def _recon_data(n=320, n_val=64, d=8, seed=0):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(n + n_val, d)).astype(np.float32)
  x = _images(n + n_val, seed=seed + 1)
  return z[:n], x[:n], z[n:], x[n:]


def test_group_trains_each_job_as_if_alone_and_skips_stopped_jobs():
  """Two decoders in one program: each ends with the weights, epochs and schedule it
  gets alone (same batches, same noise, same init); the one that stops first (its
  lower cap) no longer moves while the other goes on."""
  z, x, zv, xv = _recon_data()
  a = atk.Job("a", atk.MLPDecoder((4, 4, 1), (32,)), atk.recon_loss, "x",
              atk.FitConfig(batch_size=32, max_epochs=4, patience=1, lr_decays=1))
  b = atk.Job("b", atk.MLPDecoder((4, 4, 1), (16, 16)), atk.recon_loss, "x",
              atk.FitConfig(batch_size=32, max_epochs=2))
  noise = dict(input_noise=0.3, noise_kind="gaussian")
  both = atk.fit_group([a, b], z, {"x": x}, zv, {"x": xv}, **noise)
  alone = atk.fit_group([a], z, {"x": x}, zv, {"x": xv}, **noise)["a"]
  assert both["b"].epochs == 2 and not both["b"].converged      # the cap, reported
  for field in ("epochs", "best_epoch", "lr_cuts", "converged"):
    assert getattr(both["a"], field) == getattr(alone, field), field
  assert both["a"].best_val == pytest.approx(alone.best_val, rel=1e-5)
  chex.assert_trees_all_close(both["a"].variables, alone.variables, rtol=1e-4, atol=1e-6)
  # b stopped after epoch 2: a later epoch with b inactive leaves its state untouched
  group = atk.Group([a, b], z, {"x": x}, zv, {"x": xv}, **noise)
  before = jax.device_get(group.states[1])
  vals, improved = group.epoch(jax.random.PRNGKey(1), [1e-3, 1e-3], [True, False],
                               [np.inf, np.inf], [1e-4, 1e-4])
  assert np.isfinite(vals[0]) and improved[0] and not improved[1]
  chex.assert_trees_all_equal(jax.device_get(group.states[1]), before)


def test_group_keeps_the_best_epoch_and_compiles_once_per_shape():
  z, x, zv, xv = _recon_data(seed=2)
  job = atk.Job("m", atk.MLPDecoder((4, 4, 1), (16,)), atk.recon_loss, "x",
                atk.FitConfig(batch_size=32, max_epochs=6, patience=1))
  f = atk.fit_group([job], z, {"x": x}, zv, {"x": xv})["m"]
  # the kept weights are the best epoch's: they score the reported best validation loss
  val = float(atk.recon_loss(f.predict(zv), xv))
  assert val == pytest.approx(f.best_val, rel=1e-4)
  # another encoder's features of the same shape (a sweep's next point) reuse the program
  z2, x2, zv2, xv2 = _recon_data(seed=3)
  atk.fit_group([job], z2, {"x": x2}, zv2, {"x": xv2})
  fn = atk._epoch_fn(((job.module, job.loss, job.target),), 32, None)
  assert fn._cache_size() == 1


def test_group_refuses_jobs_it_cannot_batch_together():
  z, x, zv, xv = _recon_data(n=64, n_val=8)
  m = atk.MLPDecoder((4, 4, 1), (8,))
  a = atk.Job("a", m, atk.recon_loss, "x", atk.FitConfig(batch_size=16))
  with pytest.raises(ValueError, match="batch_size and seed"):
    atk.fit_group([a, atk.Job("b", m, atk.recon_loss, "x", atk.FitConfig(batch_size=8))],
                  z, {"x": x}, zv, {"x": xv})
  with pytest.raises(ValueError, match="distinct names"):
    atk.fit_group([a, a], z, {"x": x}, zv, {"x": xv})
  with pytest.raises(ValueError, match="No targets"):
    atk.fit_group([atk.Job("c", m, atk.ce_loss, "y")], z, {"x": x}, zv, {"x": xv})
  with pytest.raises(ValueError, match="noise_kind"):
    atk.fit_group([a], z, {"x": x}, zv, {"x": xv}, input_noise=0.1, noise_kind="uniform")


def test_attacker_noise_is_the_release_noise():
  """The noise drawn inside the compiled epoch is `stages.release`'s, key for key."""
  import types

  from ran_jax import stages

  z = jnp.asarray(np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32))
  key = jax.random.PRNGKey(3)
  chex.assert_trees_all_equal(atk.add_noise(z, key, 0.5, "gaussian"),
                              stages.release(types.SimpleNamespace(feature_noise=0.5), z, key))


def test_resnet_decoder_fast_convs_match_xla(shape=(7, 7, 2), stages=2):
  """The residual decoder's row-patch convolutions compute nn.Conv's function."""
  z = jnp.asarray(np.random.default_rng(0).normal(size=(3, 12)).astype(np.float32))
  fast = atk.ResNetDecoder(shape, (0.0, 1.0), 16, stages=stages, conv_impl="fast")
  xla = atk.ResNetDecoder(shape, (0.0, 1.0), 16, stages=stages, conv_impl="xla")
  v = jax.jit(fast.init)(jax.random.PRNGKey(0), z)
  chex.assert_trees_all_equal_shapes(v, jax.eval_shape(xla.init, jax.random.PRNGKey(0), z))
  run = lambda m: jax.jit(lambda v, z: m.apply(v, z, train=True, mutable=["batch_stats"])[0])
  out, want = run(fast)(v, z), run(xla)(v, z)
  assert out.shape == (3,) + shape
  np.testing.assert_allclose(out, want, atol=2e-5)


def test_protocol_trains_the_decoder_families_together():
  """attack_features: the trained families go through one group on the released features
  (noise drawn per batch), each scored with its own schedule's outcome."""
  x = _images(400)
  data = protocol.Data(x[:300], np.zeros(300, np.int32), x[300:350], np.zeros(50, np.int32),
                       x[350:], np.zeros(50, np.int32), (4, 4, 1), 1, (0.0, 1.0))
  fit = atk.FitConfig(batch_size=32, max_epochs=3, patience=1)
  cfg = protocol.AttackConfig(attackers=("mirrored_decoder", "mlp_decoder"), attacker_fit=fit,
                              retrain_classifier=False, mlp_hidden=(16,), n_show=2,
                              n_scatter=10)
  res, art = protocol.attack_features(data, lambda a: a, cfg, feature_noise=0.2,
                                      mirrored=atk.MLPDecoder((4, 4, 1), (8,)), name="t")
  assert set(res["attackers"]) == {"mirrored_decoder", "mlp_decoder"}
  for m in res["attackers"].values():
    assert 1 <= m["best_epoch"] <= m["epochs"] <= 3 and np.isfinite(m["mse_sum"])
  assert res["worst"]["attacker"] in res["attackers"]
  assert art["rec_mlp_decoder"].shape == (2, 4, 4, 1)


# ---------------------------------------------------------------- threats beyond one release


def _threat_data(n_fit=600, n_val=100, n_test=200):
  x = _images(n_fit + n_val + n_test, seed=5)
  y = np.zeros(len(x), np.int32)
  a, b = n_fit, n_fit + n_val
  return protocol.Data(x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:], (4, 4, 1), 1, (0.0, 1.0))


def test_threats_and_their_features():
  """The mean of N releases keeps noise of std sigma / sqrt(N), drawn from explicit seeds;
  the clean threat is the features; a noise-free release has only one threat."""
  assert [t.name for t in protocol.threats(0.5, (4, 16), clean=True)] == [
      "single", "mean_4", "mean_16", "clean"]
  assert [t.name for t in protocol.threats(0.0, (4, 16), clean=True)] == ["single"]
  mean4 = protocol.Threat("mean_4", 4)
  assert mean4.noise(0.5) == pytest.approx(0.25) and protocol.Threat("clean", 0).noise(0.5) == 0
  z = np.zeros((4000, 16), np.float32)
  m = mean4.features(z, 0.5, (0, 1))
  chex.assert_shape(m, z.shape)
  assert np.std(m) == pytest.approx(0.25, rel=0.03)
  # literally the mean of four single releases, each from its own seed
  want = np.mean([protocol.add_release_noise(z, 0.5, (0, 1, r)) for r in range(4)], 0)
  chex.assert_trees_all_close(m, want, atol=1e-6)
  chex.assert_trees_all_equal(protocol.Threat("clean", 0).features(z + 1, 0.5, (0, 1)), z + 1)
  chex.assert_trees_all_equal(protocol.Threat("single", 1).features(z, 0.5, (0, 1)),
                              protocol.add_release_noise(z, 0.5, (0, 1)))


def test_each_threat_is_fitted_on_its_own_features(monkeypatch):
  """Every attacker family is fitted once per threat, on that threat's kind of feature:
  the in-step noise of the trained families (sigma, sigma / sqrt(N), none), the fixed copy
  of ridge, and the validation features, cut from the training split's held-out part."""
  data = _threat_data()
  sigma = 0.8
  calls = {"group": [], "ridge": []}
  group, ridge = atk.fit_group, atk.fit_ridge

  def spy_group(jobs, inputs, targets, val_inputs, val_targets, input_noise=0.0, **kw):
    calls["group"].append((input_noise, np.asarray(val_inputs), val_targets["x"]))
    return group(jobs, inputs, targets, val_inputs, val_targets, input_noise=input_noise, **kw)

  def spy_ridge(features, inputs, val_features, val_inputs, value_range, **kw):
    calls["ridge"].append((np.asarray(features), np.asarray(val_features), val_inputs))
    return ridge(features, inputs, val_features, val_inputs, value_range, **kw)

  monkeypatch.setattr(atk, "fit_group", spy_group)
  monkeypatch.setattr(atk, "fit_ridge", spy_ridge)
  cfg = protocol.AttackConfig(attackers=("mlp_decoder", "ridge"), retrain_classifier=False,
                              attacker_fit=atk.FitConfig(batch_size=64, max_epochs=2),
                              mlp_hidden=(16,), n_show=2, n_scatter=10)
  res, _ = protocol.attack_features(data, lambda a: a, cfg, feature_noise=sigma,
                                    releases=(4,), clean=True, name="t")
  assert set(res["releases"]) == {"mean_4", "clean"}
  expected = [sigma, sigma / 2, 0.0]    # single, mean of 4, clean
  assert [c[0] for c in calls["group"]] == pytest.approx(expected)
  assert len(calls["ridge"]) == 3
  clean_fit = data.x_fit.reshape(len(data.x_fit), -1)
  clean_val = data.x_val.reshape(len(data.x_val), -1)
  for want, (_, z_val, x_val), (z_ridge, z_val_r, _) in zip(expected, calls["group"],
                                                              calls["ridge"]):
    chex.assert_trees_all_equal(x_val, data.x_val)      # never the test split
    chex.assert_trees_all_equal(z_val, z_val_r)
    assert np.std(z_val.reshape(len(z_val), -1) - clean_val) == pytest.approx(want, abs=0.03)
    assert np.std(z_ridge.reshape(len(z_ridge), -1) - clean_fit) == pytest.approx(want, abs=0.03)
  for name, rel in res["releases"].items():
    assert rel["trained_on"] == name
    assert set(rel["attackers"]) == {"mlp_decoder", "ridge"}
    assert 1 <= rel["attackers"]["mlp_decoder"]["epochs"] <= 2
    assert rel["worst"]["mse_sum"] == min(m["mse_sum"] for m in rel["attackers"].values())


def test_clean_feature_attacker_beats_one_trained_on_releases():
  """A toy encoder (the identity) released with heavy noise: a decoder trained on the noisy
  releases learns to shrink towards the mean, so scored on the clean features it stays far
  from the input, while one trained on the clean features (what an attacker holding the
  encoder does) nearly inverts them. The protocol's clean-feature figure is the latter:
  scoring the release-trained attackers on the clean features would overstate privacy."""
  data = _threat_data()
  sigma = 1.0
  fit = atk.FitConfig(batch_size=32, max_epochs=40, patience=3)
  cfg = protocol.AttackConfig(attackers=("mlp_decoder", "ridge"), retrain_classifier=False,
                              attacker_fit=fit, mlp_hidden=(64,), n_show=2, n_scatter=10)
  res, _ = protocol.attack_features(data, lambda a: a, cfg, feature_noise=sigma, clean=True)
  clean = res["releases"]["clean"]["attackers"]
  chex.assert_tree_all_finite({a: m["mse_mean"] for a, m in clean.items()})
  # The same families trained on single releases and scored on the clean features.
  job = atk.Job("m", atk.MLPDecoder((4, 4, 1), (64,), (0.0, 1.0)), atk.recon_loss, "x", fit)
  z_val = protocol.add_release_noise(data.x_val, sigma, (0, 1))
  noisy_mlp = atk.fit_group([job], data.x_fit, {"x": data.x_fit}, z_val, {"x": data.x_val},
                            input_noise=sigma, noise_kind="gaussian")["m"]
  noisy_ridge = atk.fit_ridge(protocol.add_release_noise(data.x_fit, sigma, (0, 0)),
                              data.x_fit, z_val, data.x_val, data.value_range)
  for attacker, model in (("mlp_decoder", noisy_mlp), ("ridge", noisy_ridge)):
    scored_only = metrics.reconstruction_metrics(data.x_test, model.predict(data.x_test),
                                                 data.value_range)["mse_mean"]
    assert clean[attacker]["mse_mean"] < 0.5 * scored_only, (attacker, clean, scored_only)
  assert res["releases"]["clean"]["worst"]["mse_mean"] < 0.5 * res["worst"]["mse_mean"]
