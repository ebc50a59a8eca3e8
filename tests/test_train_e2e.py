"""train.py end to end: outputs, resume, exact resume after SIGKILL/SIGTERM, faults.

Every run is a real `python train.py` subprocess on the digits smoke config with
fake CPU devices; results are compared through the exported networks.
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import chex
import numpy as np
import pytest

from ran_jax import input_pipeline
from ran_jax.export import load_trained
from tests.helpers import ROOT, run_train, subprocess_env

pytestmark = pytest.mark.slow

SMOKE = "--config=configs/digits_lenet.py:smoke"
LONG = ["--config.num_epochs=4", "--config.max_steps=12", "--config.checkpoint_every_steps=1",
        "--config.keep_checkpoints=3"]


def devices(n):
  return {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}


def _ok(r):
  assert r.returncode == 0, f"train.py failed ({r.returncode}):\n{r.stderr[-4000:]}"
  return r


def _params(workdir):
  t = load_trained(str(workdir))
  return {"params": t.params, "batch_stats": t.batch_stats, "step": t.meta["step"]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted 12-step run on 4 devices."""
  wd = tmp_path_factory.mktemp("ref")
  _ok(run_train([SMOKE, f"--workdir={wd}", *LONG], devices(4)))
  return wd


def test_outputs_written(reference):
  wd = reference
  names = set(os.listdir(wd))
  assert {"checkpoints", "config.json", "metrics.jsonl", "tensorboard", "export",
          "final_metrics.json"} <= names
  steps = sorted(int(s) for s in os.listdir(wd / "checkpoints") if s.isdigit())
  assert steps == [10, 11, 12]  # keep_checkpoints=3
  records = [json.loads(line) for line in open(wd / "metrics.jsonl")]
  train = [r for r in records if r["kind"] == "train"]
  test = [r for r in records if r["kind"] == "test"]
  for name in ("disc/loss", "disc/ce", "disc/accuracy", "gen/loss", "gen/recon_sse", "adv/loss",
               "adv/ce", "adv/recon_sse", "adv/accuracy"):
    assert name in train[-1]
  assert "examples_per_sec" in train[-1]
  assert [r["step"] for r in test] == [3, 6, 9, 12]  # evaluated at every epoch end
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(wd / "tensorboard"))
  final = json.load(open(wd / "final_metrics.json"))
  assert final["step"] == 12
  config = json.load(open(wd / "config.json"))
  assert config["ran"]["k"] == 3 and config["ran"]["ema_decay"] > 0  # evaluated on averages
  # The test figures are those of the exported networks (the moving averages), recomputed
  # here from the test split with plain forwards.
  trained = load_trained(str(wd))
  source = input_pipeline.load_dataset(trained.config.data)
  te = source.test.get(np.arange(len(source.test)))
  x, y = np.asarray(te["image"], np.float32), np.asarray(te["label"])
  assert trained.feature_noise == 0 and len(x) == 40
  z = trained.encode(x)
  accuracy = float(np.mean(np.argmax(np.asarray(trained.classify(z)), -1) == y))
  sse = float(np.mean(np.sum((np.asarray(trained.decode(z)) - x) ** 2, axis=(1, 2, 3))))
  for r in (test[-1], final):
    assert r["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert r["recon_sse"] == pytest.approx(sse, rel=1e-4)


# max_steps sets where a learning-rate schedule ends, so a run stopped by max_steps=6 and
# continued to 12 follows another schedule than a 12-step run: these two tests run at
# constant rates (':paper'); the SIGKILL/SIGTERM tests below resume the scheduled config.
PAPER = SMOKE.replace(":smoke", ":paper,smoke")


@pytest.fixture(scope="module")
def six_steps(tmp_path_factory):
  """A constant-rate run stopped by max_steps=6 on 4 devices (each test resumes a copy)."""
  wd = tmp_path_factory.mktemp("six")
  _ok(run_train([PAPER, f"--workdir={wd}", *LONG[:-2], "--config.max_steps=6"], devices(4)))
  assert load_trained(str(wd)).meta["step"] == 6
  return wd


def test_resume_continues_bit_identical(six_steps, tmp_path):
  ref = tmp_path / "ref"
  _ok(run_train([PAPER, f"--workdir={ref}", *LONG], devices(4)))
  wd = tmp_path / "wd"
  shutil.copytree(six_steps, wd)
  r = _ok(run_train([PAPER, f"--workdir={wd}", *LONG], devices(4)))
  assert "Resumed from" in r.stderr and "at step 6" in r.stderr
  chex.assert_trees_all_equal(_params(wd), _params(ref))


def test_resume_on_a_different_device_count(six_steps, tmp_path):
  """A 4-device checkpoint restores exactly onto a 2-device mesh and training goes on."""
  wd = tmp_path / "wd"
  shutil.copytree(six_steps, wd)
  saved = _params(wd)
  shutil.rmtree(wd / "export")
  r = _ok(run_train([PAPER, f"--workdir={wd}", *LONG[:-2], "--config.max_steps=6"], devices(2)))
  assert "at step 6" in r.stderr and "2 devices" in r.stderr and "Nothing to train" in r.stderr
  chex.assert_trees_all_equal(_params(wd), saved)
  _ok(run_train([PAPER, f"--workdir={wd}", *LONG], devices(2)))
  assert _params(wd)["step"] == 12
  chex.assert_tree_all_finite(_params(wd)["params"])


def _start(wd, extra_env, args=(SMOKE, *LONG), optimized=False):
  return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *args,
                           f"--workdir={wd}"], cwd=ROOT, env=subprocess_env(extra_env, optimized),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(wd, proc, min_step, timeout=300):
  deadline = time.time() + timeout
  while time.time() < deadline:
    d = wd / "checkpoints"
    if d.exists() and any(s.isdigit() and int(s) >= min_step for s in os.listdir(d)):
      return
    if proc.poll() is not None:
      pytest.fail("train.py ended before writing a checkpoint:\n" + proc.stderr.read()[-3000:])
    time.sleep(0.05)
  proc.kill()
  pytest.fail("no checkpoint within the time limit")


