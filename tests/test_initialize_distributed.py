"""`parallel.initialize_distributed`: what reaches `jax.distributed.initialize`.

The multi-process rehearsals (tests/test_preemption_multihost.py) show that a lost host is
noticed; they would still pass if the heartbeat setting were dropped on the way (JAX's own
default then applies, only later). These check the plumbing itself, with
`jax.distributed.initialize` replaced by a recorder.
"""

import jax
import pytest

from ran_jax import parallel


@pytest.fixture
def recorded(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.config, "update", lambda *a: None)   # keep this process's backend
  for name in ("RAN_COORDINATOR_ADDRESS", "RAN_NUM_PROCESSES", "RAN_PROCESS_ID",
               "RAN_HEARTBEAT_TIMEOUT_S", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(name, raising=False)
  return calls


def test_the_heartbeat_reaches_jax_on_both_paths(recorded, monkeypatch):
  assert parallel.initialize_distributed("127.0.0.1:1234", 4, 2, heartbeat_timeout_s=7)
  assert recorded[-1] == dict(coordinator_address="127.0.0.1:1234", num_processes=4,
                              process_id=2, heartbeat_timeout_seconds=7)
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "h0,h1,h2,h3")
  assert parallel.initialize_distributed(heartbeat_timeout_s=9)
  assert recorded[-1] == dict(heartbeat_timeout_seconds=9)


def test_the_heartbeat_from_the_environment_and_jax_default_without(recorded, monkeypatch):
  monkeypatch.setenv("RAN_HEARTBEAT_TIMEOUT_S", "11")
  assert parallel.initialize_distributed("127.0.0.1:1234", 2, 0)
  assert recorded[-1]["heartbeat_timeout_seconds"] == 11
  # the flag wins over the environment
  assert parallel.initialize_distributed("127.0.0.1:1234", 2, 0, heartbeat_timeout_s=5)
  assert recorded[-1]["heartbeat_timeout_seconds"] == 5
  monkeypatch.delenv("RAN_HEARTBEAT_TIMEOUT_S")
  assert parallel.initialize_distributed("127.0.0.1:1234", 2, 1)
  assert "heartbeat_timeout_seconds" not in recorded[-1]


@pytest.mark.parametrize("bad", [0, -3])
def test_a_heartbeat_below_one_second_is_refused_not_defaulted(recorded, bad):
  with pytest.raises(ValueError, match="at least 1 second"):
    parallel.initialize_distributed("127.0.0.1:1234", 2, 0, heartbeat_timeout_s=bad)
  assert not recorded


def test_a_heartbeat_that_is_not_a_number_is_refused(recorded, monkeypatch):
  monkeypatch.setenv("RAN_HEARTBEAT_TIMEOUT_S", "soon")
  with pytest.raises(ValueError, match="whole number of seconds"):
    parallel.initialize_distributed("127.0.0.1:1234", 2, 0)
  assert not recorded


def test_a_single_process_run_starts_nothing(recorded):
  assert not parallel.initialize_distributed(heartbeat_timeout_s=5)
  assert not recorded
