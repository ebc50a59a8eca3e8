"""Throughput benchmark of RAN training: stages, fused iteration, PyTorch-eager reference.

  python -m ran_jax.bench                      # default: a few minutes on 2 CPU cores
  python -m ran_jax.bench --full               # every case x batch 16..512, plain path too
  python -m ran_jax.bench --cases=vgg16_imagenet --batch-sizes=32,64 --dtype=bfloat16  # GPU

For each (model, batch size) it measures, after warm-up, the median examples/s of
each stage (disc, gen, adv), of the per-stage loop (2k+1 dispatches) and of the
fused Algorithm-1 iteration (k=3, one dispatch), with compile times reported
separately; the fused iteration's FLOPs from XLA's cost analysis, the achieved
FLOP/s and its share of an f32 matmul ceiling measured in the same run; peak
memory; and the input pipeline's examples/s beside the trainer's consumption.

Timings on a shared machine drift, so the engines run in interleaved rounds (JAX
fast path, PyTorch eager, JAX plain path, per-stage loop, alternating in one
process) and every ratio is the median of per-round ratios. The PyTorch side
(`ran_jax.bench_torch`) is skipped with a message when torch is not installed.
Results go to --out as JSON and are printed as a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ran_jax import input_pipeline, parallel, stages, trainer
from ran_jax.models import build_models
from ran_jax.models.modules import resolve_conv_impl


@dataclasses.dataclass(frozen=True)
class Case:
  encoder: str
  input_shape: tuple
  num_classes: int
  hidden: tuple
  batch_sizes: tuple      # default sweep
  full_batch_sizes: tuple  # --full sweep
  accelerator_only: bool = False


CASES = {
    "lenet_mnist": Case("lenet5", (28, 28, 1), 10, (120, 84), (32, 128, 512),
                        (16, 32, 64, 128, 256, 512)),
    "lenet_har": Case("lenet5", (128, 1, 9), 6, (128,), (128,), (16, 64, 128, 256, 512)),
    "alexnet_cifar": Case("alexnet", (32, 32, 3), 10, (384, 192), (16,), (16, 64, 128, 256)),
    "vgg16_imagenet": Case("vgg16", (224, 224, 3), 1000, (4096, 4096), (32,), (16, 32, 64),
                           accelerator_only=True),
}
DEFAULT_CASES = ("lenet_mnist", "lenet_har", "alexnet_cifar")
HEADLINE = ("lenet_mnist", 128)


# ---------------------------------------------------------------- timing helpers


def _block(tree):
  jax.block_until_ready(tree)
  return tree


def _median_time(fn, reps: int) -> float:
  """Median seconds of `reps` calls of fn() (fn blocks on its own result)."""
  ts = []
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t)
  return statistics.median(ts)


def matmul_ceiling(n: int = 2048, reps: int = 5, dtype: str = "float32") -> float:
  """n x n matmul FLOP/s through XLA in `dtype`: the machine's practical compute ceiling.

  On CPU 2048 fills the cores; on accelerators pass a larger n (8192) to reach peak.
  """
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32), dtype=dtype)
  f = jax.jit(lambda a: a @ a)
  _block(f(a))
  return 2 * n**3 / _median_time(lambda: _block(f(a)), reps)


def _model_config(case: Case, conv_impl: str, dtype: str):
  m = ml_collections.ConfigDict()
  m.encoder = case.encoder
  m.widths = None
  m.classifier_hidden = case.hidden
  m.dropout = 0.0
  m.dtype = dtype
  m.conv_impl = conv_impl
  return m


def _ran_config(k: int, fused: bool):
  r = ml_collections.ConfigDict()
  r.k, r.lam, r.l1, r.l2, r.l3 = k, 0.5, 1e-3, 1e-3, 1e-3
  r.recon_reduction = "sum"
  r.fused = fused
  return r


def _batch(case: Case, b: int, mesh):
  rng = np.random.default_rng(0)
  host = {"image": rng.random((b,) + case.input_shape, np.float32),
          "label": rng.integers(0, case.num_classes, b).astype(np.int32)}
  return parallel.to_global(host, mesh)


def model_flops(case: Case, b: int, k: int) -> float:
  """Nominal FLOPs of one Algorithm-1 iteration: the model's own multiply-adds x 2.

  Forward: every conv (2*Ho*Wo*kh*kw*C*O per example), its mirrored transposed
  conv (the same count) and the classifier's dense layers; a backward pass counts
  2x its forward (input and weight gradients). Per iteration: k x [disc: E, C
  forward+backward; gen: E forward, D forward+backward] + adv: E, C forward+backward
  and D forward + input gradient. Independent of how a backend computes a conv
  (XLA's cost analysis counts the work done, e.g. the fast path's padded or banded
  matmuls, and on GPU leaves out library convolutions), so it is the number the
  utilisation is based on.
  """
  from ran_jax.models import ConvSpec, build_encoder_spec, layer_shapes
  spec = build_encoder_spec(case.encoder, case.input_shape)
  shapes = layer_shapes(spec, case.input_shape)
  f_conv = 0.0
  for i, layer in enumerate(spec):
    if isinstance(layer, ConvSpec):
      _, _, c = shapes[i]
      ho, wo, o = shapes[i + 1]  # layer_shapes has one entry per layer plus the output
      f_conv += 2.0 * ho * wo * layer.kernel[0] * layer.kernel[1] * c * o
  feat = int(np.prod(shapes[-1]))
  dims = (feat,) + tuple(case.hidden) + (case.num_classes,)
  f_c = sum(2.0 * a * b_ for a, b_ in zip(dims[:-1], dims[1:]))
  f_e = f_d = f_conv
  disc = 3 * (f_e + f_c)
  gen = f_e + 3 * f_d
  adv = 3 * (f_e + f_c) + 2 * f_d
  return b * (k * (disc + gen) + adv)


def _memory(compiled) -> dict:
  out = {}
  try:
    ma = compiled.memory_analysis()
    out["compiled_bytes"] = int(ma.argument_size_in_bytes + ma.output_size_in_bytes
                                + ma.temp_size_in_bytes - ma.alias_size_in_bytes)
    out["temp_bytes"] = int(ma.temp_size_in_bytes)
  except Exception:  # noqa: BLE001 - not every backend reports it
    pass
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    out["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
  return out


def _flops(compiled) -> float:
  try:
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return float(ca.get("flops", 0.0))
  except Exception:  # noqa: BLE001
    return 0.0


class JaxEngine:
  """One model + conv_impl: the fused iteration and the per-stage loop, AOT-compiled."""

  def __init__(self, case: Case, b: int, conv_impl: str, dtype: str, k: int, mesh,
               per_stage: bool):
    self.b = b
    models = build_models(_model_config(case, conv_impl, dtype), case.input_shape,
                          case.num_classes, (0.0, 1.0), dtype=trainer.compute_dtype(
                              ml_collections.ConfigDict({"model": {"dtype": dtype}})))
    optimizers = stages.make_optimizers(_ran_config(k, True))
    self.batch = _batch(case, b, mesh)
    self.state = trainer.create_state(models, optimizers, 0, mesh)
    t = time.perf_counter()
    fused = trainer.make_iteration(models, optimizers, _ran_config(k, True), mesh)
    self.fused = fused.lower(self.state, self.batch).compile()
    self.compile_fused_s = time.perf_counter() - t
    self.flops = _flops(self.fused)
    self.memory = _memory(self.fused)
    self.stage_fns = None
    if per_stage:
      t = time.perf_counter()
      jitted = trainer.jit_stages(models, optimizers, _ran_config(k, False), mesh)
      self.stage_fns = stages.StageFns(
          **{n: getattr(jitted, n).lower(self.state, self.batch).compile() for n in stages.STAGES})
      self.compile_stages_s = time.perf_counter() - t
      self.k = k

  def run_fused(self):
    self.state, m = self.fused(self.state, self.batch)
    _block(m)

  def run_stages(self):
    self.state, m = stages.ran_iteration(self.state, self.batch, stages=self.stage_fns, k=self.k)
    _block(m)

  def run_stage(self, name):
    self.state, m = getattr(self.stage_fns, name)(self.state, self.batch)
    _block(m)


class TorchEngine:

  def __init__(self, case: Case, b: int, k: int):
    from ran_jax import bench_torch
    from ran_jax.models import build_encoder_spec
    spec = build_encoder_spec(case.encoder, case.input_shape)
    self.ran = bench_torch.TorchRAN(spec, case.input_shape, case.num_classes, case.hidden, k=k)
    self.x, self.y = bench_torch.make_batch(b, case.input_shape, case.num_classes)

  def run(self):
    self.ran.iteration(self.x, self.y)


def torch_available() -> tuple[bool, str]:
  try:
    import torch
  except ImportError:
    return False, ("PyTorch not installed: skipping the PyTorch-eager reference "
                   "(install the CPU build: pip install torch==2.13.0 from PyTorch's CPU "
                   "wheel index; see docs/performance.md).")
  return True, f"torch {torch.__version__}, {torch.get_num_threads()} threads"


def pipeline_rate(case: Case, b: int, mesh, steps: int = 20) -> float:
  """Examples/s of InputPipeline (random-access source -> global arrays), synthetic data."""
  n = b * 4
  rng = np.random.default_rng(0)
  split = input_pipeline.ArraySplit(rng.random((n,) + case.input_shape, np.float32),
                                    rng.integers(0, case.num_classes, n).astype(np.int32))
  src = input_pipeline.DataSource("synthetic", split, split, case.input_shape, case.num_classes)
  pipe = input_pipeline.InputPipeline(src, b, b, 0, mesh)
  it = pipe.train_batches(0, steps + 2)
  _block(next(it))
  t = time.perf_counter()
  count = 0
  for batch in it:
    _block(batch)
    count += 1
  return count * b / (time.perf_counter() - t)


# ---------------------------------------------------------------- one case


def bench_case(name: str, case: Case, b: int, args, mesh, use_torch: bool, compare_plain: bool):
  k = args.k
  print(f"[bench] {name} batch {b}: compiling...", file=sys.stderr, flush=True)
  fast = JaxEngine(case, b, args.conv_impl, args.dtype, k, mesh, per_stage=True)
  plain = None
  if compare_plain and args.conv_impl != "xla":
    plain = JaxEngine(case, b, "xla", args.dtype, k, mesh, per_stage=False)
  tr = TorchEngine(case, b, k) if use_torch else None
  # Warm-up: every engine, stage and the loop.
  for _ in range(args.warmup):
    fast.run_fused()
    fast.run_stages()
    if plain:
      plain.run_fused()
    if tr:
      tr.run()
  rounds = {"fused": [], "per_stage": [], "plain_fused": [], "torch": [],
            "disc": [], "gen": [], "adv": []}
  for _ in range(args.rounds):
    rounds["fused"].append(_median_time(fast.run_fused, args.reps))
    if tr:
      rounds["torch"].append(_median_time(tr.run, args.reps))
    if plain:
      rounds["plain_fused"].append(_median_time(plain.run_fused, args.reps))
    rounds["per_stage"].append(_median_time(fast.run_stages, args.reps))
    for st in stages.STAGES:
      rounds[st].append(_median_time(functools.partial(fast.run_stage, st), args.reps))
  eps = {key: b / statistics.median(v) for key, v in rounds.items() if v}

  def ratio(num, den):  # median over rounds of time[den] / time[num] = speed ratio num/den
    if not rounds[num] or not rounds[den]:
      return None
    return statistics.median(d / n for n, d in zip(rounds[num], rounds[den]))

  achieved = fast.flops / statistics.median(rounds["fused"]) if fast.flops else 0.0
  nominal = model_flops(case, b, k)
  res = {
      "case": name, "encoder": case.encoder, "input_shape": list(case.input_shape),
      "batch": b, "k": k, "conv_impl": args.conv_impl, "dtype": args.dtype,
      "examples_per_s": eps,
      "iteration_s_rounds": {key: v for key, v in rounds.items() if v},
      "ratios": {
          "fused_over_torch": ratio("fused", "torch"),
          "fused_over_per_stage": ratio("fused", "per_stage"),
          "fast_over_plain": ratio("fused", "plain_fused"),
          "plain_over_torch": ratio("plain_fused", "torch"),
      },
      "compile_s": {"fused": fast.compile_fused_s, "stages": fast.compile_stages_s,
                    **({"plain_fused": plain.compile_fused_s} if plain else {})},
      "model_flops": nominal,
      "model_flops_per_s": nominal / statistics.median(rounds["fused"]),
      "iteration_flops": fast.flops,
      "achieved_flops_per_s": achieved,
      "memory": fast.memory,
      "pipeline_examples_per_s": pipeline_rate(case, b, mesh),
  }
  if plain:
    res["plain_iteration_flops"] = plain.flops
  return res


def check_fused_equals_per_stage(mesh, k: int, conv_impl: str) -> float:
  """Max |difference| of all params after 2 iterations, fused vs per-stage (LeNet, b=32)."""
  case = CASES["lenet_mnist"]
  models = build_models(_model_config(case, conv_impl, "float32"), case.input_shape,
                        case.num_classes, (0.0, 1.0))
  opts = stages.make_optimizers(_ran_config(k, True))
  batch = _batch(case, 32, mesh)
  out = []
  for fused in (True, False):
    it = trainer.make_iteration(models, opts, _ran_config(k, fused), mesh)
    state = trainer.create_state(models, opts, 0, mesh)
    for _ in range(2):
      state, _ = it(state, batch)
    out.append(jax.device_get(state.params))
  diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), out[0], out[1])
  return max(jax.tree.leaves(diffs))


# ---------------------------------------------------------------- report


def _fmt(v, spec=".0f"):
  return "-" if v is None else format(v, spec)


def print_table(report):
  ceil = report["matmul_ceiling_flops_per_s"]
  print(f"\nRAN throughput, k={report['k']}, {report['device']}, "
        f"{report.get('dtype', 'float32')}; matmul ceiling {ceil / 1e9:.0f} GFLOP/s "
        f"(XLA {report.get('matmul_ceiling_dtype', 'float32')} matmul, same run)")
  hdr = ("case", "batch", "fused", "stages", "fused/stg", "plain", "torch", "jax/torch",
         "disc", "gen", "adv", "GFLOP/it", "GFLOP/s", "util", "xlaGF/it", "compile", "peakMB",
         "pipe")
  rows = [hdr]
  for r in report["results"]:
    e, q = r["examples_per_s"], r["ratios"]
    mem = r["memory"].get("device_peak_bytes") or r["memory"].get("compiled_bytes", 0)
    rows.append((r["case"], str(r["batch"]), _fmt(e.get("fused")), _fmt(e.get("per_stage")),
                 _fmt(q["fused_over_per_stage"], ".2f"), _fmt(e.get("plain_fused")),
                 _fmt(e.get("torch")), _fmt(q["fused_over_torch"], ".2f"),
                 _fmt(e.get("disc")), _fmt(e.get("gen")), _fmt(e.get("adv")),
                 f"{r['model_flops'] / 1e9:.2f}", f"{r['model_flops_per_s'] / 1e9:.1f}",
                 f"{100 * r['model_flops_per_s'] / ceil:.0f}%",
                 f"{r['iteration_flops'] / 1e9:.2f}",
                 f"{r['compile_s']['fused']:.1f}s", f"{mem / 2**20:.0f}",
                 _fmt(r["pipeline_examples_per_s"])))
  widths = [max(len(row[i]) for row in rows) for i in range(len(hdr))]
  for row in rows:
    print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
  print("examples/s; fused/stg, jax/torch: medians of per-round ratios; plain: conv_impl='xla' "
        "fused; GFLOP/it: the model's nominal FLOPs per iteration (model_flops), GFLOP/s and util: "
        "those per second and over the matmul ceiling; xlaGF/it: XLA's cost analysis of the "
        "compiled iteration (work done, incl. padding); pipe: input pipeline examples/s.")
  if report.get("fused_vs_per_stage_max_abs_diff") is not None:
    print(f"fused vs per-stage params after 2 iterations: max |diff| = "
          f"{report['fused_vs_per_stage_max_abs_diff']:.2e}")
  if report.get("torch_note"):
    print(report["torch_note"])


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default="bench_results.json")
  p.add_argument("--cases", default=None, help="comma list of " + ",".join(CASES))
  p.add_argument("--batch-sizes", default=None, help="comma list; default per case")
  p.add_argument("--full", action="store_true", help="full batch sweep, plain path everywhere")
  p.add_argument("--k", type=int, default=3)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--reps", type=int, default=2, help="timed calls per engine per round")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--conv-impl", default="fast", choices=("auto", "fast", "xla"))
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--no-torch", action="store_true")
  return p.parse_args(argv)


def _write(report, path):
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  os.replace(tmp, path)


def main(argv=None):
  args = parse_args(argv)
  mesh = parallel.make_mesh()
  on_cpu = jax.default_backend() == "cpu"
  args.conv_impl = resolve_conv_impl(args.conv_impl)
  names = args.cases.split(",") if args.cases else [
      n for n in CASES if (n in DEFAULT_CASES or args.full) and not (CASES[n].accelerator_only
                                                                     and on_cpu)]
  unknown = [n for n in names if n not in CASES]
  if unknown:
    raise SystemExit(f"unknown case(s) {unknown}; known: {sorted(CASES)}")
  use_torch, torch_note = (False, "PyTorch reference disabled (--no-torch).") if args.no_torch \
      else torch_available()
  if not use_torch:
    print(torch_note, file=sys.stderr)
  use_torch = use_torch and on_cpu  # the reference is a CPU-eager baseline
  t0 = time.perf_counter()
  ceiling = functools.partial(matmul_ceiling, 2048 if on_cpu else 8192, dtype=args.dtype)
  ceilings = [ceiling()]
  dev = jax.devices()[0]
  report = {
      "device": f"{dev.platform}:{dev.device_kind} x{len(jax.devices())}",
      "host": {"machine": platform.machine(), "cpus": os.cpu_count(),
               "python": platform.python_version(), "jax": jax.__version__},
      "k": args.k, "rounds": args.rounds, "reps": args.reps, "dtype": args.dtype,
      "conv_impl": args.conv_impl,
      "matmul_ceiling_dtype": args.dtype,
      "torch_note": torch_note,
      "complete": False,
      "results": [],
  }
  for name in names:
    case = CASES[name]
    sizes = ([int(s) for s in args.batch_sizes.split(",")] if args.batch_sizes
             else case.full_batch_sizes if args.full else case.batch_sizes)
    for b in sizes:
      compare_plain = args.full or (name, b) == HEADLINE or not on_cpu
      report["results"].append(bench_case(name, case, b, args, mesh, use_torch, compare_plain))
      ceilings.append(ceiling())
      # Written after every case, so a run cut short keeps what it measured.
      report.update(matmul_ceiling_flops_per_s=statistics.median(ceilings),
                    matmul_ceiling_samples=ceilings, wall_s=time.perf_counter() - t0,
                    max_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
      _write(report, args.out)
  report["fused_vs_per_stage_max_abs_diff"] = check_fused_equals_per_stage(
      mesh, args.k, args.conv_impl)
  report["complete"] = True
  report["wall_s"] = time.perf_counter() - t0
  _write(report, args.out)
  print_table(report)
  print(f"wrote {args.out} ({report['wall_s']:.0f}s)")
  return report


if __name__ == "__main__":
  main()
