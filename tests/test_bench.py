"""The benchmark tools in bench/: the input-rate helper, the engines, the PyTorch reference.

torch (the `[bench]` extra) is optional: the reference's tests skip without it, except
where RAN_TEST_REQUIRE_BENCH=1 (.ci/run installs torch and sets it), where they fail.
"""

import json
import os
import re

import numpy as np
import pytest

from tests import data_fakes
from tests.helpers import bench_torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_library_never_imports_the_tools():
  pattern = re.compile(r"^\s*(from|import)\s+bench\b", re.MULTILINE)
  offenders = []
  for dirpath, _, files in os.walk(os.path.join(ROOT, "ran_jax")):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(dirpath, f)
        with open(path, encoding="utf-8") as fh:
          if pattern.search(fh.read()):
            offenders.append(os.path.relpath(path, ROOT))
  assert not offenders, offenders


def _har_config(tmp_path):
  cfg = __import__("configs.har_lenet", fromlist=["x"]).get_config("smoke")
  cfg.data.manual_dir = str(data_fakes.write_har_npz(tmp_path / "m", n_train=64))
  cfg.data.data_dir = str(tmp_path / "tfds")
  cfg.data.train_limit = 0
  return cfg


def test_input_rate(tmp_path):
  """The input side alone, through the benchmark's one input-rate helper."""
  from bench.engines import input_rate
  from ran_jax import input_pipeline as ip
  from ran_jax import parallel

  cfg = _har_config(tmp_path)
  src = ip.load_dataset(cfg.data)
  pipe = ip.InputPipeline(src, cfg.batch_size, cfg.eval_batch_size, cfg.seed, parallel.make_mesh())
  rate = input_rate(pipe, 20)
  assert rate > 200, rate  # in-memory HAR windows: thousands/s even on a loaded CI machine


def test_jax_engine_runs_the_program_fused_and_per_stage(tmp_path):
  """`bench input`'s report: a real config through build_program, fused and per stage."""
  from bench import throughput
  from bench.engines import JaxEngine
  from ran_jax import parallel
  from ran_jax.program import InputSpec

  cfg = _har_config(tmp_path)
  cfg.model.widths = (4, 8)
  cfg.model.classifier_hidden = (16,)
  r = throughput.report(cfg, input_steps=5, train_steps=2)
  assert np.isfinite([r["input_examples_per_s"], r["trainer_examples_per_s"]]).all()
  assert r["ratio"] == pytest.approx(r["input_examples_per_s"] / r["trainer_examples_per_s"])
  batch = {"image": np.random.default_rng(0).random((16, 128, 1, 9), np.float32),
           "label": np.arange(16, dtype=np.int32) % 6}
  engine = JaxEngine(cfg, parallel.make_mesh(), InputSpec((128, 1, 9), 6), batch, per_stage=True)
  engine.run()
  engine.run_stages()
  assert int(engine.state.step) == 2
  assert set(engine.compile_s) == {"iteration", "stages"}


# ---------------------------------------------------------------- PyTorch reference


def test_torch_losses_follow_ran_jax_losses():
  torch = bench_torch()
  from bench import torch_reference as tr
  from ran_jax import losses

  rng = np.random.default_rng(0)
  x, xr = rng.random((5, 7, 6, 3), np.float32), rng.random((5, 7, 6, 3), np.float32)
  logits, y = rng.standard_normal((5, 10)).astype(np.float32), rng.integers(0, 10, 5)
  t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
  for red in ("sum", "mean"):
    np.testing.assert_allclose(float(tr.recon_error(t(x), t(xr), red)),
                               float(losses.recon_error(x, xr, red)), rtol=1e-5)
  np.testing.assert_allclose(float(tr.cross_entropy(t(logits), t(y))),
                             float(losses.cross_entropy(logits, y.astype(np.int32))), rtol=1e-5)
  np.testing.assert_allclose(float(tr.accuracy(t(logits), t(y))),
                             float(losses.accuracy(logits, y.astype(np.int32))))


@pytest.mark.parametrize("encoder,shape", [("lenet5", (28, 28, 1)), ("lenet5", (128, 1, 9)),
                                           ("alexnet", (32, 32, 3))])
