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
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def replicate(tree, mesh):
  return jax.device_put(tree, replicated(mesh))
