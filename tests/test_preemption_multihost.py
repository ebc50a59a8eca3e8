"""Preemption of a multi-process run (a pod slice rehearsed on loopback).

Four real JAX processes (`jax.distributed` on 127.0.0.1), one CPU device each, each in a
scratch directory of its own (HOME, TMPDIR, working directory) so that nothing local is
shared but the workdir. A preemption notice (SIGTERM) reaches one host only, as a
maintenance event does: every host stops at the same step, saves and exits 143 (JAX's
preemption service carries the notice); the rerun resumes at that step and ends
bit-identical to a run that was never stopped.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import chex
import pytest

from ran_jax.export import load_trained
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


def _launch(workdir, scratch_root, tag):
  port = _free_port()
  procs = []
  for i in range(N):
    scratch = scratch_root / f"{tag}{i}"
    (scratch / "tmp").mkdir(parents=True, exist_ok=True)
    env = subprocess_env({"JAX_PLATFORMS": "cpu", "HOME": str(scratch),
                          "TMPDIR": str(scratch / "tmp"),
                          "XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
    err = open(scratch / "stderr.log", "w")
    procs.append((subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "train.py"), *ARGS, f"--workdir={workdir}",
         f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={N}",
         f"--process_id={i}"], cwd=scratch, env=env, stdout=subprocess.DEVNULL, stderr=err),
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


def test_a_notice_to_one_host_stops_all_at_one_step_then_exact_resume(tmp_path):
  ref = tmp_path / "ref"
  rcs, logs = _wait(_launch(ref, tmp_path / "scratch", "ref"), 600)
  assert rcs == [0] * N, logs[0][-3000:]

  wd = tmp_path / "run"
  procs = _launch(wd, tmp_path / "scratch", "run")
  log0 = procs[0][1]
  deadline = time.time() + 300
  while "step 10/30" not in log0.read_text():   # well into training, compiled
    assert time.time() < deadline and all(p.poll() is None for p, _ in procs), \
        log0.read_text()[-3000:]
    time.sleep(0.2)
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
  resumed, want = _params(wd), _params(ref)
  assert resumed["step"] == want["step"] == 30
  chex.assert_trees_all_equal(resumed, want)     # bit-identical to the unstopped run
  # nothing written in the processes' scratch directories but their logs and dot folders
  for d in (tmp_path / "scratch").iterdir():
    left = sorted(p.name for p in d.iterdir() if p.name not in ("tmp", "stderr.log")
                  and p.name[0] != ".")
    assert left == [] and os.listdir(d / "tmp") == [], (d, left)
