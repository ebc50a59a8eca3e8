"""Throughput benchmark of RAN training: JAX stages and iteration vs PyTorch eager and compiled.

  python -m bench                        # default cases, a few minutes on 2 CPU cores
  python -m bench --cases=lenet_mnist:128 --rounds=7 --out=docs/data/bench_lenet128_cpu.json
  python -m bench --cases=lenet_mnist:128 --rounds=7 --threads=1   # one core (a shared machine)
  python -m bench --full                 # every case x batch 16..512, plain path too
  python -m bench --cases=vgg16_imagenet:64 --dtype=bfloat16 --no-torch   # GPU

For each (model, batch size) the engines of `bench.engines` run one Algorithm-1
iteration (k=3) on the same batch: the fused JAX iteration (one dispatch), the
JAX per-stage loop (2k+1 dispatches), each JAX stage alone, the fused iteration
on the plain conv path (`conv_impl='xla'`), and the PyTorch reference
(`bench.torch_reference`) eager and under torch.compile. Every engine makes
exactly Algorithm 1's passes (no reported-only pass anywhere). The JAX engines
are built from a `configs/common.py` config by `ran_jax.program.build_program`,
as in training.

Timings on a shared machine drift, so the engines run in interleaved rounds and
every ratio is the median of per-round ratios. Compile times (JAX AOT compile;
torch.compile's first iteration) are reported apart. Also: FLOPs per iteration
(nominal, and XLA's cost analysis), their share of an f32 matmul ceiling
measured in the same run, peak memory, and the input pipeline's examples/s on
synthetic data of the case's shape. Without torch, or where torch.compile cannot
run, the JSON says why. Results go to --out as JSON (rewritten after every
case) and are printed as a table.
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
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from bench.engines import JaxEngine, TorchEngine, block, input_rate, median_time, torch_status
from configs import common
from ran_jax import config_lib, input_pipeline, parallel, stages
from ran_jax.models import ConvSpec, build_encoder_spec, layer_shapes
from ran_jax.models.modules import resolve_conv_impl
from ran_jax.program import InputSpec


@dataclasses.dataclass(frozen=True)
class Case:
  encoder: str
  dataset: str
  input_shape: tuple
  num_classes: int
  hidden: tuple
  batch_sizes: tuple      # default sweep
  full_batch_sizes: tuple  # --full sweep
  accelerator_only: bool = False


CASES = {
    "lenet_mnist": Case("lenet5", "mnist", (28, 28, 1), 10, (120, 84), (32, 128, 512),
                        (16, 32, 64, 128, 256, 512)),
    "lenet_har": Case("lenet5", "uci_har", (128, 1, 9), 6, (128,), (128,),
                      (16, 64, 128, 256, 512)),
    "alexnet_cifar": Case("alexnet", "cifar10", (32, 32, 3), 10, (384, 192), (16,),
                          (16, 64, 128, 256)),
    "vgg16_imagenet": Case("vgg16", "imagenet2012", (224, 224, 3), 1000, (4096, 4096), (32,),
                           (16, 32, 64), accelerator_only=True),
}
DEFAULT_CASES = ("lenet_mnist", "lenet_har", "alexnet_cifar")
HEADLINE = ("lenet_mnist", 128)

PASSES = {
    "jax": "ran_jax.stages via program.build_program: disc E,C fwd+bwd; gen E fwd, D fwd+bwd; "
           "adv E,C fwd+bwd, D fwd+bwd to its input (frozen); k=3 pairs + adv per iteration",
    "torch": "bench/torch_reference.py: the same passes and losses (per-example summed squared "
             "error, batch mean), nn.Conv2d/BatchNorm2d/ConvTranspose2d, three Adam optimizers",
    "torch_compile": "the same reference with each stage's forward (networks + loss) under "
                     "torch.compile (inductor, default mode); Adam steps eager",
}


def case_config(case: Case, batch: int, k: int, conv_impl: str, dtype: str):
  """The case as a regular, validated RAN config (`configs/common.py`: lam 0.5, Adam 1e-3)."""
  c = common.get_base_config()
  c.batch_size = batch
  c.data.name = case.dataset
  c.model.encoder = case.encoder
  c.model.classifier_hidden = case.hidden
  c.model.conv_impl = conv_impl
  c.model.dtype = dtype
  c.ran.k = k
  c.ran.fused = True
  config_lib.validate_config(c, num_devices=jax.device_count())
  return c


# The full defence of docs/privacy.md, every training-side component on: a 64-d tanh
# bottleneck, release noise, compactness, an extra MLP decoder in the ensemble, the
# adversarial term against the strongest decoder with a PSNR target.
DEFENCE = {"model.bottleneck_dim": 64, "model.feature_noise": 0.5, "ran.compactness": 1.0,
           "ran.extra_decoders": ("mlp",), "ran.lam": 0.99, "ran.target_psnr": 14.0}


def defended_config(config):
  """The case's config with `DEFENCE` applied (validated)."""
  from ran_jax.sweep import apply_overrides

  c = apply_overrides(config, DEFENCE)
  config_lib.validate_config(c, num_devices=jax.device_count())
  return c


