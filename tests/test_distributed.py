"""Data parallelism: 1 vs 8 devices, and two real JAX processes on loopback.

The runs are compared after one Algorithm-1 iteration (k=3: seven updates).
Longer runs drift apart at the 1e-2 level even between two correct device
layouts: Adam's first steps are nearly sign(gradient) * lr, so a gradient element
whose value is float noise (all-reduce order) can flip a whole lr-sized update.

The 1-device and 8-device runs compile at XLA's default optimisation level, as users run
them (the suite's JAX_DISABLE_MOST_OPTIMIZATIONS is not passed on to them).
"""

import os
import socket
import subprocess
import sys

import chex
import pytest

from ran_jax.export import load_trained
from tests.helpers import ROOT, run_train

pytestmark = pytest.mark.slow

# Algorithm 1 as published (':paper': constant rates, no weight averaging): what is compared
# is the data-parallel computation, not the schedule (test_train_e2e covers resuming that).
ARGS = ["--config=configs/digits_lenet.py:paper,smoke", "--config.max_steps=1",
        "--config.num_epochs=2"]


def _params(wd):
  t = load_trained(str(wd))
  assert t.meta["step"] == 1
  return {"params": t.params, "batch_stats": t.batch_stats}


def _devices(n):
  return {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}


def _ok(r):
  assert r.returncode == 0, r.stderr[-4000:]
  return r


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
  wd = tmp_path_factory.mktemp("one")
  r = _ok(run_train([*ARGS, f"--workdir={wd}"], _devices(1), optimized=True))
  assert "1 devices in 1 processes" in r.stderr
  return _params(wd)


@pytest.mark.xla_optimized
def test_eight_devices_match_one(one_device, tmp_path):
  r = _ok(run_train([*ARGS, f"--workdir={tmp_path}"], _devices(8), optimized=True))
  assert "8 devices in 1 processes" in r.stderr
  chex.assert_trees_all_close(_params(tmp_path), one_device, atol=1e-4, rtol=1e-3)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_on_loopback_match_one(one_device, tmp_path):
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", **_devices(2))
  procs = [
      subprocess.Popen(
          [sys.executable, os.path.join(ROOT, "train.py"), *ARGS, f"--workdir={tmp_path}",
           f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)
  ]
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=600))
  finally:
    for p in procs:  # never leave a coordinator behind
      if p.poll() is None:
        p.kill()
        p.communicate()
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  assert "4 devices in 2 processes" in outs[0][1]
  chex.assert_trees_all_close(_params(tmp_path), one_device, atol=1e-4, rtol=1e-3)


def test_batch_not_divisible_by_device_count(tmp_path):
  r = run_train([*ARGS, f"--workdir={tmp_path}", "--config.batch_size=18"], _devices(4))
  assert r.returncode == 2
  assert "batch_size=18 is not divisible by the 4 devices" in r.stderr
