"""Ahead-of-time plan of a run on a Cloud TPU slice, compiled on any host (no TPU needed).

`plan(config, topology)` builds the run's own program (`program.build_program`) on a mesh
of the slice's devices, as `jax.experimental.topologies` describes them once `libtpu` is
installed, and compiles for the TPU everything a training run executes: the state
initialisation, the Algorithm-1 iteration (or each stage step and the moving average
when not fused) and the test-split step, with the run's real shardings and donation.
From the compiled executables it reads, per chip:

- HBM: arguments, outputs (less what is aliased to donated arguments) and temporaries,
  against the chip's capacity;
- flops and HBM bytes per iteration (`cost_analysis`);
- the collectives in the optimised HLO, by kind, with their count and bytes;

and from those a **compile-time estimate** (never a measurement) of the step time:
a roofline lower bound max(flops / peak, bytes / HBM bandwidth), and a communication
time from a stated model (below), and from those images/s, the hours of one epoch and
the chip-hours of the config's epochs. `largest_batch` finds the largest per-chip batch that
fits by compiling: temporaries grow about linearly with the batch, so two compiles
give the line and a third confirms the prediction.

Communication model (stated, not measured): an all-reduce of V bytes over n chips costs
2 V (n-1)/n / W plus a latency; an all-gather or reduce-scatter (n-1)/n V / W plus the
latency. W is the chip's all-reduce bandwidth (the pod's published all-reduce bandwidth
over its chip count, or the published per-chip ICI bandwidth where no pod figure is
published; see `CHIPS`), halved on the axes of a slice that lack the pod's wraparound
links (`wraparound_factor`). The latency of one collective is `LAUNCH_US` plus `HOP_US` per
hop of a ring along each torus axis the slice spans, reduce-scatter then all-gather:
2 x sum over axes of (axis length - 1) hops. So a 16x16 v5e slice pays
5 + 2 x 30 = 65 us per collective, whatever its size: many small collectives are latency.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from ran_jax import parallel

GIB = 1 << 30
# Training examples per epoch, for the epoch-time estimate.
TRAIN_EXAMPLES = {"imagenet2012": 1_281_167, "cifar10": 50_000, "mnist": 60_000, "digits": 1_437}
LAUNCH_US = 5.0     # fixed cost of one collective (us), a stated assumption
HOP_US = 1.0        # per ring hop (us), a stated assumption (ICI link latency order)
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


# ---------------------------------------------------------------- reading the executable

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2,
                "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8,
                "f64": 8, "c64": 8, "c128": 16}
_SHAPE = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([0-9,]*)\]")
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_OP = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s(" + "|".join(COLLECTIVES)
                 + r")(-start)?\(")


def _shape_bytes(text: str) -> list[int]:
  out = []
  for dtype, dims in _SHAPE.findall(text):
    n = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
    out.append(n * _DTYPE_BYTES[dtype])
  return out


def collectives(hlo_text: str) -> dict:
  """{kind: {'count', 'bytes', 'sizes'}} of the collectives in an optimised HLO module.

  Bytes are the result's (all-gather: the gathered output; async starts: the
  operands, not the tuple's output copy). An op counts once per channel id (the TPU
  compiler repeats a collective's text in the fused computations that use it); an op
  inside a loop body counts once (RAN's programs unroll their loops).
  """
  out = {}
  seen = set()
  for line in hlo_text.splitlines():
    m = _OP.match(line)
    if not m:
      continue
    shape_text, kind, is_async = m.groups()
    channel = re.search(r"channel_id=(\d+)", line)
    if channel:  # one collective, however many fused computations repeat its text
      if (kind, channel.group(1)) in seen:
        continue
      seen.add((kind, channel.group(1)))
    sizes = _shape_bytes(shape_text)
    if is_async and kind in ("all-gather", "collective-permute", "all-to-all") and len(sizes) > 1:
      sizes = sizes[len(sizes) // 2:]        # (operands, outputs): count the outputs
    rec = out.setdefault(kind, {"count": 0, "bytes": 0, "sizes": []})
    rec["count"] += 1
    rec["bytes"] += sum(sizes)
    rec["sizes"].append(sum(sizes))
  return out


def collective_seconds(colls: dict, topo: Topology) -> dict:
  """The stated model's time for `collectives(...)` on `topo` (see the module docstring)."""
  n = topo.num_chips
  if n == 1:
    return {"bandwidth_s": 0.0, "latency_s": 0.0, "total_s": 0.0, "per_op_latency_us": 0.0}
  w = topo.chip.allreduce_bandwidth * wraparound_factor(topo)
  hops = 2 * sum(s - 1 for s in topo.shape)
  per_op = (LAUNCH_US + HOP_US * hops) * 1e-6
  bw = 0.0
  ops = 0
  for kind, rec in colls.items():
    factor = 2.0 if kind == "all-reduce" else 1.0
    bw += factor * rec["bytes"] * (n - 1) / n / w
    ops += rec["count"]
  return {"bandwidth_s": bw, "latency_s": ops * per_op, "total_s": bw + ops * per_op,
          "per_op_latency_us": per_op * 1e6}


def wraparound_factor(topo: Topology) -> float:
  """The share of the published all-reduce bandwidth a slice gets (stated model).

  The published figure is the full pod's, whose axes close into rings (torus links).
  An axis without its wraparound link carries a ring as a line there and back: half the
  bandwidth. v5e/v6e axes wrap at the pod's 16; v4/v5p slices of whole 4x4x4 cubes wrap
  on their axes that are multiples of 4. Averaged over the axes longer than one chip.
  """
  axes = [s for s in topo.shape if s > 1]
  if not axes:
    return 1.0
  if topo.chip.torus_dims == 2:
    wraps = [s == 16 for s in axes]
  else:
    cube = all(s >= 4 for s in topo.shape)
    wraps = [cube and s % 4 == 0 for s in axes]
  return sum(1.0 if w else 0.5 for w in wraps) / len(axes)


def _cost(compiled) -> dict:
  ca = compiled.cost_analysis()
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else {}
  ca = ca or {}
  return {"flops": float(ca.get("flops", 0.0)),
          "bytes_accessed": float(ca.get("bytes accessed", 0.0))}


def _memory(compiled) -> dict:
  m = compiled.memory_analysis()
  args, outs = int(m.argument_size_in_bytes), int(m.output_size_in_bytes)
  alias, temp = int(m.alias_size_in_bytes), int(m.temp_size_in_bytes)
  code = int(m.generated_code_size_in_bytes)
  return {"arguments": args, "outputs": outs, "aliased": alias, "temporaries": temp, "code": code,
          "peak": args + outs - alias + temp + code}


def _compiled_report(name: str, compiled, seconds: float) -> dict:
  return {"name": name, "compile_seconds": round(seconds, 1), "memory": _memory(compiled),
          "cost": _cost(compiled), "collectives": collectives(compiled.as_text())}


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _compile(fn, args):
  """Ahead-of-time compile of a jitted `fn` for abstract `args` (on the topology's devices)."""
  return fn.lower(*args).compile()


def _bytes_per_chip(args) -> int:
  """Bytes of one device's shards of abstract arguments (ShapeDtypeStructs with shardings)."""
  total = 0
  for leaf in jax.tree.leaves(args):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
  return int(total)


def _out_of_memory_report(name: str, error: Exception, seconds: float, args) -> dict:
  """The report of a program the TPU compiler refused for HBM (RESOURCE_EXHAUSTED).

  The compiler names the temporaries it needed (e.g. "memory required for HLO temporaries
  (16.12G)"); the peak is estimated as those plus the arguments' bytes per chip (outputs
  alias the donated state), and `over_capacity` marks it as not fitting.
  """
  msg = str(error)
  m = re.search(r"required[^()]*\(([\d.]+)\s*([KMGT]?)i?B?\)", msg)
  temps = int(float(m.group(1)) * _UNITS[m.group(2)]) if m else 0
  arguments = _bytes_per_chip(args)
  return {"name": name, "compile_seconds": round(seconds, 1),
          "memory": {"arguments": arguments, "temporaries": temps, "peak": arguments + temps,
                     "over_capacity": True, "estimated": True, "compiler": msg.strip()[:500]},
          "cost": {"flops": 0.0, "bytes_accessed": 0.0}, "collectives": {}}


def _is_out_of_memory(error: Exception) -> bool:
  return "RESOURCE_EXHAUSTED" in str(error) or "Ran out of memory" in str(error)


def _fits(compiled: dict, capacity: int) -> bool:
  return all(not r["memory"].get("over_capacity") and r["memory"]["peak"] <= capacity
             for r in compiled.values())


# ---------------------------------------------------------------- the run's program


def input_spec_for(config):
  """The run's InputSpec from the config alone (no data read): image datasets only."""
  from ran_jax.program import InputSpec

  name = config.data.name
  known = {"imagenet2012": (3, 1000), "cifar10": (3, 10), "mnist": (1, 10), "digits": (1, 10)}
  if name not in known:
    raise PlanError(f"Planning knows the image datasets {sorted(known)}; data.name={name!r}.")
  channels, classes = known[name]
  size = int(config.data.image_size) or {"imagenet2012": 224, "cifar10": 32}.get(name, 28)
  classes = int(config.data.get("num_classes") or classes)
  return InputSpec((size, size, channels), classes, (0.0, 1.0),
                   0 if not config.data.get("attribute") else 2)


def _abstract_batch(spec, batch: int, mesh, test: bool = False) -> dict:
  ds = parallel.data_sharding(mesh)
  b = {"image": jax.ShapeDtypeStruct((batch,) + tuple(spec.input_shape), jnp.float32, sharding=ds),
       "label": jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=ds)}
  if spec.num_attributes:
    b["attribute"] = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=ds)
  if test:
    b["mask"] = jax.ShapeDtypeStruct((batch,), jnp.bool_, sharding=ds)
  return b