def host_batch(case: Case, b: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return {"image": rng.random((b,) + case.input_shape, np.float32),
          "label": rng.integers(0, case.num_classes, b).astype(np.int32)}


def matmul_ceiling(n: int = 2048, reps: int = 5, dtype: str = "float32") -> float:
  """n x n matmul FLOP/s through XLA in `dtype`: the machine's practical compute ceiling.

  On CPU 2048 fills the cores; on accelerators pass a larger n (8192) to reach peak.
  """
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32), dtype=dtype)
  f = jax.jit(lambda a: a @ a)
  block(f(a))
  return 2 * n**3 / median_time(lambda: block(f(a)), reps)


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


def pipeline_rate(case: Case, b: int, mesh, steps: int = 20) -> float:
  """`input_rate` of an InputPipeline over synthetic in-memory arrays of the case's shape."""
  n = b * 4
  data = host_batch(case, n)
  split = input_pipeline.ArraySplit(data["image"], data["label"])
  src = input_pipeline.DataSource("synthetic", split, split, case.input_shape, case.num_classes)
  return input_rate(input_pipeline.InputPipeline(src, b, b, 0, mesh), steps, warmup=2)


def _try_torch(config, spec, batch, compile: bool):
  """A TorchEngine, or (None, why) when it cannot be built or run here."""
  try:
    return TorchEngine(config, spec, batch, compile=compile), None
  except Exception as e:  # noqa: BLE001 - the benchmark records why and goes on
    tb = traceback.format_exception_only(type(e), e)[-1].strip()
    return None, f"{'torch.compile' if compile else 'torch eager'} failed: {tb[:2000]}"


# ---------------------------------------------------------------- one case


