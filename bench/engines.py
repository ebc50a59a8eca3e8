"""The engines the benchmark times, and the one input-rate helper.

An engine holds one RAN configuration on one fixed batch and runs one Algorithm-1
iteration per `run()` call, waiting for its result:

  JaxEngine    the program of `ran_jax.program.build_program` (what the trainer runs),
               AOT-compiled: the fused iteration and, on request, each stage alone.
  TorchEngine  `bench.torch_reference.TorchRAN` on the same config and the same
               batch, eager or under torch.compile.

`input_rate` is the examples/s an `InputPipeline` delivers as global arrays.
"""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np

from ran_jax import parallel, stages
from ran_jax.models import build_encoder_spec
from ran_jax.program import InputSpec, build_program


def block(tree):
  jax.block_until_ready(tree)
  return tree


def median_time(fn, reps: int) -> float:
  """Median seconds of `reps` calls of fn() (fn waits for its own result)."""
  ts = []
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t)
  return statistics.median(ts)


def input_rate(pipeline, steps: int, warmup: int = 5) -> float:
  """Examples/s delivered by `pipeline.train_batches` (each batch made ready on device).

  The first `warmup` batches (thread start, first placement) are not timed.
  """
  it = pipeline.train_batches(0, steps + warmup)
  for _ in range(warmup):
    block(next(it))
  t = time.perf_counter()
  n = 0
  for batch in it:
    block(batch)
    n += 1
  return n * pipeline.global_batch / (time.perf_counter() - t)


def _flops(compiled) -> float:
  try:
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return float(ca.get("flops", 0.0))
  except Exception:  # noqa: BLE001 - not every backend reports it
    return 0.0


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


class JaxEngine:
  """The RAN program of `config` on one batch, compiled ahead of the timed calls.

  `run()` is the config's iteration: fused (`ran.fused=True`, one dispatch) or the
  per-stage loop. `per_stage=True` also compiles each stage alone (`run_stage`,
  `run_stages`: 2k+1 dispatches). Compile times go to `compile_s`, never into a
  timed call.
  """

  def __init__(self, config, mesh, input_spec: InputSpec, host_batch: dict,
               per_stage: bool = False):
    # A schedule's length changes the learning-rate values, not the work that is timed.
    steps = int(config.get("max_steps", -1))
    self.program = build_program(config, mesh, input_spec,
                                 total_steps=steps if steps > 0 else 1000)
    self.k = int(config.ran.k)
    self.batch = parallel.to_global(host_batch, mesh)
    self.state = self.program.create_state(config.seed)
    self.compile_s = {}
    self.flops, self.memory = 0.0, {}
    self.stage_fns = None
    fused = bool(config.ran.get("fused", True))
    if per_stage or not fused:
      t = time.perf_counter()
      steps = self.program.stage_steps
      self.stage_fns = stages.StageFns(
          **{n: getattr(steps, n).lower(self.state, self.batch).compile() for n in stages.STAGES},
          reinit=steps.reinit)
      self.compile_s["stages"] = time.perf_counter() - t
    if fused:
      t = time.perf_counter()
      self.iteration = self.program.iteration.lower(self.state, self.batch).compile()
      self.compile_s["iteration"] = time.perf_counter() - t
      self.flops = _flops(self.iteration)
      self.memory = _memory(self.iteration)
    else:
      self.iteration = self.run_stages_fn

  def run_stages_fn(self, state, batch):
    return stages.ran_iteration(state, batch, stages=self.stage_fns, k=self.k)

  def run(self):
    self.state, m = self.iteration(self.state, self.batch)
    block(m)

  def run_stages(self):
    self.state, m = self.run_stages_fn(self.state, self.batch)
    block(m)

  def run_stage(self, name: str):
    self.state, m = getattr(self.stage_fns, name)(self.state, self.batch)
    block(m)


def torch_status() -> tuple[bool, str]:
  """(available, note): whether the PyTorch reference can run, and what it runs on."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False, ("PyTorch not installed: skipping the PyTorch references "
                   "(install the CPU build: pip install torch==2.13.0; see docs/performance.md).")
  return True, f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads"


def _check_plain_ran(config):
  """The reference implements Algorithm 1 alone: refuse configs it would not match."""
  m, r = config.model, config.ran
  extra = {
      "model.dropout": m.get("dropout", 0.0),
      "model.bottleneck_dim": m.get("bottleneck_dim", 0),
      "model.feature_noise": m.get("feature_noise", 0.0),
      "ran.extra_decoders": tuple(r.get("extra_decoders", ())),
      "ran.reinit_every_steps": r.get("reinit_every_steps", 0),
      "ran.warmup_steps": r.get("warmup_steps", 0),
      "ran.target_psnr": r.get("target_psnr", 0.0),
      "ran.compactness": r.get("compactness", 0.0),
  }
  on = {k: v for k, v in extra.items() if v}
  if m.get("dtype", "float32") != "float32":
    on["model.dtype"] = m.dtype
  if on:
    raise ValueError(f"The PyTorch reference runs plain float32 Algorithm 1; unset {on}.")


class TorchEngine:
  """`TorchRAN` of the same config on the same batch (NHWC -> NCHW), eager or compiled.

  With `compile=True` the first iteration compiles the three stage forwards
  (inductor); its wall time is `compile_s` (compilation plus one iteration).
  """

  def __init__(self, config, input_spec: InputSpec, host_batch: dict, compile: bool = False):
    import torch  # pylint: disable=g-import-not-at-top

    from bench import torch_reference  # pylint: disable=g-import-not-at-top

    _check_plain_ran(config)
    widths = config.model.get("widths", None)
    spec = build_encoder_spec(config.model.encoder, input_spec.input_shape,
                              tuple(widths) if widths else None)
    r = config.ran
    self.ran = torch_reference.TorchRAN(
        spec, input_spec.input_shape, input_spec.num_classes, tuple(config.model.classifier_hidden),
        input_spec.value_range, k=int(r.k), lam=float(r.lam),
        lr=(float(r.l1), float(r.l2), float(r.l3)), recon_reduction=r.recon_reduction,
        compile=compile)
    self.x = torch.from_numpy(np.ascontiguousarray(np.transpose(host_batch["image"], (0, 3, 1, 2))))
    self.y = torch.from_numpy(np.asarray(host_batch["label"]).astype(np.int64))
    self.compile_s = None
    if compile:
      t = time.perf_counter()
      self.run()
      self.compile_s = time.perf_counter() - t

  def run(self):
    self.ran.iteration(self.x, self.y)
