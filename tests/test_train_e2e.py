"""train.py end to end: outputs, resume, exact resume after SIGKILL/SIGTERM, faults.

Every run is a real `python train.py` subprocess on the digits smoke config with
fake CPU devices; results are compared through the exported networks.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import chex
import pytest

from ran_jax.export import load_trained
from tests.helpers import ROOT, run_train

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
  assert 0.0 <= test[-1]["accuracy"] <= 1.0 and test[-1]["recon_sse"] > 0
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(wd / "tensorboard"))
  final = json.load(open(wd / "final_metrics.json"))
  assert final["step"] == 12
  assert json.load(open(wd / "config.json"))["ran"]["k"] == 3


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


def _start(wd, extra_env):
  env = dict(os.environ, JAX_PLATFORMS="cpu", **extra_env)
  return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), SMOKE, f"--workdir={wd}",
                           *LONG], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


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


@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_at_a_random_point_then_exact_resume(reference, tmp_path, seed):
  wd = tmp_path / "wd"
  proc = _start(wd, devices(4))
  _wait_for_checkpoint(wd, proc, min_step=1 + 4 * seed)
  time.sleep(random.Random(seed).uniform(0.0, 0.6))
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  r = _ok(run_train([SMOKE, f"--workdir={wd}", *LONG], devices(4)))
  assert "Resumed from" in r.stderr or "Training steps 0.." in r.stderr
  chex.assert_trees_all_equal(_params(wd), _params(reference))


def test_sigterm_saves_and_exits_then_resumes(reference, tmp_path):
  wd = tmp_path / "wd"
  proc = _start(wd, devices(4))
  _wait_for_checkpoint(wd, proc, min_step=2)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  if proc.returncode == 0:
    pytest.skip("run finished before SIGTERM arrived")
  assert proc.returncode == 143, err[-3000:]
  assert "SIGTERM: saved checkpoint at step" in err
  r = _ok(run_train([SMOKE, f"--workdir={wd}", *LONG], devices(4)))
  assert "Resumed from" in r.stderr
  chex.assert_trees_all_equal(_params(wd), _params(reference))


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