def bench_case(name: str, case: Case, b: int, args, mesh, use_torch: bool, compare_plain: bool):
  k = args.k
  config = case_config(case, b, k, args.conv_impl, args.dtype)
  spec = InputSpec(case.input_shape, case.num_classes)
  batch = host_batch(case, b)
  print(f"[bench] {name} batch {b}: compiling...", file=sys.stderr, flush=True)
  fast = JaxEngine(config, mesh, spec, batch, per_stage=True)
  plain = None
  if compare_plain and args.conv_impl != "xla":
    plain = JaxEngine(case_config(case, b, k, "xla", args.dtype), mesh, spec, batch)
  defended = None
  if compare_plain or args.defended:
    defended = JaxEngine(defended_config(config), mesh, spec, batch)
  notes = {}
  eager = compiled = None
  if use_torch:
    eager, notes["torch"] = _try_torch(config, spec, batch, compile=False)
    if not args.no_compile:
      print(f"[bench] {name} batch {b}: torch.compile...", file=sys.stderr, flush=True)
      compiled, notes["torch_compile"] = _try_torch(config, spec, batch, compile=True)
    else:
      notes["torch_compile"] = "disabled (--no-compile)"
  engines = {"fused": fast.run, "torch": eager and eager.run,
             "torch_compile": compiled and compiled.run, "plain_fused": plain and plain.run,
             "per_stage": fast.run_stages, "defended_fused": defended and defended.run}
  engines.update({st: functools.partial(fast.run_stage, st) for st in stages.STAGES})
  engines = {key: fn for key, fn in engines.items() if fn}
  for _ in range(args.warmup):
    for fn in engines.values():
      fn()
  rounds = {key: [] for key in engines}
  for _ in range(args.rounds):  # interleaved: each engine once per round
    for key, fn in engines.items():
      rounds[key].append(median_time(fn, args.reps))
  eps = {key: b / statistics.median(v) for key, v in rounds.items()}

  def ratio(num, den):  # median over rounds of time[den] / time[num] = speed ratio num/den
    if num not in rounds or den not in rounds:
      return None
    return statistics.median(d / n for n, d in zip(rounds[num], rounds[den]))

  nominal = model_flops(case, b, k)
  t_fused = statistics.median(rounds["fused"])
  res = {
      "case": name, "encoder": case.encoder, "input_shape": list(case.input_shape),
      "batch": b, "k": k, "conv_impl": args.conv_impl, "dtype": args.dtype,
      "examples_per_s": eps,
      "iteration_s_rounds": rounds,
      "ratios": {
          "fused_over_torch": ratio("fused", "torch"),
          "fused_over_torch_compile": ratio("fused", "torch_compile"),
          "torch_compile_over_torch": ratio("torch_compile", "torch"),
          "fused_over_per_stage": ratio("fused", "per_stage"),
          "fast_over_plain": ratio("fused", "plain_fused"),
          "plain_over_torch": ratio("plain_fused", "torch"),
          # time of a fully defended iteration over the paper's RAN iteration (cost factor)
          "defended_cost": ratio("fused", "defended_fused"),
      },
      "compile_s": {"fused": fast.compile_s["iteration"], "stages": fast.compile_s["stages"],
                    **({"plain_fused": plain.compile_s["iteration"]} if plain else {}),
                    **({"torch_compile_first_iteration": compiled.compile_s} if compiled else {})},
      "torch_notes": {key: v for key, v in notes.items() if v},
      "model_flops": nominal,
      "model_flops_per_s": nominal / t_fused,
      "iteration_flops": fast.flops,
      "achieved_flops_per_s": fast.flops / t_fused if fast.flops else 0.0,
      "memory": fast.memory,
      "pipeline_examples_per_s": pipeline_rate(case, b, mesh),
      "config": config.to_dict(),
  }
  if plain:
    res["plain_iteration_flops"] = plain.flops
  return res


# ---------------------------------------------------------------- report


def _fmt(v, spec=".0f"):
  return "-" if v is None else format(v, spec)