def _tpu_config(config, batch_size: int | None):
  cfg = config.copy_and_resolve_references()
  cfg.model.conv_impl = "xla"   # 'auto' would resolve against this host's CPU backend
  if batch_size is not None:
    cfg.batch_size = int(batch_size)
  return cfg


def compile_program(config, topo: Topology, devices=None, *, batch_size: int | None = None,
                    parts: Sequence[str] = ("init", "iteration", "test_step"),
                    hlo_dir: str | None = None) -> dict:
  """Compiles the run's program for `topo`; returns {part: report} (see `plan`).

  `hlo_dir`: also writes each part's optimised HLO there (`<topology>_<part>.hlo.txt`).
  """
  from ran_jax.config_lib import ConfigError, validate_config
  from ran_jax.program import build_program

  cfg = _tpu_config(config, batch_size)
  n = topo.num_chips
  if cfg.batch_size % n:
    raise PlanError(f"batch_size={cfg.batch_size} does not divide over the {n} chips of "
                    f"{topo.name}; use a multiple of {n} (e.g. {n * max(1, cfg.batch_size // n)}).")
  eval_batch = int(cfg.eval_batch_size)
  if eval_batch % n:
    eval_batch = n * max(1, eval_batch // n)
  try:
    validate_config(cfg, num_devices=n)
  except ConfigError as e:
    raise PlanError(str(e)) from e
  devices = devices if devices is not None else topology_devices(topo)
  mesh = parallel.make_mesh(devices, model_shards=cfg.model.get("classifier_shards", 1))
  spec = input_spec_for(cfg)
  total = 1000  # sizes a non-constant schedule; the compiled program does not depend on it
  prog = build_program(cfg, mesh, spec, total_steps=total)
  state = prog.abstract_state()
  batch = _abstract_batch(spec, cfg.batch_size, mesh)
  out = {}

  def run(name, fn, *args):
    t = time.perf_counter()
    try:
      compiled = _compile(fn, args)
    except Exception as e:  # pylint: disable=broad-except
      if not _is_out_of_memory(e):
        raise
      out[name] = _out_of_memory_report(name, e, time.perf_counter() - t, args)
      return
    out[name] = _compiled_report(name, compiled, time.perf_counter() - t)
    if hlo_dir:
      from etils import epath

      d = epath.Path(hlo_dir)
      d.mkdir(parents=True, exist_ok=True)
      tag = re.sub(r"[^\w.-]", "_", f"{topo.topology_name}_b{cfg.batch_size}_{name}")
      (d / f"{tag}.hlo.txt").write_text(compiled.as_text())

  key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=parallel.replicated(mesh))
  if "init" in parts:
    run("init", prog._init, key)  # pylint: disable=protected-access
  if "iteration" in parts:
    if cfg.ran.get("fused", True):
      run("iteration", prog.iteration, state, batch)
    else:
      for stage in ("disc", "gen", "adv"):
        run(stage, getattr(prog.stage_steps, stage), state, batch)
      for extra in ("reinit", "ema"):
        fn = getattr(prog.stage_steps, extra)
        if fn is not None:
          run(extra, fn, state)
  if "test_step" in parts:
    run("test_step", prog.test_step, state, _abstract_batch(spec, eval_batch, mesh, test=True),
        key)
  return out


