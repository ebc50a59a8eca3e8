"""The RAN training loop: mesh, input, state, Algorithm-1 iterations, logs, checkpoints."""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from ran_jax import checkpointing, export, input_pipeline, losses, parallel, profiling, progress
from ran_jax import stages
from ran_jax import __version__
from ran_jax.config_lib import VERSION_KEY, validate_config
from ran_jax.metric_writers import MetricWriter
from ran_jax.program import InputSpec, build_program

log = logging.getLogger("ran_jax")


class TeacherSplit:
  """A training split whose `get` also returns the teacher's logits ('teacher', [B, C])."""

  def __init__(self, split, logits):
    self.split, self.logits = split, logits

  def __len__(self) -> int:
    return len(self.split)

  def __getattr__(self, name):   # attributes, order, ...: the wrapped split's
    return getattr(self.split, name)

  def get(self, indices) -> dict:
    out = self.split.get(indices)
    out["teacher"] = self.logits[np.asarray(indices)]
    return out


def teacher_logits(teacher, split, batch: int = 512) -> np.ndarray:
  """[N, C] float32: `teacher`'s classifier on its clean features of every example (no
  release noise: the teacher is a training aid, not a release)."""
  fn = jax.jit(lambda x: teacher.classify(teacher.features(x)))
  out = [np.asarray(fn(split.get(np.arange(s, min(s + batch, len(split))))["image"]),
                    np.float32) for s in range(0, len(split), batch)]
  return np.concatenate(out)


def with_teacher(source, ran_config):
  """`source` with the distillation teacher's logits on its training split (unchanged when
  ran.distill_weight is 0). The teacher is the export of ran.distill_from."""
  import dataclasses

  from ran_jax.config_lib import ConfigError

  if not float(ran_config.get("distill_weight", 0.0) or 0.0):
    return source
  where = ran_config.distill_from
  try:
    teacher = export.load_trained(where)
  except FileNotFoundError as e:
    raise ConfigError(f"ran.distill_from={where!r}: no finished run to distil from ({e})") from e
  shape, classes = tuple(teacher.models.input_shape), int(teacher.models.num_classes)
  if shape != tuple(source.input_shape) or classes != source.num_classes:
    raise ConfigError(f"ran.distill_from={where!r}: the teacher takes {shape} inputs into "
                      f"{classes} classes, this run's data {tuple(source.input_shape)} into "
                      f"{source.num_classes}.")
  t0 = time.perf_counter()
  logits = teacher_logits(teacher, source.train)
  log.info("Distilling from %s: teacher logits of %d training examples in %.1f s", where,
           len(logits), time.perf_counter() - t0)
  return dataclasses.replace(source, train=TeacherSplit(source.train, logits))


class NonFiniteError(FloatingPointError):
  """A stage produced NaN/Inf; training stops without saving over good checkpoints."""


def check_finite(metrics: dict, step: int) -> None:
  order = {name: i for i, name in enumerate(stages.STAGES)}
  bad = sorted((k for k, v in metrics.items() if not math.isfinite(float(v))),
               key=lambda k: (order.get(k.split("/")[0], 99), k))
  if bad:
    stage = stages.STAGE_NAMES.get(bad[0].split("/")[0], bad[0])
    raise NonFiniteError(
        f"Non-finite value in the {stage} stage at step {step}: "
        + ", ".join(f"{k}={float(metrics[k])}" for k in bad)
        + ". Training stopped; the last good checkpoint is kept. Lower the learning rates or "
        "check the input data for NaN/Inf.")


def run_test_split(state, pipeline, test_step, seed: int = 0) -> dict:
  """Test-split metrics of RAN's own networks (eval mode); RAN's decoder is not an attacker.

  The released features' noise (if any) comes from keys fixed by `seed` and the
  batch index, so the same state always scores the same.
  """
  tot = None
  base = jax.random.PRNGKey(seed)
  for i, batch in enumerate(pipeline.eval_batches("test")):
    out = test_step(state, batch, jax.random.fold_in(base, i))
    tot = out if tot is None else jax.tree.map(jnp.add, tot, out)
  tot = jax.device_get(tot)
  n = float(tot["count"])
  return {
      "accuracy": float(tot["correct"]) / n,
      "ce": float(tot["ce"]) / n,
      "recon_sse": float(tot["recon_sse"]) / n,   # per-example summed squared error
      "recon_mse": float(tot["recon_mse"]) / n,   # per-value mean squared error
  }