def print_table(report):
  ceil = report["matmul_ceiling_flops_per_s"]
  print(f"\nRAN throughput, k={report['k']}, {report['device']}, "
        f"{report.get('dtype', 'float32')}; matmul ceiling {ceil / 1e9:.0f} GFLOP/s "
        f"(XLA {report.get('matmul_ceiling_dtype', 'float32')} matmul, same run)")
  hdr = ("case", "batch", "fused", "stages", "fused/stg", "plain", "torch", "jax/torch",
         "compiled", "jax/comp", "disc", "gen", "adv", "GFLOP/it", "GFLOP/s", "util",
         "xlaGF/it", "compile", "peakMB", "pipe")
  rows = [hdr]
  for r in report["results"]:
    e, q = r["examples_per_s"], r["ratios"]
    mem = r["memory"].get("device_peak_bytes") or r["memory"].get("compiled_bytes", 0)
    rows.append((r["case"], str(r["batch"]), _fmt(e.get("fused")), _fmt(e.get("per_stage")),
                 _fmt(q["fused_over_per_stage"], ".2f"), _fmt(e.get("plain_fused")),
                 _fmt(e.get("torch")), _fmt(q["fused_over_torch"], ".2f"),
                 _fmt(e.get("torch_compile")), _fmt(q["fused_over_torch_compile"], ".2f"),
                 _fmt(e.get("disc")), _fmt(e.get("gen")), _fmt(e.get("adv")),
                 f"{r['model_flops'] / 1e9:.2f}", f"{r['model_flops_per_s'] / 1e9:.1f}",
                 f"{100 * r['model_flops_per_s'] / ceil:.0f}%",
                 f"{r['iteration_flops'] / 1e9:.2f}",
                 f"{r['compile_s']['fused']:.1f}s", f"{mem / 2**20:.0f}",
                 _fmt(r["pipeline_examples_per_s"])))
  widths = [max(len(row[i]) for row in rows) for i in range(len(hdr))]
  for row in rows:
    print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
  print("examples/s; fused/stg, jax/torch, jax/comp: medians of per-round ratios; torch: PyTorch "
        "eager, compiled: torch.compile; plain: conv_impl='xla' fused; GFLOP/it: the model's "
        "nominal FLOPs per iteration, GFLOP/s and util: those per second and over the matmul "
        "ceiling; xlaGF/it: XLA's cost analysis of the compiled iteration (work done, incl. "
        "padding); pipe: input pipeline examples/s.")
  for r in report["results"]:
    if r["ratios"].get("defended_cost") is not None:
      print(f"{r['case']} b={r['batch']}: fully defended iteration (bench.ran_bench.DEFENCE) "
            f"costs {r['ratios']['defended_cost']:.2f}x the paper's RAN iteration "
            f"({r['examples_per_s']['defended_fused']:.0f} vs {r['examples_per_s']['fused']:.0f} "
            "examples/s)")
    if "torch_compile_first_iteration" in r["compile_s"]:
      print(f"{r['case']} b={r['batch']}: torch.compile first iteration (compile included) "
            f"{r['compile_s']['torch_compile_first_iteration']:.1f}s")
    for key, note in r.get("torch_notes", {}).items():
      print(f"{r['case']} b={r['batch']}: {key}: {note}")
  if report.get("torch_note"):
    print(report["torch_note"])
  host = report["host"]
  start = tuple(round(v, 1) for v in host["load_average_start"])
  end = tuple(round(v, 1) for v in host.get("load_average_end", ()))
  print(f"load average (1, 5, 15 min) at start {start}, at end {end}, "
        f"{host['cpus']} CPUs: above ~0.5 per CPU before the run, other work shared the machine.")


def _case_list(args, on_cpu):
  """[(name, batch sizes)] from --cases (name or name:b1/b2) and --batch-sizes/--full."""
  default_sizes = ([int(s) for s in args.batch_sizes.split(",")] if args.batch_sizes else None)
  if args.cases:
    entries = [c.split(":") for c in args.cases.split(",")]
  else:
    entries = [[n] for n in CASES if (n in DEFAULT_CASES or args.full)
               and not (CASES[n].accelerator_only and on_cpu)]
  out = []
  for e in entries:
    name = e[0]
    if name not in CASES:
      raise SystemExit(f"unknown case {name!r}; known: {sorted(CASES)}")
    case = CASES[name]
    sizes = ([int(s) for s in e[1].split("/")] if len(e) > 1 else default_sizes
             or (case.full_batch_sizes if args.full else case.batch_sizes))
    out.append((name, sizes))
  return out