def test_torch_networks_have_the_jax_shapes(encoder, shape):
  torch = bench_torch()
  from bench import torch_reference as tr
  from ran_jax.models import build_encoder_spec, layer_shapes

  spec = build_encoder_spec(encoder, shape, (4, 8) if encoder == "lenet5" else None)
  x = torch.rand(2, shape[2], shape[0], shape[1])
  with torch.no_grad():
    z = tr.Encoder(spec, shape)(x)
    h, w, c = layer_shapes(spec, shape)[-1]
    assert tuple(z.shape) == (2, c, h, w)
    assert tuple(tr.Decoder(spec, shape, (0.0, 1.0))(z).shape) == tuple(x.shape)


def test_torch_iteration_makes_only_algorithm_1_passes():
  """k=2: encoder 2k+1 forwards, classifier k+1 (disc, adv), decoder k+1 (gen, adv)."""
  bench_torch()
  from bench import torch_reference as tr
  from ran_jax.models import build_encoder_spec

  shape = (28, 28, 1)
  ran = tr.TorchRAN(build_encoder_spec("lenet5", shape, (4, 8)), shape, 10, (16,), k=2)
  calls = {"E": 0, "C": 0, "D": 0}
  for name in calls:
    getattr(ran, name).register_forward_hook(
        lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
  x, y = tr.make_batch(4, shape, 10)
  metrics = ran.iteration(x, y)
  assert calls == {"E": 5, "C": 3, "D": 3}, calls
  assert {"disc/ce", "gen/recon_sse", "adv/loss"} <= set(metrics)
  assert all(p.requires_grad for p in ran.D.parameters())  # unfrozen after adv


# ---------------------------------------------------------------- attacker case


def test_attacker_bench_writes_its_json_without_torch(tmp_path):
  """`python -m bench attackers`: the project's epoch and the per-batch loop, same run."""
  import json

  from bench import attacker_bench

  out = tmp_path / "att.json"
  attacker_bench.run(["--n=64", "--batch=32", "--rounds=1", "--warmup=1",
                      "--families=mirrored_decoder", "--no-torch", f"--out={out}"])
  r = json.loads(out.read_text())
  assert r["complete"] and r["setup"]["steps_per_epoch"] == 2
  assert set(r["examples_per_s"]) == {"jax/mirrored_decoder", "jax_steps/mirrored_decoder"}
  # One round: the ratio is that round's, the quotient of the two speeds of the same run.
  eps = r["examples_per_s"]
  assert r["ratios"]["jax_over_jax_steps/mirrored_decoder"] == pytest.approx(
      eps["jax/mirrored_decoder"] / eps["jax_steps/mirrored_decoder"])
  assert "no-torch" in r["torch_note"]


@pytest.mark.parametrize("family", ["mirrored_decoder", "resnet_decoder"])
def test_torch_attackers_are_the_jax_architectures(family):
  """Same parameter count and output shape as the JAX attacker; an epoch takes steps."""
  torch = bench_torch()
  import jax

  from bench import attacker_bench as ab
  from bench import torch_attackers as ta

  jm, tm = ab.jax_module(family, 16), ab.torch_module(family, 16)
  z0 = np.zeros((2, ab.FEATURES), np.float32)
  params = jax.eval_shape(lambda: jm.init(jax.random.PRNGKey(0), z0, train=False))["params"]
  assert ta.parameter_count(tm) == sum(int(np.prod(p.shape))
                                       for p in jax.tree.leaves(params))
  z, x, zv, xv = ab.synthetic(16, 4)
  with torch.no_grad():
    assert tuple(tm(torch.from_numpy(z)).shape) == (16, 1, 28, 28)
  w0 = [p.detach().clone() for p in tm.parameters()]
  val = ta.TorchAttacker(tm, z, x, zv, xv, noise=ab.NOISE).epoch(np.arange(16).reshape(2, 8))
  assert np.isfinite(val) and all(not torch.equal(a, b) for a, b in zip(w0, tm.parameters()))


# ---------------------------------------------------------------- robustness


def test_robustness_attack_figures_and_report(tmp_path):
  """The worst cases read from an attack's result.json, and the report over runs."""
  from bench import robustness

  res = {"accuracy": 0.98, "worst": {"attacker": "mlp_decoder", "mse_sum": 39.7},
         "releases": {"clean": {"worst": {"attacker": "ridge", "mse_sum": 38.1}}},
         "identity": {"settings": {
             "single": {"worst": {"top1": 0.05}, "person": {"top1": 0.06}},
             "clean": {"worst": {"top1": 0.17}}}}}
  fig = robustness.attack_figures(res)
  assert fig == {"worst_attacker": "mlp_decoder", "worst_mse_sum": 39.7, "attack_accuracy": 0.98,
                 "worst_clean_mse_sum": 38.1, "identity_single": 0.05, "identity_person": 0.06,
                 "identity_clean": 0.17}
  # An identity-only attack (--noreconstruction) has no reconstruction figures.
  assert set(robustness.attack_figures({"identity": res["identity"]})) == {
      "identity_single", "identity_person", "identity_clean"}
  runs = [dict(run=f"seed{i}_fast", final_accuracy=0.9 + i / 100, best_epoch_accuracy=0.95,
               end_minus_best=i / 100 - 0.05, **fig) for i in range(3)]
  summary = robustness.summarize(runs)
  acc = summary["final_accuracy"]
  assert (acc["min"], acc["median"], acc["max"], acc["n"]) == (0.9, 0.91, 0.92, 3)
  assert acc["range"] == pytest.approx(0.02) and acc["mean"] == pytest.approx(0.91)
  assert summary["identity_clean"]["max"] == 0.17
  args = robustness.parse_args(["--config=configs/digits_lenet.py", f"--out={tmp_path}",
                                "--seeds=0,1,2", "--conv_impls=fast", "--attack"])
  robustness.write_report(args, runs, summary)
  md = (tmp_path / "robustness.md").read_text()
  assert "| seed2_fast | 0.9200 |" in md and "identity_clean" in md and "| 0.17 |" in md


# ---------------------------------------------------------------- accuracy levers


def test_accuracy_levers_score_held_out_training_rows_against_a_dnn_of_the_same_variant(tmp_path):
  """Each variant is trained on the first part of the training split, once defended and once
  as its DNN (every defence off), and both are scored on the held-out rest; a rerun reuses
  the trainings; the test split is never the score."""
  from bench import accuracy_levers
  from ran_jax import configs, input_pipeline

  wd = str(tmp_path / "levers")
  argv = ["--config=digits_lenet:smoke", f"--workdir={wd}", "--variant=base:",
          "--train_seeds=0", "--val_fraction=0.25", "--noise_draws=2",
          "--config.model.feature_noise=0.5", "--config.export_deployment=False"]
  assert accuracy_levers.main(argv) == 0
  with open(os.path.join(wd, "levers.json")) as f:
    report = json.load(f)
  n_train = len(input_pipeline.load_dataset(configs.get_config("digits_lenet:smoke").data).train)
  assert report["n_fit"] + report["n_val"] == n_train and report["n_val"] == round(n_train / 4)
  for kind, noise, lam in (("defended", 0.5, None), ("dnn", 0.0, 1.0)):
    with open(os.path.join(wd, f"base_{kind}_seed0", "config.json")) as f:
      cfg = json.load(f)
    assert cfg["data"]["train_limit"] == report["n_fit"]
    assert cfg["model"]["feature_noise"] == noise
    if lam is not None:
      assert cfg["ran"]["lam"] == lam
  # the score is the held-out rows' accuracy, recomputed here independently
  src = input_pipeline.load_dataset(configs.get_config("digits_lenet:smoke").data)
  held = src.train.get(np.arange(report["n_fit"], n_train))
  from ran_jax import export

  dnn = export.load_trained(os.path.join(wd, "base_dnn_seed0"))   # no release noise
  logits = np.asarray(dnn.classify(dnn.features(held["image"])))
  acc = float(np.mean(logits.argmax(-1) == held["label"]))
  assert report["variants"]["base"]["runs"]["dnn_seed0"]["val_accuracy"] == pytest.approx(acc)
  stamp = os.path.getmtime(os.path.join(wd, "base_dnn_seed0", "config.json"))
  assert accuracy_levers.main(argv) == 0   # a rerun trains nothing again
  assert os.path.getmtime(os.path.join(wd, "base_dnn_seed0", "config.json")) == stamp
  with pytest.raises(SystemExit):
    accuracy_levers.parse_args(["--config=x", "--workdir=y", "--variant=base:",
                                "--val_fraction=1.5"])