def _newest_checkpoint(wd):
  return max(int(s) for s in os.listdir(wd / "checkpoints") if s.isdigit())


@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_at_a_random_point_then_exact_resume(reference, tmp_path, seed):
  wd = tmp_path / "wd"
  proc = _start(wd, devices(4))
  _wait_for_checkpoint(wd, proc, min_step=1 + 4 * seed)
  time.sleep(random.Random(seed).uniform(0.0, 0.6))
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  newest = _newest_checkpoint(wd)
  assert newest >= 1 + 4 * seed
  r = _ok(run_train([SMOKE, f"--workdir={wd}", *LONG], devices(4)))
  # The run must continue from the newest checkpoint, not start again: a fresh run is
  # deterministic too and would end with the same parameters.
  assert f"at step {newest}" in r.stderr and "Resumed from" in r.stderr, r.stderr[-3000:]
  assert f"Training steps {newest}..12" in r.stderr or "Nothing to train" in r.stderr
  chex.assert_trees_all_equal(_params(wd), _params(reference))


# The SIGTERM run has no end in sight (10^5 steps), so the signal always lands mid-run; it
# resumes to two steps past its save and is compared with an uninterrupted run of that length
# (constant rates, so the shorter run follows the same path). It compiles as users do, so
# exact resume is checked at XLA's default optimisation level as well.
ENDLESS = [PAPER, "--config.num_epochs=40000", "--config.max_steps=100000",
           "--config.checkpoint_every_steps=1", "--config.keep_checkpoints=3"]


@pytest.mark.xla_optimized
def test_sigterm_saves_and_exits_then_resumes(tmp_path):
  wd = tmp_path / "wd"
  proc = _start(wd, devices(4), ENDLESS, optimized=True)
  _wait_for_checkpoint(wd, proc, min_step=2)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err[-3000:]
  m = re.search(r"SIGTERM: saved checkpoint at step (\d+)", err)
  assert m, err[-3000:]
  saved = int(m.group(1))
  assert saved >= 2 and _newest_checkpoint(wd) == saved
  end = [f"--config.max_steps={saved + 2}"]
  r = _ok(run_train([*ENDLESS, f"--workdir={wd}", *end], devices(4), optimized=True))
  assert f"at step {saved}" in r.stderr and f"Training steps {saved}..{saved + 2}" in r.stderr
  ref = tmp_path / "ref"
  _ok(run_train([*ENDLESS, f"--workdir={ref}", *end], devices(4), optimized=True))
  assert _params(ref)["step"] == saved + 2
  chex.assert_trees_all_equal(_params(wd), _params(ref))


def _largest_file(d):
  files = [os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs]
  return max(files, key=os.path.getsize)


def test_truncated_latest_checkpoint_falls_back(reference, tmp_path):
  wd = tmp_path / "wd"
  shutil.copytree(reference, wd)
  victim = _largest_file(wd / "checkpoints" / "12")
  with open(victim, "r+b") as f:
    f.truncate(os.path.getsize(victim) // 3)
  r = _ok(run_train([SMOKE, f"--workdir={wd}", *LONG], devices(4)))
  assert "Checkpoint step 12" in r.stderr and "unusable" in r.stderr
  assert "Resumed from" in r.stderr and "at step 11" in r.stderr
  assert os.listdir(str(wd / "checkpoints") + "_corrupt")  # kept for inspection
  chex.assert_trees_all_equal(_params(wd), _params(reference))


def test_checkpoint_of_another_config_is_refused(reference, tmp_path):
  wd = tmp_path / "wd"
  shutil.copytree(reference, wd)
  before = sorted(os.listdir(wd / "checkpoints"))
  r = run_train([SMOKE, f"--workdir={wd}", *LONG, "--config.model.classifier_hidden=(32,)"],
                devices(4))
  assert r.returncode == 2
  assert "different model/data config" in r.stderr and "Use another --workdir" in r.stderr
  assert sorted(os.listdir(wd / "checkpoints")) == before


def test_non_finite_loss_stops_without_overwriting(reference, tmp_path):
  wd = tmp_path / "wd"
  shutil.copytree(reference, wd)
  shutil.rmtree(wd / "checkpoints" / "12")
  shutil.rmtree(wd / "checkpoints" / "11")
  r = run_train([SMOKE, f"--workdir={wd}", *LONG, "--config.ran.l1=1e30", "--config.ran.l3=1e30",
                 "--config.log_every_steps=1"], devices(4))
  assert r.returncode == 2, r.stderr[-3000:]
  assert "Non-finite value in the" in r.stderr and "stage at step 11" in r.stderr
  assert sorted(int(s) for s in os.listdir(wd / "checkpoints") if s.isdigit()) == [10]
