"""Preemption and a lost host in a multi-process run (a pod slice rehearsed on loopback).

Four real JAX processes (`jax.distributed` on 127.0.0.1), one CPU device each, each in a
scratch directory of its own (HOME, TMPDIR, working directory) so that nothing local is
shared but the workdir.

* A preemption notice (SIGTERM) reaches one host only, as a maintenance event does: every
  host stops at the same step, saves and exits 143 (JAX's preemption service carries the
  notice); the rerun resumes at that step and ends bit-identical to a run never stopped.
* A host is lost outright (SIGKILL, no notice), the workdir on a local Cloud Storage server
  (tests/gcs_server.py) as on a slice, whose hosts share no disk: the others stop within the
  heartbeat timeout (`--heartbeat_timeout_s`) with a message naming what happened, instead
  of waiting in a collective; the rerun resumes from the newest complete checkpoint in the
  bucket and ends bit-identical to the unstopped run.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

from ran_jax.export import load_trained
from ran_jax.train import LOST_PROCESS_EXIT
from tests import gcs_server
from tests.helpers import ROOT, subprocess_env

pytestmark = pytest.mark.slow

N = 4
ARGS = ["--config=configs/digits_lenet.py:smoke", "--config.num_epochs=100",
        "--config.max_steps=30", "--config.log_every_steps=1",
        "--config.export_deployment=False"]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir, scratch_root, tag, extra=(), env_extra=None):
  port = _free_port()
  procs = []
  for i in range(N):
    scratch = scratch_root / f"{tag}{i}"
    (scratch / "tmp").mkdir(parents=True, exist_ok=True)
    env = subprocess_env({"JAX_PLATFORMS": "cpu", "HOME": str(scratch),
                          "TMPDIR": str(scratch / "tmp"),
                          "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
                          **(env_extra or {})})
    env.pop("EPATH_USE_TF", None)   # the production default (ran_jax.storage) on gs://
    err = open(scratch / "stderr.log", "w")
    procs.append((subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "train.py"), *ARGS, f"--workdir={workdir}",
         f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={N}",
         f"--process_id={i}", *extra], cwd=scratch, env=env, stdout=subprocess.DEVNULL, stderr=err),
        scratch / "stderr.log"))
  return procs


def _wait(procs, timeout):
  deadline = time.time() + timeout
  try:
    for p, _ in procs:
      p.wait(timeout=max(1, deadline - time.time()))
  finally:
    for p, _ in procs:   # never leave a coordinator behind
      if p.poll() is None:
        p.kill()
        p.wait()
  return [p.returncode for p, _ in procs], [log.read_text() for _, log in procs]


def _params(wd):
  t = load_trained(str(wd))
  return {"params": t.params, "batch_stats": t.batch_stats, "step": t.meta["step"]}


def _flat(tree):
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


# what a host runs to read the run back: this module's own loading and flattening
_LOAD = ("import sys, numpy as np\n"
         "from tests.test_preemption_multihost import _flat, _params\n"
         "np.savez(sys.argv[2], **_flat(_params(sys.argv[1])))\n")


def _params_from_bucket(gcs, workdir, scratch):
  """The run's final weights read back from the bucket by a process of its own (as a host
  would), flattened to {path: array}."""
  out = scratch / "read_back.npz"
  env = subprocess_env(gcs.env())
  env.pop("EPATH_USE_TF", None)
  r = subprocess.run([sys.executable, "-c", _LOAD, workdir, str(out)], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  with np.load(out) as f:
    got = {k: f[k] for k in f.files}
  out.unlink()
  return got


@pytest.fixture(scope="module")
def unstopped(tmp_path_factory):
  """The same run never stopped: what every resumed run must end bit-identical to."""
  root = tmp_path_factory.mktemp("unstopped")
  rcs, logs = _wait(_launch(root / "ref", root / "scratch", "ref"), 600)
  assert rcs == [0] * N, logs[0][-3000:]
  return _params(root / "ref")


def _until_step(procs, step):
  log0 = procs[0][1]
  deadline = time.time() + 300
  while f"step {step}/30" not in log0.read_text():   # well into training, compiled
    assert time.time() < deadline and all(p.poll() is None for p, _ in procs), \
        log0.read_text()[-3000:]
    time.sleep(0.2)


def _scratch_left_clean(scratch_root):
  """Nothing written in the processes' scratch directories but logs and dot folders."""
  for d in scratch_root.iterdir():
    left = sorted(p.name for p in d.iterdir() if p.name not in ("tmp", "stderr.log")
                  and p.name[0] != ".")
    assert left == [] and os.listdir(d / "tmp") == [], (d, left)