class _Preemption:
  """Turns SIGTERM (preemption notice) into a flag the loop polls after each step."""

  def __init__(self):
    self.requested = False
    self._old = None

  def __enter__(self):
    # Several processes: JAX's preemption service (started by jax.distributed.initialize)
    # catches the SIGTERM itself and tells every host, which then stop at the same step;
    # a Python handler here would replace its handler, and a notice that reached one host
    # only would stop that host alone while the others wait on it in the next collective.
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
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
      # All hosts must agree on the step to save at: the service's sync point is true on
      # every host at the same step once any host has had the notice.
      from jax.experimental import multihost_utils

      return multihost_utils.reached_preemption_sync_point(step)
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
  validate_config(config, num_devices=jax.device_count())
  mesh = parallel.make_mesh(model_shards=config.model.get("classifier_shards", 1))
  source = with_teacher(input_pipeline.load_dataset(config.data), config.ran)
  pipeline = input_pipeline.InputPipeline(source, config.batch_size, config.eval_batch_size,
                                          config.seed, mesh)
  spe = pipeline.steps_per_epoch
  total = config.num_epochs * spe
  if config.max_steps > 0:
    total = min(total, config.max_steps)
  program = build_program(config, mesh, InputSpec.of(source), total_steps=total)
  models = program.models
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  _write_text(workdir, "config.json", json.dumps(  # the resolved config and what wrote it
      {VERSION_KEY: __version__, **json.loads(config.to_json_best_effort())}, indent=2))
  log.info("Dataset %s: %d train / %d test, input %s, %d classes; %d devices in %d processes "
           "(%s); encoder %s, %d layers", source.name, len(source.train), len(source.test),
           source.input_shape, source.num_classes, mesh.size, jax.process_count(),
           jax.devices()[0].platform, config.model.encoder, len(models.spec))

  # ------------------------------------------------------------ state / resume
  state = program.create_state()
  ckpt = checkpointing.Checkpointer(str(epath.Path(workdir) / "checkpoints"),
                                    max_to_keep=config.keep_checkpoints)
  fingerprint = checkpointing.model_fingerprint(config, program.input_spec)
  restored = ckpt.restore_latest_good(program.abstract_state(), fingerprint)
  if restored is not None:
    state = restored
    log.info("Resumed from %s at step %d", ckpt.directory, int(jax.device_get(state.step)))

  # ------------------------------------------------------------ compiled steps
  iteration = program.iteration
  start = int(jax.device_get(state.step))
  writer = MetricWriter(workdir)
  ckpt_every = config.checkpoint_every_steps

  saved = {"step": start}
  recon_name = losses.recon_metric_name(config.ran.recon_reduction)

  def save(step, metrics_host):
    check_finite(metrics_host, step)  # never write a checkpoint over good ones with NaN state
    if saved["step"] == step:
      return
    ckpt.save(step, state, {"fingerprint": fingerprint, "step": int(step)})
    saved["step"] = step

  # ------------------------------------------------------------ train loop
  log.info("Training steps %d..%d (%d per epoch, k=%d, lambda=%g, batch %d)", start, total, spe,
           config.ran.k, config.ran.lam, config.batch_size)
  final = {}
  t_window, n_window = time.perf_counter(), 0
  t_start, paced = t_window, None
  metrics = None
  batches = pipeline.train_batches(start, total)
  epochs = -(-total // spe)
  profiler = profiling.StepProfiler(workdir, config.get("profile_steps", ""), start, total)
  with _Preemption() as preemption, progress.bar(
      total, desc="ran-train", unit="step", initial=start,
      enabled=None if jax.process_index() == 0 else False) as bar:
    try:
      for step, batch in enumerate(batches, start=start + 1):
        with profiler.annotate(step):
          state, metrics = iteration(state, batch)
        profiler.after(step, metrics)
        n_window += 1
        bar.update()
        host = None
        if step % config.log_every_steps == 0 or step == total:
          host = jax.device_get(metrics)
          check_finite(host, step)
          dt = time.perf_counter() - t_window
          rate = n_window * config.batch_size / max(dt, 1e-9)
          eta = (total - step) * config.batch_size / max(rate, 1e-9)
          log.info("step %d/%d epoch %d | disc ce %.4f acc %.3f | gen %s %.4g | adv loss %.4g "
                   "| %.1f ex/s | ETA %s", step, total, (step - 1) // spe + 1, host["disc/ce"],
                   host["disc/accuracy"], recon_name, host[f"gen/{recon_name}"], host["adv/loss"],
                   rate,
                   time.strftime("%H:%M:%S", time.gmtime(eta)))
          writer.write(step, {**host, "examples_per_sec": rate})
          t_window, n_window = time.perf_counter(), 0
        epoch_end = step % spe == 0 or step == total
        if (ckpt_every and step % ckpt_every == 0) or epoch_end:
          host = host if host is not None else jax.device_get(metrics)
          if epoch_end:
            final = run_test_split(state, pipeline, program.test_step, config.seed)
            epoch = (step - 1) // spe + 1
            # The ETA of the whole run at this process's pace (evaluation included), measured
            # from the end of its first epoch on: the first one also compiles the steps.
            now = time.perf_counter()
            if paced is None:
              paced = (step, now)
              left = progress.eta(step - start, total - start, now - t_start)
            else:
              left = progress.eta(step - paced[0], total - paced[0], now - paced[1])
            log.info("epoch %d/%d (step %d/%d) | test accuracy %.4f | test recon (sum/example) "
                     "%.4g | (mean/value) %.4g | ETA %s", epoch, epochs, step, total,
                     final["accuracy"], final["recon_sse"], final["recon_mse"], left)
            bar.set_postfix_str(f"epoch {epoch}/{epochs}, test accuracy {final['accuracy']:.4f}",
                                refresh=False)
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
      profiler.close()
      ckpt.close()
      writer.close()
  if metrics is None:
    log.info("Nothing to train: checkpoint step %d >= %d planned steps.", start, total)
    final = run_test_split(state, pipeline, program.test_step, config.seed)
  export.export_trained(workdir, stages.eval_view(program.replicate(state)), config,
                        program.input_spec, source.name)
  _write_text(workdir, "final_metrics.json",
              json.dumps({"step": int(jax.device_get(state.step)), **final}, indent=2))
  log.info("%s", summary_line(workdir, final, int(jax.device_get(state.step))))
  return final


def summary_line(workdir: str, final: dict, step: int) -> str:
  """The run's closing line: its test accuracy and where its outputs are."""
  wd = epath.Path(workdir)
  where = [f"checkpoints {wd / 'checkpoints'}", f"exported networks {wd / 'export'}",
           f"metrics {wd / 'final_metrics.json'}"]
  return (f"done: step {step}, test accuracy {final.get('accuracy', float('nan')):.4f}, "
          f"reconstruction error {final.get('recon_sse', float('nan')):.4g} (sum/example) | "
          + "; ".join(where))