def parse_args(argv=None):
  p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0],
                              epilog="python -m bench input --help: the input pipeline of a "
                                     "real dataset next to what the trainer consumes.")
  p.add_argument("--out", default="bench_results.json")
  p.add_argument("--cases", default=None,
                 help="comma list of NAME or NAME:B1/B2 (batch sizes), NAME in " + ",".join(CASES))
  p.add_argument("--batch-sizes", default=None, help="comma list; default per case")
  p.add_argument("--full", action="store_true", help="full batch sweep, plain path everywhere")
  p.add_argument("--k", type=int, default=3)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--reps", type=int, default=2, help="timed calls per engine per round")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--conv-impl", default="fast", choices=("auto", "fast", "xla"))
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--no-torch", action="store_true", help="no PyTorch reference at all")
  p.add_argument("--no-compile", action="store_true", help="PyTorch eager only")
  p.add_argument("--defended", action="store_true",
                 help="also time the fully defended iteration (always on the headline case)")
  p.add_argument("--threads", type=int, default=0, choices=(0, 1),
                 help="1: the process pinned to one core, one intra-op thread for XLA:CPU and "
                      "torch (0: their defaults, all cores). On a machine shared with other jobs "
                      "1 keeps the ratios fair: multi-threaded engines lose unequally to the load")
  return p.parse_args(argv)


def _write(report, path):
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  os.replace(tmp, path)


def _one_core():
  """The process on one core, one intra-op thread for XLA:CPU (its flags are read when the
  backend starts) and torch."""
  os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
  flags = "--xla_cpu_multi_thread_eigen=false"
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()
  try:
    import torch  # pylint: disable=g-import-not-at-top

    torch.set_num_threads(1)
  except ImportError:
    pass


def main(argv=None):
  args = parse_args(argv)
  if args.threads == 1:
    _one_core()
  mesh = parallel.make_mesh()
  on_cpu = jax.default_backend() == "cpu"
  args.conv_impl = resolve_conv_impl(args.conv_impl)
  cases = _case_list(args, on_cpu)
  # A user's first torch.compile is cold: no inductor cache from an earlier run.
  os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")
  use_torch, torch_note = (False, "PyTorch references disabled (--no-torch).") if args.no_torch \
      else torch_status()
  if use_torch and not on_cpu:
    use_torch, torch_note = False, "PyTorch references skipped: they are CPU baselines."
  if not use_torch:
    print(torch_note, file=sys.stderr)
  t0 = time.perf_counter()
  ceiling = functools.partial(matmul_ceiling, 2048 if on_cpu else 8192, dtype=args.dtype)
  ceilings = [ceiling()]
  dev = jax.devices()[0]
  report = {
      "command": "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv),
      "device": f"{dev.platform}:{dev.device_kind} x{len(jax.devices())}",
      "host": {"machine": platform.machine(), "cpus": os.cpu_count(),
               "python": platform.python_version(), "jax": jax.__version__,
               "load_average_start": os.getloadavg()},
      "k": args.k, "rounds": args.rounds, "reps": args.reps, "dtype": args.dtype,
      "threads": args.threads or "default", "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "cpu_affinity": sorted(os.sched_getaffinity(0)),
      "conv_impl": args.conv_impl,
      "matmul_ceiling_dtype": args.dtype,
      "passes": PASSES,
      "torch_note": torch_note,
      "torchinductor_force_disable_caches": os.environ.get("TORCHINDUCTOR_FORCE_DISABLE_CACHES"),
      "complete": False,
      "results": [],
  }
  for name, sizes in cases:
    for b in sizes:
      compare_plain = args.full or (name, b) == HEADLINE or not on_cpu
      report["results"].append(bench_case(name, CASES[name], b, args, mesh, use_torch,
                                          compare_plain))
      ceilings.append(ceiling())
      # Written after every case, so a run cut short keeps what it measured.
      report.update(matmul_ceiling_flops_per_s=statistics.median(ceilings),
                    matmul_ceiling_samples=ceilings, wall_s=time.perf_counter() - t0,
                    max_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
      report["host"]["load_average_end"] = os.getloadavg()
      _write(report, args.out)
  report["complete"] = True
  report["wall_s"] = time.perf_counter() - t0
  _write(report, args.out)
  print_table(report)
  print(f"wrote {args.out} ({report['wall_s']:.0f}s)")
  return report


if __name__ == "__main__":
  main()
