"""The sweep: CSV schema, figures, and resume (finished points are not redone)."""

import csv
import os

import numpy as np
import pytest

from configs import digits_lenet
from ran_jax import export, input_pipeline, parallel, sweep
from ran_jax.program import InputSpec, build_program
from ran_jax.privacy import attackers as atk
from ran_jax.privacy import methods, protocol, results


def fake_train(calls):
  """Exports untrained networks: the sweep only needs an export to evaluate."""

  def train_fn(cfg, workdir):
    calls.append((os.path.basename(workdir), float(cfg.ran.lam)))
    source = input_pipeline.load_dataset(cfg.data)
    program = build_program(cfg, parallel.make_mesh(), InputSpec.of(source), total_steps=6)
    export.export_trained(workdir, program.create_state(0), cfg, program.input_spec, source.name)
    return {}

  return train_fn


def eval_cfg():
  fit = atk.FitConfig(batch_size=16, max_epochs=1, patience=1)
  return protocol.AttackConfig(attackers=("mlp_decoder", "ridge"), attacker_fit=fit,
                               classifier_fit=fit,
                         retrain_classifier=False, mlp_hidden=(16,), n_show=4, n_scatter=40)


def test_sweep_csv_figures_and_resume(tmp_path, monkeypatch):
  config = digits_lenet.get_config("smoke")
  out = str(tmp_path / "sweep")
  calls = []
  rows = sweep.run_sweep(config, out, lams=[0.2], noise_factors=[0.5], eval_cfg=eval_cfg(),
                         train_fn=fake_train(calls))
  assert sorted(calls) == [("dnn", 1.0), ("ran_lam0.2", 0.2)]

  # ---- schema
  with open(os.path.join(out, "results.csv"), newline="") as f:
    reader = csv.DictReader(f)
    assert reader.fieldnames == list(results.CSV_COLUMNS)
    got = list(reader)
  assert [(r["method"], r["setting"]) for r in got] == [
      ("ran", "lam=0.2"), ("dnn", "lam=1"), ("dnn_resized", "factor=0.5"),
      ("noisy", "factor=0.5")]
  # The accuracy of a trained point is its exported networks' on the test split (recomputed
  # here with plain forwards); every row's is its point's.
  source = input_pipeline.load_dataset(config.data)
  te = source.test.get(np.arange(len(source.test)))
  x, y = np.asarray(te["image"], np.float32), np.asarray(te["label"])
  for row, run in ((got[0], "ran_lam0.2"), (got[1], "dnn")):
    t = export.load_trained(os.path.join(out, "runs", run))
    want = float(np.mean(np.argmax(np.asarray(t.classify(t.encode(x))), -1) == y))
    assert float(row["accuracy"]) == pytest.approx(want, abs=1e-6), run   # float32
  for r in got:
    errs = {a: float(r[f"{a}_mse_sum"]) for a in protocol.ALL_ATTACKERS if r[f"{a}_mse_sum"]}
    assert r["worst_attacker"] == min(errs, key=errs.get)
    assert float(r["worst_mse_sum"]) == pytest.approx(min(errs.values()))
    np.testing.assert_allclose(float(r["worst_mse_sum"]) / float(r["worst_mse_mean"]), 28 * 28,
                               rtol=1e-4)
  assert got[0]["own_decoder_mse_sum"] and not got[0]["identity_mse_sum"]
  assert got[3]["identity_mse_sum"] and not got[3]["own_decoder_mse_sum"]
  for fig in ("pareto.png", "reconstructions.png", "features3d.png"):
    assert os.path.getsize(os.path.join(out, fig)) > 1000
  # each point records the data's value range (the figures draw images in it) and, for
  # trained attackers, the epochs run and whether the fit converged
  res, _ = protocol.load(os.path.join(out, "points", "ran_lam0.2"))
  assert res["value_range"] == [0.0, 1.0]
  assert got[0]["mlp_decoder_converged"] == "False"  # 1 epoch: the cap, not a plateau
  assert got[0]["mlp_decoder_epochs"] == "1" and got[0]["mirrored_decoder_epochs"] == ""

  # ---- resume: nothing retrained or re-evaluated, same rows
  def boom(*a, **k):
    raise AssertionError("a finished point was evaluated again")

  monkeypatch.setattr(methods, "attack_trained", boom)
  monkeypatch.setattr(methods, "attack_dnn_resized", boom)
  monkeypatch.setattr(methods, "attack_noisy", boom)
  rows2 = sweep.run_sweep(config, out, lams=[0.2], noise_factors=[0.5], eval_cfg=eval_cfg(),
                          train_fn=fake_train(calls), make_figures=False)
  assert len(calls) == 2
  assert rows2 == rows
  monkeypatch.undo()

  # ---- a lost point is re-evaluated from the existing export, not retrained
  os.remove(os.path.join(out, "points", "ran_lam0.2", protocol.RESULT_FILE))
  rows3 = sweep.run_sweep(config, out, lams=[0.2, 0.4], noise_factors=[0.5], eval_cfg=eval_cfg(),
                          train_fn=fake_train(calls), make_figures=False)
  assert calls[2:] == [("ran_lam0.4", 0.4)]
  assert [r["setting"] for r in rows3][:2] == ["lam=0.2", "lam=0.4"]