def _iteration_parts(compiled: dict, config) -> list:
  """The reports that one Algorithm-1 iteration runs, each with its repeat count."""
  if "iteration" in compiled:
    return [(compiled["iteration"], 1)]
  k = int(config.ran.k)
  reps = {"disc": k, "gen": k, "adv": 1, "reinit": 1, "ema": 1}
  return [(compiled[n], r) for n, r in reps.items() if n in compiled]


def summarise(compiled: dict, config, topo: Topology, batch_size: int) -> dict:
  """Per-chip memory, cost, collectives and the compile-time step estimate of one iteration."""
  chip = topo.chip
  peak = max(r["memory"]["peak"] for r in compiled.values())
  flops = hbm = 0.0
  colls: dict = {}
  for rep, times in _iteration_parts(compiled, config):
    flops += times * rep["cost"]["flops"]
    hbm += times * rep["cost"]["bytes_accessed"]
    for kind, c in rep["collectives"].items():
      agg = colls.setdefault(kind, {"count": 0, "bytes": 0})
      agg["count"] += times * c["count"]
      agg["bytes"] += times * c["bytes"]
  t_flops = flops / chip.peak_bf16_flops
  t_hbm = hbm / chip.hbm_bandwidth
  t_compute = max(t_flops, t_hbm)
  comm = collective_seconds(colls, topo)
  step = t_compute + comm["total_s"]           # no overlap assumed: the conservative sum
  ips = batch_size / step if step > 0 else float("inf")
  epoch_h = TRAIN_EXAMPLES.get(config.data.name, 0) / ips / 3600
  epochs = int(config.num_epochs)
  return {
      "fits": _fits(compiled, chip.hbm_bytes),
      "hbm_per_chip": {"peak": peak, "capacity": chip.hbm_bytes,
                       "headroom": chip.hbm_bytes - peak,
                       "by_program": {n: r["memory"] for n, r in compiled.items()}},
      "per_iteration": {"flops": flops, "hbm_bytes": hbm, "collectives": colls},
      "estimate": {
          "label": "compile-time estimate (roofline lower bound + stated communication model), "
                   "not a measurement",
          "compute_s": t_compute, "flops_bound_s": t_flops, "hbm_bound_s": t_hbm,
          "communication": comm,
          "communication_fraction_of_compute": comm["total_s"] / t_compute if t_compute else 0.0,
          "step_s": step, "images_per_s": ips, "images_per_s_per_chip": ips / topo.num_chips,
          "epoch_hours": epoch_h, "epochs": epochs,
          "run_chip_hours": epoch_h * epochs * topo.num_chips,
      },
  }


