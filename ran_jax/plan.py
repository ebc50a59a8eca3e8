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
import re
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from ran_jax import parallel
# The chip table and slice topologies, and what is read from a compiled executable (the
# collectives, the communication model, memory and cost), are modules of their own; their
# names stay importable from here.
from ran_jax.plan_hlo import (COLLECTIVES, HOP_US, LAUNCH_US, _compile,  # noqa: F401
                              _compiled_report, _fits, _is_out_of_memory, _out_of_memory_report,
                              collective_seconds, collectives, wraparound_factor)
from ran_jax.tpu_slices import (CHIPS, GIB, LIBTPU_INSTALL, Chip, PlanError, Topology,  # noqa: F401
                                has_libtpu, known_topologies, parse_topology,
                                topology_devices)

# Training examples per epoch, for the epoch-time estimate.
TRAIN_EXAMPLES = {"imagenet2012": 1_281_167, "cifar10": 50_000, "mnist": 60_000, "digits": 1_437}


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
