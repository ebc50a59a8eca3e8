"""Mesh and shardings: the one module that knows about devices and hosts.

Data parallelism is `jax.jit` over a one-axis device mesh: batches sharded on
P('data'), the train state replicated on P(); XLA inserts the gradient all-reduce.
"""

from __future__ import annotations

import numpy as np
import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
MODEL_AXIS = "model"
# The classifier's wide hidden layers, sharded over MODEL_AXIS when it has more than one
# device: the first layer's kernel by output column, the second's by input row (and the
# first's bias with its columns).
SHARDED_CLASSIFIER = {("fc1", "kernel"): P(None, MODEL_AXIS), ("fc1", "bias"): P(MODEL_AXIS),
                      ("fc2", "kernel"): P(MODEL_AXIS, None)}


def make_mesh(devices=None, model_shards: int = 1) -> jax.sharding.Mesh:
  """All devices in one mesh: 1-D ('data',), or ('data', 'model') with `model_shards` > 1.

  Every device holds different examples in both cases (the batch is sharded over all
  axes); the 'model' axis only splits the classifier's wide layers (`state_shardings`).
  """
  devices = list(devices) if devices is not None else jax.devices()
  m = int(model_shards or 1)
  if m < 1 or len(devices) % m:
    raise ValueError(f"model.classifier_shards={m} must divide the {len(devices)} devices.")
  # Auto axis types: a plain data-parallel step must not need explicit-sharding
  # annotations inside library code (optax losses).
  if m == 1:
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,),
                         devices=devices)
  return jax.make_mesh((len(devices) // m, m), (DATA_AXIS, MODEL_AXIS),
                       axis_types=(AxisType.Auto,) * 2, devices=devices)


def model_shards(mesh) -> int:
  return int(dict(mesh.shape).get(MODEL_AXIS, 1))


def data_sharding(mesh) -> NamedSharding:
  """Examples sharded over every device (all the mesh's axes)."""
  if model_shards(mesh) == 1:
    return NamedSharding(mesh, P(DATA_AXIS))
  return NamedSharding(mesh, P((DATA_AXIS, MODEL_AXIS)))


def _path_names(path) -> tuple:
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def state_shardings(mesh, tree):
  """Shardings of a train-state pytree: replicated, except the classifier's wide layers on a
  mesh with a 'model' axis (in the parameters, both Adam moments and the moving average)."""
  repl = replicated(mesh)
  if model_shards(mesh) == 1:
    return jax.tree.map(lambda _: repl, tree)

  def one(path, leaf):
    names = _path_names(path)
    if "classifier" in names:
      i = names.index("classifier")
      spec = SHARDED_CLASSIFIER.get(names[i + 1:i + 3])
      if spec is not None and len(names) == i + 3 and len(getattr(leaf, "shape", ())) == len(spec):
        return NamedSharding(mesh, spec)
    return repl

  return jax.tree_util.tree_map_with_path(one, tree)


def classifier_constraints(mesh):
  """What the classifier's sharded layers need of their activations on `mesh`, as a
  callable (x, role) -> x for `models.Classifier(constrain=...)`; None without a 'model'
  axis. 'gather': the features of a model group's examples on each of its devices (an
  all-gather within the group, before the column-sharded first layer); 'hidden': the first
  layer's output, the group's examples by its column shard; 'batch': back to examples
  sharded over every device (a reduce-scatter of the row-sharded second layer)."""
  if model_shards(mesh) == 1:
    return None
  specs = {"gather": NamedSharding(mesh, P(DATA_AXIS, None)),
           "hidden": NamedSharding(mesh, P(DATA_AXIS, MODEL_AXIS)),
           "batch": NamedSharding(mesh, P((DATA_AXIS, MODEL_AXIS), None))}

  def constrain(x, role):
    return jax.lax.with_sharding_constraint(x, specs[role])

  return constrain


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


# Devices that mean "an accelerator may be here": JAX's own probes (jax._src.hardware_utils)
# look for the same files. A Google PCI device other than its network card (gVNIC, 0x0042)
# counts as a TPU chip, so that a generation newer than this list is never hidden.
_GOOGLE_PCI_VENDOR = "0x1ae0"
_GOOGLE_NON_TPU_DEVICES = frozenset({"0x0042"})
_ACCELERATOR_DEVICE_FILES = ("dev/nvidia0", "dev/nvidiactl", "dev/dxg", "dev/kfd")
_ACCELERATOR_DEVICE_GLOBS = ("dev/accel[0-9]*", "dev/vfio/[0-9]*")


def host_accelerators(root: str = "/") -> list:
  """What on this host may be an accelerator: device files and Google PCI devices (TPU
  chips), as paths under `root`; [] on a CPU-only machine."""
  import glob
  import os

  found = [os.path.join(root, f) for f in _ACCELERATOR_DEVICE_FILES
           if os.path.exists(os.path.join(root, f))]
  for pattern in _ACCELERATOR_DEVICE_GLOBS:
    found += sorted(glob.glob(os.path.join(root, pattern)))
  for vendor in sorted(glob.glob(os.path.join(root, "sys/bus/pci/devices/*/vendor"))):
    try:
      with open(vendor) as f:
        if f.read().strip() != _GOOGLE_PCI_VENDOR:
          continue
      with open(os.path.join(os.path.dirname(vendor), "device")) as f:
        device = f.read().strip()
    except OSError:
      continue
    if device not in _GOOGLE_NON_TPU_DEVICES:
      found.append(os.path.dirname(vendor))
  return found


def cpu_unless_accelerator(environ=None, root: str = "/") -> str | None:
  """Runs JAX on the CPU when this host has no accelerator and the user chose no platform.

  Left to itself, JAX tries every backend it finds installed: with `libtpu` installed (the
  `[tpu-plan]` extra, for `ran-plan`) it loads the TPU runtime even on a machine with no
  TPU, which prints `Failed to find host bounds`, `TPU_WORKER_HOSTNAMES` errors and
  `Unable to initialize backend 'tpu'` (and, beside another JAX process, advice to delete
  the runtime's lockfile, which would break that process). On a host with no accelerator
  the CPU is the only backend JAX could pick, so naming it changes no result. A set
  JAX_PLATFORMS (even empty), JAX_FORCE_TPU_INIT, or any accelerator device on the host
  leaves the choice to JAX. Every command calls this before JAX starts a backend.

  Returns 'cpu' when it chose the CPU, else None.
  """
  import os
  import sys

  env = os.environ if environ is None else environ
  if "JAX_PLATFORMS" in env or "JAX_FORCE_TPU_INIT" in env or host_accelerators(root):
    return None
  env["JAX_PLATFORMS"] = "cpu"   # read by JAX when imported, and by child processes
  if environ is None and "jax" in sys.modules:   # JAX imported already: its config too
    jax.config.update("jax_platforms", "cpu")   # (no effect once a backend has started)
  return "cpu"


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None,
                           heartbeat_timeout_s: int | None = None) -> bool:
  """Starts `jax.distributed` when this run spans several processes.

  Explicit arguments (or RAN_COORDINATOR_ADDRESS / RAN_NUM_PROCESSES /
  RAN_PROCESS_ID) start it anywhere, CPU included (gloo collectives); on a
  multi-host Cloud TPU slice it is auto-detected from the TPU environment.
  Returns True when it was started. Must run before any other JAX call.

  heartbeat_timeout_s (or RAN_HEARTBEAT_TIMEOUT_S; default JAX's, 100 s): a process
  that has sent no heartbeat for this long is declared lost, and every other process
  then stops with JAX's message naming it instead of waiting in a collective forever.
  The rerun resumes from the newest complete checkpoint.
  """
  import os

  addr = coordinator_address or os.environ.get("RAN_COORDINATOR_ADDRESS")
  n = num_processes or int(os.environ.get("RAN_NUM_PROCESSES", "0") or 0)
  pid = process_id if process_id is not None else os.environ.get("RAN_PROCESS_ID")
  heartbeat = (heartbeat_timeout_s if heartbeat_timeout_s is not None
               else os.environ.get("RAN_HEARTBEAT_TIMEOUT_S") or None)
  kw = {}
  if heartbeat is not None:
    try:
      kw["heartbeat_timeout_seconds"] = int(heartbeat)
    except ValueError:
      raise ValueError(f"heartbeat timeout {heartbeat!r}: a whole number of seconds.") from None
    if kw["heartbeat_timeout_seconds"] < 1:
      raise ValueError(f"heartbeat timeout {heartbeat!r}: at least 1 second.")
  if addr:
    if not n or pid is None:
      raise ValueError("A coordinator address needs the number of processes and this process's "
                       "id (--num_processes/--process_id or RAN_NUM_PROCESSES/RAN_PROCESS_ID).")
    pid = int(pid)
    if not 0 <= pid < n:
      raise ValueError(f"process_id={pid} must be in [0, {n}).")
    # CPU processes exchange gradients through gloo; accelerators ignore this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=addr, num_processes=n, process_id=pid, **kw)
    return True
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  if len([h for h in hosts.split(",") if h]) > 1:
    jax.distributed.initialize(**kw)  # Cloud TPU pod slice: everything auto-detected
    return True
  return False
