"""Cloud TPU chips and slice topologies, as data: what `ran_jax.plan` compiles for.

`CHIPS` holds each generation's published figures (HBM, peak bf16 flops, HBM and all-reduce
bandwidth, torus dimensions); `parse_topology('v5e-256')` names a slice, `topology_devices`
asks libtpu (`jax.experimental.topologies`) for its devices without a TPU attached.
"""

from __future__ import annotations

import dataclasses
import math
import re

GIB = 1 << 30
LIBTPU_INSTALL = ('pip install "libtpu==0.0.42.*" (the [tpu-plan] extra: pip install -e '
                  '".[tpu-plan]" in a checkout; or: pip install "jax[tpu]==0.10.2")')


class PlanError(ValueError):
  """A plan that cannot be made: unknown topology, no libtpu, a bad batch, no fit.

  `report`: for a config that does not fit, the plan's report (with its largest batch).
  """

  def __init__(self, message: str, report: dict | None = None):
    super().__init__(message)
    self.report = report


@dataclasses.dataclass(frozen=True)
class Chip:
  """Published per-chip figures of one TPU generation (sources in `source`)."""

  generation: str
  device_kind: str
  hbm_bytes: int
  peak_bf16_flops: float      # flop/s
  hbm_bandwidth: float        # bytes/s
  allreduce_bandwidth: float  # bytes/s per chip (see the module docstring)
  torus_dims: int
  megacore: bool              # two TensorCores per chip run as one device
  chips_per_host: int         # multi-host slices (single-host slices: up to 8 on v5e/v6e)
  source: str


CHIPS = {
    "v4": Chip("v4", "TPU v4", 32 * GIB, 275e12, 1200e9, 1.1e15 / 4096, 3, True, 4,
               "https://cloud.google.com/tpu/docs/v4 (275 TFLOPs bf16; HBM2 32 GiB, 1200 GBps; "
               "all-reduce bandwidth per Pod 1.1 PB/s over 4096 chips)"),
    "v5e": Chip("v5e", "TPU v5 lite", 16 * GIB, 197e12, 819e9, 51.2e12 / 256, 2, False, 4,
                "https://cloud.google.com/tpu/docs/v5e (197 TFLOPs bf16; 16 GiB, 819 GBps; "
                "all-reduce bandwidth per Pod 51.2 TB/s over 256 chips)"),
    "v5p": Chip("v5p", "TPU v5", 95 * GIB, 459e12, 2765e9, 4800e9 / 8, 3, True, 4,
                "https://cloud.google.com/tpu/docs/v5p (459 TFLOPs bf16; 95 GiB, 2765 GBps; "
                "inter-chip interconnect 4800 Gbps per chip; no per-Pod all-reduce figure)"),
    "v6e": Chip("v6e", "TPU v6 lite", 32 * GIB, 918e12, 1638e9, 102.4e12 / 256, 2, False, 4,
                "https://cloud.google.com/tpu/docs/v6e (918 TFLOPs bf16; 32 GB, 1638 GBps; "
                "all-reduce bandwidth per Pod 102.4 TB/s over 256 chips)"),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e", "trillium": "v6e"}
# Chips -> slice shape. v4/v5p accelerator types count TensorCores (2 per chip).
_SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
              128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16)}
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8),
              128: (8, 16), 256: (16, 16)}


@dataclasses.dataclass(frozen=True)
class Topology:
  """A Cloud TPU slice: generation, chip grid, hosts."""

  name: str                   # as given, e.g. 'v5e-8' or 'v5e:2x4'
  chip: Chip
  shape: tuple                # chips along each torus axis
  chips_per_host_bounds: tuple

  @property
  def num_chips(self) -> int:
    return math.prod(self.shape)

  @property
  def num_hosts(self) -> int:
    return self.num_chips // math.prod(self.chips_per_host_bounds)

  @property
  def accelerator_type(self) -> str:
    n = self.num_chips * (2 if self.chip.megacore else 1)
    return f"{self.chip.generation}-{n}"

  @property
  def topology_name(self) -> str:
    return f"{self.chip.generation}:{'x'.join(map(str, self.shape))}"


def known_topologies() -> str:
  return ("an accelerator type such as v4-8, v4-16, v5e-8 (or v5litepod-8), v5e-16, v5e-256, "
          "v5p-8, v5p-16, v6e-8, v6e-16, or a generation:shape such as v5e:2x4 or v4:2x2x2; "
          f"generations {sorted(CHIPS)}; chip counts {sorted(_SHAPES_2D)} (v5e, v6e) and "
          f"{sorted(_SHAPES_3D)} (v4, v5p)")