def test_a_notice_to_one_host_stops_all_at_one_step_then_exact_resume(tmp_path, unstopped):
  wd = tmp_path / "run"
  procs = _launch(wd, tmp_path / "scratch", "run")
  _until_step(procs, 10)
  procs[2][0].send_signal(signal.SIGTERM)        # one host's notice
  t = time.time()
  rcs, logs = _wait(procs, 60)
  assert time.time() - t < 60
  assert rcs == [143] * N, [log[-1500:] for log in logs]
  saved = {int(m) for log in logs for m in
           re.findall(r"SIGTERM: saved checkpoint at step (\d+)", log)}
  assert len(saved) == 1 and all("SIGTERM: saved" in log for log in logs), saved
  step = saved.pop()
  assert 10 <= step < 30

  rcs, logs = _wait(_launch(wd, tmp_path / "scratch", "rerun"), 600)
  assert rcs == [0] * N, logs[0][-3000:]
  assert f"at step {step}" in logs[0]
  resumed = _params(wd)
  assert resumed["step"] == unstopped["step"] == 30
  chex.assert_trees_all_equal(resumed, unstopped)     # bit-identical to the unstopped run
  _scratch_left_clean(tmp_path / "scratch")


HEARTBEAT_S = 10


@pytest.fixture
def gcs(tmp_path):
  with gcs_server.running(str(tmp_path / "gcs_server.log")) as server:
    yield server


def test_a_lost_host_stops_the_others_within_the_heartbeat_then_exact_resume(tmp_path, unstopped,
                                                                             gcs):
  """The workdir on (a local server of) Cloud Storage, the only place the hosts share, as
  on a pod slice: the checkpoint the killed host was writing is never the one restored."""
  wd = "gs://bkt/lost"
  extra = ["--config.checkpoint_every_steps=4", f"--heartbeat_timeout_s={HEARTBEAT_S}"]
  procs = _launch(wd, tmp_path / "scratch", "run", extra, gcs.env())
  _until_step(procs, 14)
  procs[2][0].kill()                              # a host lost outright: no notice, no save
  t = time.time()
  rcs, logs = _wait(procs, 6 * HEARTBEAT_S)
  took = time.time() - t
  survivors = [i for i in range(N) if i != 2]
  # every other process stopped by itself (the harness kills only after 6 heartbeats)
  assert took < 6 * HEARTBEAT_S and all(rcs[i] not in (0, None) for i in survivors), \
      (took, rcs, [logs[i][-1500:] for i in survivors])
  assert rcs[2] == -signal.SIGKILL
  # ... each with a message naming what happened, not a hang or a bare crash: the failed
  # collective caught (CPU's gloo fails at once; exit 75, rerun), or JAX's heartbeat abort
  # naming the lost task (a collective that waits instead of failing)
  for i in survivors:
    caught = rcs[i] == LOST_PROCESS_EXIT and "If another process was lost" in logs[i]
    assert caught or "Task 2 heartbeat timeout" in logs[i], (i, rcs[i], logs[i][-2000:])

  rcs, logs = _wait(_launch(wd, tmp_path / "scratch", "rerun", extra, gcs.env()), 600)
  assert rcs == [0] * N, logs[0][-3000:]
  resumed_at = [int(m) for m in re.findall(r"at step (\d+)", logs[0])]
  assert resumed_at and 12 <= resumed_at[0] < 30 and resumed_at[0] % 4 == 0, logs[0][-3000:]
  names = gcs.objects(prefix="lost/")
  assert "lost/checkpoints/30/commit_success.txt" in names, sorted(names)
  resumed, want = _params_from_bucket(gcs, wd, tmp_path), _flat(unstopped)
  assert sorted(resumed) == sorted(want)
  for k in want:                                     # bit-identical to the unstopped run
    np.testing.assert_array_equal(resumed[k], want[k], err_msg=k)
  _scratch_left_clean(tmp_path / "scratch")
