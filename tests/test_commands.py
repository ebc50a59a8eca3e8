"""Every command a user runs, end to end, as a subprocess on the digits smoke config.

`python -m ran_jax.<command>` runs the same `run` as the console script `ran-<command>`
(tests/test_packaging.py ties them). Each test checks what the command writes (files,
keys, values in range), not only its exit code. One training (ran-train) is shared by
the commands that read a finished run (ran-attack, ran-deploy).
"""

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import ROOT, subprocess_env

pytestmark = pytest.mark.slow

SMOKE = "--config=digits_lenet:smoke"
LIGHT = ("mirrored_decoder", "mlp_decoder", "ridge")


def command(name, *args, timeout=600):
  """Runs `python -m ran_jax.<name> ARGS` from a directory outside the repository."""
  env = subprocess_env({"PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"})
  r = subprocess.run([sys.executable, "-m", f"ran_jax.{name}", *args], cwd="/tmp", env=env,
                     capture_output=True, text=True, timeout=timeout)
  assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
  return r


def _finite(v, lo=-math.inf, hi=math.inf):
  return isinstance(v, (int, float)) and math.isfinite(v) and lo <= v <= hi


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """ran-train on the smoke config, with an override, into a fresh workdir."""
  wd = str(tmp_path_factory.mktemp("train") / "run")
  r = command("train", SMOKE, "--config.ran.lam=0.25", f"--workdir={wd}")
  return wd, r


def test_ran_train(run_dir):
  wd, _ = run_dir
  with open(os.path.join(wd, "final_metrics.json")) as f:
    final = json.load(f)
  assert _finite(final["accuracy"], 0.0, 1.0)
  with open(os.path.join(wd, "config.json")) as f:
    config = json.load(f)
  assert config["ran"]["lam"] == 0.25 and config["max_steps"] == 6   # override and smoke
  assert os.path.exists(os.path.join(wd, "export", "model.json"))
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    steps = [json.loads(line)["step"] for line in f if line.strip()]
  assert steps and max(steps) == 6


def test_ran_attack_light_default(run_dir, tmp_path):
  wd, _ = run_dir
  out = str(tmp_path / "eval")
  # --seed is the old spelling of --attacker_seed: still works, with a note naming the new one
  r = command("attack", f"--workdir={wd}", f"--eval_dir={out}", "--seed=3", "--noprogress")
  assert "use --attacker_seed" in r.stderr
  with open(os.path.join(out, "result.json")) as f:
    res = json.load(f)
  assert set(res["attackers"]) >= set(LIGHT) and "resnet_decoder" not in res["attackers"]
  assert res["skipped_attackers"] == ["resnet_decoder"] and res["preset"] == "light"
  assert res["eval_config"]["seed"] == 3
  assert res["eval_config"]["attacker_fit"]["max_epochs"] == 15
  assert _finite(res["accuracy"], 0.0, 1.0)
  worst = res["worst"]
  assert worst["attacker"] in res["attackers"]
  assert worst["mse_sum"] == min(m["mse_sum"] for m in res["attackers"].values())
  assert _finite(worst["mse_sum"], 0.0, 784.0)   # 784 pixels in [0, 1]
  assert "skipped attackers: resnet_decoder" in r.stdout and "worst (" in r.stdout
  assert os.path.exists(os.path.join(out, "artifacts.npz"))
  assert not os.path.exists(os.path.join(wd, "eval"))   # --eval_dir, not WORKDIR/eval


def test_ran_sweep(tmp_path):
  wd = str(tmp_path / "sweep")
  r = command("sweep", SMOKE, f"--workdir={wd}", "--lams=0.5", "--noise_factors=0.4",
              "--methods=ran,noisy,variant", "--attackers=ridge", "--noprogress",
              "--variant=bn8:config.model.bottleneck_dim=8,config.ran.lam=1.0")
  with open(os.path.join(wd, "results.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [(r["method"], r["setting"]) for r in rows] == [
      ("ran", "lam=0.5"), ("noisy", "factor=0.4"), ("variant", "bn8")]
  for row in rows:
    assert _finite(float(row["accuracy"]), 0.0, 1.0), row
    assert row["worst_attacker"] in ("ridge", "own_decoder")
    assert _finite(float(row["worst_mse_sum"]), 0.0, 784.0)
  with open(os.path.join(wd, "runs", "variant_bn8", "config.json")) as f:
    variant = json.load(f)
  assert variant["model"]["bottleneck_dim"] == 8 and variant["ran"]["lam"] == 1.0
  with open(os.path.join(wd, "sweep.json")) as f:
    assert json.load(f)["lams"] == [0.5]
  assert os.path.exists(os.path.join(wd, "pareto.png"))
  assert "wrote" in r.stdout and "results.csv" in r.stdout


def test_ran_search(tmp_path):
  wd = str(tmp_path / "search")
  # a budget every candidate meets: the one candidate is chosen and confirmed
  r = command("search", SMOKE, f"--workdir={wd}", "--max_trainings=1", "--max_accuracy_drop=1",
              "--fast_attackers=ridge", "--attackers=ridge", "--noprogress")
  with open(os.path.join(wd, "search_state.json")) as f:
    state = json.load(f)
  assert state["status"] == "done" and len(state["candidates"]) == 1
  chosen = state["chosen"]
  assert chosen["value"] == 1.0 and chosen["t"] == 0.5   # the middle of feature_noise [0, 2]
  for part in ("reference", "chosen"):
    assert _finite(state["confirm"][part]["accuracy"], 0.0, 1.0)
    assert set(state["confirm"][part]["attackers"]) == {"ridge", "own_decoder"}
  with open(os.path.join(wd, "chosen", "config.json")) as f:
    assert json.load(f)["model"]["feature_noise"] == 1.0
  assert "## Chosen: `model.feature_noise=1`" in open(os.path.join(wd, "report.md")).read()
  assert "chosen model.feature_noise=1" in r.stdout


def test_ran_deploy(run_dir, tmp_path):
  wd, _ = run_dir
  command("deploy", "export", f"--workdir={wd}")
  with open(os.path.join(wd, "deploy", "deploy.json")) as f:
    manifest = json.load(f)
  assert manifest["value_range"] == [0.0, 1.0]
  for name in ("encoder.tflite", "classifier.jaxexport"):
    assert os.path.getsize(os.path.join(wd, "deploy", name)) > 1000
  from ran_jax import configs, input_pipeline

  batch = input_pipeline.load_dataset(configs.get_config("digits_lenet:smoke").data).test.get(
      np.arange(8))
  x, labels = str(tmp_path / "x.npy"), str(tmp_path / "y.npy")
  np.save(x, np.asarray(batch["image"], np.float32))
  np.save(labels, np.asarray(batch["label"], np.int32))
  feats = str(tmp_path / "features.npz")
  command("deploy", "encode", f"--workdir={wd}", f"--inputs={x}", f"--out={feats}",
          "--noise_seed=1")
  with np.load(feats) as f:
    assert f["features"].shape[0] == 8 and np.isfinite(f["features"]).all()
  r = command("deploy", "classify", f"--workdir={wd}", f"--features={feats}",
              f"--labels={labels}")
  result = json.loads(r.stdout[r.stdout.index("{"):])
  assert result["examples"] == 8 and _finite(result["accuracy"], 0.0, 1.0)