def test_plan_order_and_methods_filter():
  pts = sweep.plan([0.1, 0.5], [0.3], [0.7])
  assert [p[2] for p in pts] == ["ran_lam0.1", "ran_lam0.5", "dnn", "dnn_resized_f0.7",
                                 "noisy_f0.3"]
  assert [p[2] for p in sweep.plan([0.1], [0.3], [0.3], include=("ran",))] == ["ran_lam0.1"]
  with pytest.raises(ValueError):
    sweep.plan([0.1], [0.3], [0.3], include=("gan",))


def test_variants_parse_train_with_overrides_and_take_added_attackers(tmp_path):
  name, ov = sweep.parse_variant(
      'bn8_s0.5:model.bottleneck_dim=8,model.feature_noise=0.5,ran.extra_decoders=("mlp",)')
  assert name == "bn8_s0.5"
  assert ov == {"model.bottleneck_dim": 8, "model.feature_noise": 0.5,
                "ran.extra_decoders": ("mlp",)}
  with pytest.raises(ValueError, match="Bad variant"):
    sweep.parse_variant("no_overrides")
  config = digits_lenet.get_config("smoke")
  with pytest.raises(ValueError, match="Unknown config field 'model.bottleneck'"):
    sweep.apply_overrides(config, {"model.bottleneck": 8})

  out = str(tmp_path / "sweep")
  calls = []
  variant = "bn8_s0.5:model.bottleneck_dim=8,model.feature_noise=0.5,ran.lam=1.0"
  rows = sweep.run_sweep(config, out, lams=[], noise_factors=[], eval_cfg=eval_cfg(),
                         train_fn=fake_train(calls), include=("variant",), variants=[variant],
                         make_figures=False)
  assert calls == [("variant_bn8_s0.5", 1.0)]
  (row,) = rows
  assert row["method"] == "variant" and float(row["feature_noise"]) == 0.5
  assert float(row["fisher_bound_mse_sum"]) > 0      # a noisy release has a bound
  assert float(row["label_only_mse_sum"]) < float(row["mean_image_mse_sum"])
  trained = export.load_trained(os.path.join(out, "runs", "variant_bn8_s0.5"))
  assert trained.feature_noise == 0.5 and trained.models.encoder.bottleneck_dim == 8

  # asking for one more attacker family trains only that one and re-takes the worst case
  more = protocol.AttackConfig(**{**eval_cfg().__dict__,
                                  "attackers": ("mlp_decoder", "ridge", "mirrored_decoder")})
  rows2 = sweep.run_sweep(config, out, lams=[], noise_factors=[], eval_cfg=more,
                          train_fn=fake_train(calls), include=("variant",), variants=[variant],
                          make_figures=False)
  (row2,) = rows2
  assert row2["mirrored_decoder_mse_sum"] and not row["mirrored_decoder_mse_sum"]
  assert row2["mlp_decoder_mse_sum"] == row["mlp_decoder_mse_sum"]
  errs = [float(row2[f"{a}_mse_sum"]) for a in ("own_decoder", "mirrored_decoder",
                                                 "mlp_decoder", "ridge")]
  assert float(row2["worst_mse_sum"]) == pytest.approx(min(errs))
  assert len(calls) == 1
