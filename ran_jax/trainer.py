"""The RAN training loop: mesh, input, state, Algorithm-1 iterations, logs, checkpoints."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import signal
import threading
import time

import jax
import jax.numpy as jnp
from etils import epath

from ran_jax import checkpointing, export, input_pipeline, parallel, stages
from ran_jax.config_lib import validate_config
from ran_jax.metric_writers import MetricWriter
from ran_jax.models import build_models

log = logging.getLogger("ran_jax")


class NonFiniteError(FloatingPointError):
  """A stage produced NaN/Inf; training stops without saving over good checkpoints."""


def model_fingerprint(config, source) -> dict:
  """What must match for a checkpoint to belong to this run (shapes, not schedule)."""
  m = config.model
  desc = {
      "encoder": m.encoder,
      "widths": list(m.widths) if m.get("widths") else None,
      "classifier_hidden": list(m.classifier_hidden),
      "dataset": config.data.name,
      "input_shape": list(source.input_shape),
      "num_classes": int(source.num_classes),
  }
  desc["digest"] = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]
  return desc


def check_finite(metrics: dict, step: int) -> None:
  order = {name: i for i, name in enumerate(stages.STAGES)}
  bad = sorted((k for k, v in metrics.items() if not math.isfinite(float(v))),
               key=lambda k: (order.get(k.split("/")[0], 99), k))
  if bad:
    stage_names = {"disc": "discriminative", "gen": "generative", "adv": "adversarial"}
    stage = stage_names.get(bad[0].split("/")[0], bad[0])
    raise NonFiniteError(
        f"Non-finite value in the {stage} stage at step {step}: "
        + ", ".join(f"{k}={float(metrics[k])}" for k in bad)
        + ". Training stopped; the last good checkpoint is kept. Lower the learning rates or "
        "check the input data for NaN/Inf.")


def compute_dtype(config):
  return jnp.bfloat16 if config.model.get("dtype", "float32") == "bfloat16" else jnp.float32


def build(config, mesh):
  """Loads data and builds models, pipeline, optimizers; no training compute yet."""
  source = input_pipeline.load_dataset(config.data)
  models = build_models(config.model, source.input_shape, source.num_classes, source.value_range,
                        dtype=compute_dtype(config))
  pipeline = input_pipeline.InputPipeline(source, config.batch_size, config.eval_batch_size,
                                          config.seed, mesh)
  optimizers = stages.make_optimizers(config.ran)
  return source, models, pipeline, optimizers


def _jit_step(fn, mesh):
  repl, dsh = parallel.replicated(mesh), parallel.data_sharding(mesh)
  return jax.jit(fn, in_shardings=(repl, dsh), out_shardings=(repl, repl), donate_argnums=0)


def jit_stages(models, optimizers, ran_config, mesh) -> stages.StageFns:
  """Each stage jitted once: state replicated and donated, batch sharded on 'data'."""
  bound = stages.bind_stages(models, optimizers, ran_config)
  return stages.StageFns(disc=_jit_step(bound.disc, mesh), gen=_jit_step(bound.gen, mesh),
                         adv=_jit_step(bound.adv, mesh))


def make_iteration(models, optimizers, ran_config, mesh):
  """(state, batch) -> (state, metrics) for one Algorithm-1 iteration.

  fused=True: the whole iteration (k unrolled (disc, gen) pairs + adv) is one
  jitted function with the state donated, one dispatch per mini-batch.
  fused=False: the per-stage jitted steps called 2k+1 times from Python.
  Both run the same stage functions and give the same results.
  """
  k = int(ran_config.k)
  if ran_config.get("fused", True):
    bound = stages.bind_stages(models, optimizers, ran_config)
    return _jit_step(functools.partial(stages.ran_iteration, stages=bound, k=k), mesh)
  fns = jit_stages(models, optimizers, ran_config, mesh)
  return functools.partial(stages.ran_iteration, stages=fns, k=k)


def create_state(models, optimizers, seed: int, mesh):
  init = jax.jit(functools.partial(stages.init_state, models, optimizers),
                 out_shardings=parallel.replicated(mesh))
  return init(jax.random.PRNGKey(seed))


def evaluate(state, pipeline, eval_fn) -> dict:
  tot = None
  for batch in pipeline.eval_batches("test"):
    out = eval_fn(state, batch)
    tot = out if tot is None else jax.tree.map(jnp.add, tot, out)
  tot = jax.device_get(tot)
  n = float(tot["count"])
  return {
      "accuracy": float(tot["correct"]) / n,
      "ce": float(tot["ce"]) / n,
      "recon_mse_sum": float(tot["recon_sum"]) / n,   # per-example summed squared error
      "recon_mse_mean": float(tot["recon_mean"]) / n,  # per-value mean squared error
  }


class _Preemption:
  """Turns SIGTERM (preemption notice) into a flag the loop polls after each step."""

  def __init__(self):
    self.requested = False
    self._old = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGTERM, self._handler)
    return self

  def _handler(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      # All hosts must agree on the step to save at; JAX's preemption service
      # (started by jax.distributed.initialize) syncs the notice across hosts.
      from jax.experimental import multihost_utils

      return self.requested or multihost_utils.reached_preemption_sync_point(step)
    return self.requested


class Preempted(SystemExit):
  """Raised after a SIGTERM-triggered checkpoint; exit code 143 like a TERM kill."""

  def __init__(self, step):
    super().__init__(143)
    self.step = step


def _write_text(workdir, name, text):
  if jax.process_index() == 0:
    (epath.Path(workdir) / name).write_text(text)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains RAN per Algorithm 1 and returns the final test metrics.

  Resumes from the newest good checkpoint in `workdir`; on SIGTERM saves and
  raises `Preempted`; on a non-finite metric raises NonFiniteError without saving.
  """
  mesh = parallel.make_mesh()
  validate_config(config, num_devices=mesh.size)
  source, models, pipeline, optimizers = build(config, mesh)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  _write_text(workdir, "config.json", config.to_json_best_effort(indent=2))
  log.info("Dataset %s: %d train / %d test, input %s, %d classes; %d devices in %d processes "
           "(%s); encoder %s, %d layers", source.name, len(source.train), len(source.test),
           source.input_shape, source.num_classes, mesh.size, jax.process_count(),
           jax.devices()[0].platform, config.model.encoder, len(models.spec))

  # ------------------------------------------------------------ state / resume
  repl = parallel.replicated(mesh)
  state = create_state(models, optimizers, config.seed, mesh)
  ckpt = checkpointing.Checkpointer(str(epath.Path(workdir) / "checkpoints"),
                                    max_to_keep=config.keep_checkpoints)
  fingerprint = model_fingerprint(config, source)
  restored = ckpt.restore_latest_good(checkpointing.abstract_like(state, repl), fingerprint)
  if restored is not None:
    state = restored
    log.info("Resumed from %s at step %d", ckpt.directory, int(jax.device_get(state.step)))

  # ------------------------------------------------------------ compiled steps
  iteration = make_iteration(models, optimizers, config.ran, mesh)
  eval_fn = jax.jit(functools.partial(stages.eval_step, models=models),
                    in_shardings=(repl, parallel.data_sharding(mesh)), out_shardings=repl)
  spe = pipeline.steps_per_epoch
  total = config.num_epochs * spe
  if config.max_steps > 0:
    total = min(total, config.max_steps)
  start = int(jax.device_get(state.step))
  writer = MetricWriter(workdir)
  ckpt_every = config.checkpoint_every_steps

  saved = {"step": start}

  def save(step, metrics_host):
    check_finite(metrics_host, step)  # never write a checkpoint over good ones with NaN state
    if saved["step"] == step:
      return
    ckpt.save(step, state, {"fingerprint": fingerprint, "step": int(step),
                            "input_position": int(step)})
    saved["step"] = step

  # ------------------------------------------------------------ train loop
  log.info("Training steps %d..%d (%d per epoch, k=%d, lambda=%g, batch %d)", start, total, spe,
           config.ran.k, config.ran.lam, config.batch_size)
  final = {}
  t_window, n_window = time.perf_counter(), 0
  metrics = None
  batches = pipeline.train_batches(start, total)
  with _Preemption() as preemption:
    try:
      for step, batch in enumerate(batches, start=start + 1):
        state, metrics = iteration(state, batch)
        n_window += 1
        host = None
        if step % config.log_every_steps == 0 or step == total:
          host = jax.device_get(metrics)
          check_finite(host, step)
          dt = time.perf_counter() - t_window
          rate = n_window * config.batch_size / max(dt, 1e-9)
          eta = (total - step) * config.batch_size / max(rate, 1e-9)
          log.info("step %d/%d epoch %d | disc ce %.4f acc %.3f | gen mse %.4g | adv loss %.4g "
                   "| %.1f ex/s | ETA %s", step, total, (step - 1) // spe + 1, host["disc/ce"],
                   host["disc/accuracy"], host["gen/recon_mse"], host["adv/loss"], rate,
                   time.strftime("%H:%M:%S", time.gmtime(eta)))
          writer.write(step, {**host, "examples_per_sec": rate})
          t_window, n_window = time.perf_counter(), 0
        epoch_end = step % spe == 0 or step == total
        if (ckpt_every and step % ckpt_every == 0) or epoch_end:
          host = host if host is not None else jax.device_get(metrics)
          if epoch_end:
            final = evaluate(state, pipeline, eval_fn)
            log.info("eval step %d epoch %d | test accuracy %.4f | test recon (sum/example) %.4g "
                     "| (mean/value) %.4g", step, (step - 1) // spe + 1, final["accuracy"],
                     final["recon_mse_sum"], final["recon_mse_mean"])
            writer.write(step, final, kind="test")
          save(step, host)
        if step < total and preemption.reached(step):
          save(step, jax.device_get(metrics))
          ckpt.wait()
          log.warning("SIGTERM: saved checkpoint at step %d; exiting. Rerun the same command to "
                      "resume.", step)
          raise Preempted(step)
    finally:
      # Stop and join the prefetch thread now: left to run into interpreter shutdown
      # (after a SIGTERM exit) it can still be inside JAX and abort the process.
      batches.close()
      ckpt.close()
      writer.close()
  if metrics is None:
    log.info("Nothing to train: checkpoint step %d >= %d planned steps.", start, total)
    final = evaluate(state, pipeline, eval_fn)
  export.export_trained(workdir, state, config, source)
  _write_text(workdir, "final_metrics.json",
              json.dumps({"step": int(jax.device_get(state.step)), **final}, indent=2))
  return final