def largest_batch(config, topo: Topology, devices=None, *, start: int | None = None,
                  known: dict | None = None, log=print) -> dict:
  """The largest per-chip batch whose iteration fits, found by compiling (3-5 compiles).

  Compiles at the per-chip batch b1 and at 2*b1 (at b1/2 when b1 does not fit), fits peak
  HBM = a + s*b, predicts the largest b under capacity (below any batch seen not to fit),
  and compiles there to confirm, stepping down 1/16 at a time until it fits. A batch the
  compiler refuses for memory counts as not fitting; its peak is then the compiler's
  stated temporaries plus the arguments' bytes per chip (an estimate, good for the line).
  """
  devices = devices if devices is not None else topology_devices(topo)
  n = topo.num_chips
  cap = topo.chip.hbm_bytes
  points: dict = dict(known or {})   # per-chip batch -> (peak bytes, fits)

  def at(b):
    if b not in points:
      t = time.perf_counter()
      rep = compile_program(config, topo, devices, batch_size=b * n, parts=("iteration",))
      peak = max(r["memory"]["peak"] for r in rep.values())
      points[b] = (peak, _fits(rep, cap))
      log(f"  per-chip batch {b}: peak {peak / GIB:.2f} GiB"
          f"{'' if points[b][1] else ' (does not fit)'} "
          f"({time.perf_counter() - t:.0f} s to compile)")
    return points[b]

  b1 = max(1, (start or config.batch_size) // n)
  b2 = 2 * b1 if at(b1)[1] else b1 // 2
  result = {"per_chip": 0, "global": 0, "line": None, "predicted": None}
  if b2 >= 1:
    lo, hi = sorted((b1, b2))
    slope = (at(hi)[0] - at(lo)[0]) / (hi - lo)
    if slope <= 0:
      raise PlanError(f"{topo.name}: peak memory did not grow with the batch "
                      f"({at(lo)[0]} bytes at {lo} per chip, {at(hi)[0]} at {hi}).")
    intercept = at(lo)[0] - slope * lo
    guess = int((cap - intercept) // slope)
    result.update(line={"intercept_bytes": intercept, "bytes_per_example": slope},
                  predicted=guess)
    over = min([b for b, (_, ok) in points.items() if not ok], default=None)
    b = max(1, guess if over is None else min(guess, over - 1))
    while b > 1 and not at(b)[1]:
      b = max(1, b - max(1, b // 16))
    at(b)
    fitting = [k for k, (_, ok) in points.items() if ok]
    if fitting:
      result.update({"per_chip": max(fitting), "global": max(fitting) * n})
  result["compiled"] = {str(k): {"peak": p, "fits": ok} for k, (p, ok) in sorted(points.items())}
  return result


def plan(config, topology: str, *, batch_size: int | None = None, find_largest_batch: bool = False,
         hlo_dir: str | None = None, log=print) -> dict:
  """Compiles `config`'s run for the TPU slice `topology` and reports per-chip resources.

  Args:
    config: a RAN config (ml_collections ConfigDict) or a packaged config's name
      ('imagenet_vgg', 'cifar10_alexnet:smoke').
    topology: e.g. 'v5e-8', 'v5e-16', 'v4-8', 'v5p-16', 'v6e-8', 'v5e:16x16'.
    batch_size: global batch (default: the config's); must divide over the chips.
    find_largest_batch: also find the largest per-chip batch that fits, by compiling.
    hlo_dir: also write the optimised HLO of every compiled program there.
  Returns:
    A JSON-able dict: slice, per-chip HBM (fits?), flops and HBM bytes per iteration,
    collectives by kind, and a compile-time step estimate (labelled as such).
  Raises:
    PlanError: unknown topology, libtpu missing, a batch that does not divide, or a
    config that does not fit (the message names the largest batch that does).
  """
  if isinstance(config, str):
    from ran_jax import configs

    config = configs.get_config(config)
  topo = parse_topology(topology)
  devices = topology_devices(topo)
  cfg = _tpu_config(config, batch_size)
  t = time.perf_counter()
  compiled = compile_program(cfg, topo, devices, hlo_dir=hlo_dir)
  summary = summarise(compiled, cfg, topo, cfg.batch_size)
  report = {
      "topology": {"name": topo.name, "accelerator_type": topo.accelerator_type,
                   "shape": list(topo.shape), "chips": topo.num_chips, "hosts": topo.num_hosts,
                   "generation": topo.chip.generation,
                   "chip": {k: v for k, v in dataclasses.asdict(topo.chip).items()}},
      "config": {"encoder": cfg.model.encoder, "dtype": cfg.model.dtype,
                 "input": list(input_spec_for(cfg).input_shape), "batch_size": cfg.batch_size,
                 "per_chip_batch": cfg.batch_size // topo.num_chips, "k": int(cfg.ran.k),
                 "fused": bool(cfg.ran.get("fused", True)),
                 "parallel": _parallel_fields(cfg)},
      "model": {"hop_us": HOP_US, "launch_us": LAUNCH_US},
      **summary,
      "compile_seconds": round(time.perf_counter() - t, 1),
      "jax": jax.__version__,
  }
  if find_largest_batch or not summary["fits"]:
    steps = {k: v for k, v in compiled.items() if k not in ("init", "test_step")}
    known = {cfg.batch_size // topo.num_chips: (
        max(r["memory"]["peak"] for r in steps.values()), _fits(steps, topo.chip.hbm_bytes))}
    lb = largest_batch(cfg, topo, devices, known=known if steps else None, log=log)
    report["largest_batch"] = lb
    if not summary["fits"]:
      refused = any(r["memory"].get("over_capacity") for r in compiled.values())
      need = (f"{'at least ' if refused else ''}"
              f"{summary['hbm_per_chip']['peak'] / GIB:.2f} GiB per chip")
      largest = (f"the largest batch that fits is {lb['per_chip']} per chip "
                 f"(--config.batch_size={lb['global']})" if lb["per_chip"] else
                 "not even 1 example per chip fits: shard the model further or use a larger chip")
      raise PlanError(
          f"{cfg.model.encoder} at batch {cfg.batch_size} ({cfg.batch_size // topo.num_chips} per "
          f"chip) needs {need} on {topo.name}, more than its "
          f"{topo.chip.hbm_bytes / GIB:.0f} GiB; {largest}.", report)
  return report


def _parallel_fields(cfg) -> dict:
  p = cfg.get("parallel")
  return dict(p) if p is not None else {}


# ---------------------------------------------------------------- reports


def markdown(reports: Sequence[dict]) -> str:
  """A markdown table of plan reports (one row per topology)."""
  head = ("| slice | chips / hosts | batch / chip | HBM per chip (GiB) | fits "
          "| largest batch / chip | collectives / iteration | collective bytes / chip "
          "| est. compute (ms) "
          "| est. communication (ms) | comm / compute | est. images/s | est. epoch (h) "
          "| est. run (chip-hours) |")
  rows = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in reports:
    e = r["estimate"]
    colls = r["per_iteration"]["collectives"]
    count = sum(c["count"] for c in colls.values())
    nbytes = sum(c["bytes"] for c in colls.values())
    kinds = ", ".join(f"{c['count']} {k}" for k, c in sorted(colls.items())) or "none"
    lb = r.get("largest_batch", {}).get("per_chip", "")
    rows.append(
        f"| {r['topology']['accelerator_type']} ({'x'.join(map(str, r['topology']['shape']))}) "
        f"| {r['topology']['chips']} / {r['topology']['hosts']} | {r['config']['per_chip_batch']} "
        f"| {r['hbm_per_chip']['peak'] / GIB:.2f} of {r['hbm_per_chip']['capacity'] / GIB:.0f} "
        f"| {'yes' if r['fits'] else 'NO'} | {lb} | {count} ({kinds}) | {nbytes / 1e6:.0f} MB "
        f"| {e['compute_s'] * 1e3:.1f} | {e['communication']['total_s'] * 1e3:.2f} "
        f"| {e['communication_fraction_of_compute'] * 100:.1f} % | {e['images_per_s']:.0f} "
        f"| {e['epoch_hours']:.3g} | {e['run_chip_hours']:.3g} |")
  return "\n".join(rows) + (
      "\n\nEstimates from the compiled program (roofline lower bound and the stated "
      "communication model of `ran_jax.plan`), not measurements.\n")


def write_reports(reports: Sequence[dict], out: str) -> None:
  """JSON to `out` and the markdown table beside it (`out` with .md)."""
  from etils import epath

  path = epath.Path(out)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(list(reports), indent=2, default=_jsonable))
  path.with_suffix(".md").write_text(markdown(reports))


def _jsonable(x: Any):
  if hasattr(x, "tolist"):
    return x.tolist()
  return str(x)


# ---------------------------------------------------------------- the command

CLI_DOC = """Compiles a config's training run for Cloud TPU slices, on this host (no TPU needed).

  ran-plan --config=imagenet_vgg --topology=v5e-8,v5e-16 --workdir=plans/imagenet_vgg
  ran-plan --config=cifar10_alexnet --topology=v4-8 --largest_batch

Needs libtpu (pip install "libtpu==0.0.42.*"). Writes the reports into --workdir as
plan.json and plan.md (a markdown table, also printed), and with --keep_hlo the optimised
HLO of every compiled program under hlo/. Per chip: HBM of every
compiled program against the chip's capacity, flops and HBM bytes per iteration, the
collectives in the optimised HLO, and a compile-time step estimate (a roofline lower
bound plus a stated communication model: an estimate, never a measurement).
Exit status 2 with `error: ...` for an unknown topology, no libtpu, a batch that does
not divide over the chips, or a config that does not fit (naming the largest batch
that does).
"""


def define_flags():
  """The command's flags (defined when it runs, so importing this module defines none)."""
  from absl import flags

  from ran_jax import configs

  configs.define_config_flag("config")
  flags.DEFINE_list("topology", ["v5e-8"], "TPU slices, comma-separated: " + known_topologies())
  flags.DEFINE_string("workdir", None, "Directory to write plan.json and plan.md into.")
  flags.DEFINE_boolean("keep_hlo", False, "Also write the optimised HLO of every compiled "
                       "program into WORKDIR/hlo/.")
  flags.DEFINE_boolean("largest_batch", False,
                       "Also find the largest per-chip batch that fits, by compiling (2-4 "
                       "compiles per slice).")
  flags.DEFINE_boolean("launch", False, "Print the gcloud commands that run the config on the "
                       "(one) --topology, with the workdir and the data under --bucket; "
                       "compiles nothing.")
  flags.DEFINE_string("bucket", None, "With --launch: gs://BUCKET[/prefix] for the wheel, "
                      "the TFDS data (tfds/) and the run (runs/NAME).")
  flags.DEFINE_string("project", None, "With --launch: the Google Cloud project.")
  flags.DEFINE_string("zone", None, "With --launch: the zone of the slice.")
  flags.DEFINE_string("tpu_name", "ran", "With --launch: the TPU VM's name.")
  flags.DEFINE_string("run_name", "", "With --launch: the run's folder under BUCKET/runs "
                      "(default: the config's name).")
  flags.DEFINE_boolean("queued", False, "With --launch: a queued resource instead of a "
                       "TPU VM created at once.")
  flags.DEFINE_boolean("spot", True, "With --launch: Spot capacity (preemptible; the run "
                       "resumes after a preemption).")
  flags.mark_flags_as_required(["config"])


def _print_launch(fl) -> None:
  import sys

  from ran_jax import launch

  if len(fl.topology) != 1:
    raise PlanError(f"--launch takes one --topology, got {','.join(fl.topology)}.")
  try:
    job = launch.Launch(config=launch.config_argument(sys.argv[1:]), topology=fl.topology[0],
                        bucket=fl.bucket or "", project=fl.project or "", zone=fl.zone or "",
                        name=fl.tpu_name, run=fl.run_name, queued=fl.queued, spot=fl.spot)
    sys.stdout.write(launch.script(job, fl.config.data.name))
  except launch.LaunchError as e:
    raise PlanError(str(e)) from None


def main(argv):
  del argv
  import sys

  from absl import flags

  fl = flags.FLAGS
  reports = []
  out = None
  if fl.workdir:
    from etils import epath

    out = str(epath.Path(fl.workdir) / "plan.json")
  hlo_dir = str(epath.Path(fl.workdir) / "hlo") if fl.workdir and fl.keep_hlo else None
  try:
    if fl.launch:
      _print_launch(fl)
      return
    if not has_libtpu():
      raise PlanError(f"Compiling for TPU needs libtpu on this host: {LIBTPU_INSTALL}")
    for name in fl.topology:
      parse_topology(name)          # every name checked before the first long compile
    for name in fl.topology:
      print(f"compiling {fl.config.model.encoder} for {name} ...", file=sys.stderr, flush=True)
      reports.append(plan(fl.config, name, find_largest_batch=fl.largest_batch,
                          hlo_dir=hlo_dir,
                          log=lambda m: print(m, file=sys.stderr, flush=True)))
  except PlanError as e:
    print(f"error: {e}", file=sys.stderr)
    if reports and out:
      write_reports(reports, out)   # the slices planned before the error are kept
    sys.exit(2)
  if out:
    write_reports(reports, out)
  print(markdown(reports))


def run():
  """The command (`ran-plan`, `python -m ran_jax.plan`)."""
  from ran_jax import commands

  define_flags()
  commands.run_app(main, CLI_DOC)


if __name__ == "__main__":
  run()
else:
  from ran_jax import commands as _commands

  _commands.callable_module(__name__)
