"""Mesh and shardings: the one module that knows about devices and hosts.

Data parallelism is `jax.jit` over a one-axis device mesh: batches sharded on
P('data'), the train state replicated on P(); XLA inserts the gradient all-reduce.
"""

from __future__ import annotations

import numpy as np
import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None) -> jax.sharding.Mesh:
  devices = list(devices) if devices is not None else jax.devices()
  # Auto axis types: a plain data-parallel step must not need explicit-sharding
  # annotations inside library code (optax losses).
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def data_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def process_slice(global_batch: int) -> slice:
  """The rows of a global batch that this process feeds."""
  n = jax.process_count()
  if global_batch % n:
    raise ValueError(f"Global batch {global_batch} is not divisible by the {n} processes.")
  per = global_batch // n
  i = jax.process_index()
  return slice(i * per, (i + 1) * per)


def to_global(batch: dict, mesh) -> dict:
  """Places this process's slice of a batch as global arrays sharded on 'data'."""
  sharding = data_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
  """Starts `jax.distributed` when this run spans several processes.

  Explicit arguments (or RAN_COORDINATOR_ADDRESS / RAN_NUM_PROCESSES /
  RAN_PROCESS_ID) start it anywhere, CPU included (gloo collectives); on a
  multi-host Cloud TPU slice it is auto-detected from the TPU environment.
  Returns True when it was started. Must run before any other JAX call.
  """
  import os

  addr = coordinator_address or os.environ.get("RAN_COORDINATOR_ADDRESS")
  n = num_processes or int(os.environ.get("RAN_NUM_PROCESSES", "0") or 0)
  pid = process_id if process_id is not None else os.environ.get("RAN_PROCESS_ID")
  if addr:
    if not n or pid is None:
      raise ValueError("A coordinator address needs the number of processes and this process's "
                       "id (--num_processes/--process_id or RAN_NUM_PROCESSES/RAN_PROCESS_ID).")
    pid = int(pid)
    if not 0 <= pid < n:
      raise ValueError(f"process_id={pid} must be in [0, {n}).")
    # CPU processes exchange gradients through gloo; accelerators ignore this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=addr, num_processes=n, process_id=pid)
    return True
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  if len([h for h in hosts.split(",") if h]) > 1:
    jax.distributed.initialize()  # Cloud TPU pod slice: everything auto-detected
    return True
  return False