def parse_topology(name: str) -> Topology:
  """'v5e-8' / 'v5litepod-16' / 'v4-16' / 'v5e:2x4' -> Topology; PlanError if unknown."""
  raw = str(name).strip().lower()
  m = re.fullmatch(r"([a-z0-9]+?)(?:pod)?([-:])([0-9x]+)", raw)
  if not m:
    raise PlanError(f"Unknown TPU topology {name!r}: expected {known_topologies()}.")
  gen, sep, rest = m.groups()
  gen = _ALIASES.get(gen, gen)
  if gen not in CHIPS:
    raise PlanError(f"Unknown TPU generation {m.group(1)!r} in {name!r}: expected "
                    f"{known_topologies()}.")
  chip = CHIPS[gen]
  shapes = _SHAPES_3D if chip.torus_dims == 3 else _SHAPES_2D
  if sep == ":":
    try:
      shape = tuple(int(s) for s in rest.split("x"))
    except ValueError:
      shape = ()
    if len(shape) != chip.torus_dims or min(shape, default=0) < 1:
      raise PlanError(f"TPU topology {name!r}: {gen} slices have {chip.torus_dims} axes "
                      f"(e.g. {gen}:{'x'.join(map(str, shapes[8]))}).")
  else:
    if not rest.isdigit():
      raise PlanError(f"Unknown TPU topology {name!r}: expected {known_topologies()}.")
    n = int(rest)
    chips = n // 2 if chip.megacore else n
    if chip.megacore and n % 2 or chips not in shapes:
      raise PlanError(f"Unknown TPU topology {name!r}: {gen} accelerator types count "
                      f"{'TensorCores (2 per chip)' if chip.megacore else 'chips'}; expected "
                      f"{known_topologies()}.")
    shape = shapes[chips]
  chips = math.prod(shape)
  if chip.torus_dims == 2 and chips <= 8:
    per_host = tuple(shape) + (1,)       # single-host v5e/v6e slices: all chips on one host
  elif chip.torus_dims == 2:
    per_host = (2, 2, 1)
  else:
    per_host = (min(shape[0], 2), min(shape[1], 2), 1)
  return Topology(str(name), chip, shape, per_host)


def topology_devices(topo: Topology) -> list:
  """The slice's compile-only TPU devices (one per chip); PlanError without libtpu."""
  import os

  # Compiling only: several processes may load libtpu at once (tests, parallel plans), and
  # this host has no TPU metadata server to ask.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  # What a TPU VM's metadata would tell the runtime; without them libtpu prints errors about
  # TPU_WORKER_HOSTNAMES and the host bounds. The topology compiled is the one asked for.
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", topo.accelerator_type)
  try:
    from jax.experimental import topologies
  except ImportError as e:  # pragma: no cover - part of jax
    raise PlanError(f"jax.experimental.topologies is unavailable: {e}") from e
  try:
    desc = topologies.get_topology_desc(
        platform="tpu", topology_name=topo.topology_name,
        chip_config_name="megacore" if topo.chip.megacore else "default",
        chips_per_host_bounds=topo.chips_per_host_bounds)
  except Exception as e:  # noqa: BLE001 - libtpu missing or refusing the shape
    msg = str(e)
    low = msg.lower()
    if "lockfile" in low:
      raise PlanError(f"Another process holds libtpu on this host ({msg.splitlines()[0]}); "
                      "set ALLOW_MULTIPLE_LIBTPU_LOAD=1 or wait for it.") from e
    if not has_libtpu() or "not found" in low or "unknown backend" in low:
      raise PlanError(f"Compiling for TPU needs libtpu on this host: {LIBTPU_INSTALL}. "
                      f"({msg.splitlines()[0] if msg else type(e).__name__})") from e
    raise PlanError(f"libtpu refused topology {topo.name} ({topo.topology_name}): "
                    f"{msg.splitlines()[0] if msg else type(e).__name__}") from e
  devices = list(desc.devices)
  if len(devices) != topo.num_chips:
    raise PlanError(f"{topo.name}: libtpu gave {len(devices)} devices for {topo.num_chips} chips.")
  return devices


def has_libtpu() -> bool:
  try:
    import libtpu  # noqa: F401
  except ImportError:
    return False
  return True
