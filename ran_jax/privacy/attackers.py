"""Attackers that reconstruct inputs from frozen features, and a retrained classifier.

Every neural model here is trained from scratch on (features, target) pairs of
the training split with Adam and *early stopping*: a validation part of the
training split is scored after every epoch, training stops when it has not
improved for `patience` epochs, the learning rate is cut (x `lr_decay_factor`,
at most `lr_decays` times) and training goes on from there; once no cut is left a
plateau ends it (or `max_epochs` does, reported as not converged), and the best
epoch's weights are kept. The cuts let an attacker settle into its minimum instead
of hovering above it at a fixed step size. An under-trained attacker overstates
privacy.

Training runs the way the trainer runs (`Group`, `fit_group`): the features and
targets are put on the device once; one compiled call runs a whole shuffled epoch
(`lax.scan` over its batches, the permutation drawn inside from a key, release noise
for a noisy encoder drawn inside per batch from the stored clean features), the
validation pass and the best-weights bookkeeping; several models on the same features
(the decoder families of `ran_jax.privacy.protocol`) train in that one program, each
with its own schedule. The compiled epoch is cached per model set and shape, so every
encoder of a sweep or a search with the same feature shape reuses it.

Families (the paper's §2.3: "a malicious party is free to explore any neural
architectures"):
  mirrored_decoder  the encoder's layer-by-layer mirror (the paper's attacker),
                    a fresh instance of `ran_jax.models.Decoder`.
  mlp_decoder       a larger decoder of another shape: flattened features ->
                    Dense(1024)-ReLU-Dense(1024)-ReLU-Dense(H*W*C), sigmoid to range.
  resnet_decoder    a deep conv decoder with residual up-sampling blocks
                    (`ResNetDecoder`), more capacity than any decoder used in training.
  ridge             closed-form ridge regression from flattened features (+bias)
                    to input values, the penalty chosen on the validation part,
                    outputs clipped to the value range.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from ran_jax import losses
from ran_jax.models import MLPDecoder  # noqa: F401 - an attacker family, re-exported
from ran_jax.models import fast_conv
from ran_jax.models.modules import resolve_conv_impl

log = logging.getLogger("ran_jax")

NOISE_KINDS = ("laplace", "gaussian")


@dataclasses.dataclass
class FitConfig:
  """Schedule of one early-stopped fit."""

  batch_size: int = 128
  learning_rate: float = 1e-3
  max_epochs: int = 100       # a safety net: fits end on a plateau (see `Fitted.converged`)
  patience: int = 3
  min_delta: float = 1e-4     # relative improvement that counts
  lr_decays: int = 2          # learning-rate cuts on plateaus before stopping
  lr_decay_factor: float = 0.2
  seed: int = 0


class RowsConv(nn.Module):
  """nn.Conv's parameters, computed by `fast_conv.conv2d` as row patches + one matmul.

  For the residual decoder's 3x3 convolutions over 16-64 channels this form beat both
  the per-layer choice of `fast_conv.choose_method` (the banded Toeplitz form on its
  14x14 layers, 1.1-1.4x) and XLA's convolution (about 14x) in training steps on
  2 CPU cores (docs/performance.md).
  """

  features: int
  kernel_size: tuple = (3, 3)
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        tuple(self.kernel_size) + (x.shape[-1], self.features), jnp.float32)
    y = fast_conv.conv2d(x, kernel, (1, 1), "SAME", method="rows")
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    return y


class ResNetDecoder(nn.Module):
  """A deep conv decoder with residual up-sampling blocks, the highest-capacity attacker.

  Features -> Dense to a coarse grid (the input's size / 4 on every axis longer
  than 1) with `width` channels -> per stage: nearest up-sampling x2, a 3x3 conv
  halving the channels, and `blocks` residual blocks (conv-BN-ReLU-conv-BN + skip)
  -> a 3x3 conv to the input's channels, cropped to its size, sigmoid into the
  value range. No part of it is used in RAN training. conv_impl as `model.conv_impl`:
  'auto' computes the convolutions as `RowsConv` on CPU and with `nn.Conv` elsewhere
  (the same parameters either way).
  """

  output_shape: tuple
  value_range: tuple = (0.0, 1.0)
  width: int = 64
  blocks: int = 1
  stages: int = 2
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, z, train: bool = False):
    conv = RowsConv if resolve_conv_impl(self.conv_impl) == "fast" else nn.Conv
    h, w, c = self.output_shape
    f = 2 ** self.stages
    gh, gw = (-(-h // f) if h > 1 else 1), (-(-w // f) if w > 1 else 1)
    z = z.reshape((z.shape[0], -1)).astype(jnp.float32)
    y = nn.Dense(gh * gw * self.width, name="grid")(z).reshape((-1, gh, gw, self.width))
    y = nn.relu(nn.BatchNorm(use_running_average=not train, name="grid_bn")(y))
    ch = self.width
    for s_ in range(self.stages):
      y = jnp.repeat(y, 2, axis=1) if h > 1 else y
      y = jnp.repeat(y, 2, axis=2) if w > 1 else y
      ch = max(ch // 2, 8)
      y = conv(ch, (3, 3), name=f"up{s_}")(y)
      y = nn.relu(nn.BatchNorm(use_running_average=not train, name=f"up{s_}_bn")(y))
      for b in range(self.blocks):
        r = conv(ch, (3, 3), use_bias=False, name=f"res{s_}_{b}a")(y)
        r = nn.relu(nn.BatchNorm(use_running_average=not train, name=f"res{s_}_{b}a_bn")(r))
        r = conv(ch, (3, 3), use_bias=False, name=f"res{s_}_{b}b")(r)
        r = nn.BatchNorm(use_running_average=not train, name=f"res{s_}_{b}b_bn")(r)
        y = nn.relu(y + r)
    y = conv(c, (3, 3), name="out")(y)[:, :h, :w, :]
    lo, hi = self.value_range
    return lo + (hi - lo) * nn.sigmoid(y)


class EncoderClassifier(nn.Module):
  """Encoder followed by classifier as one network (Noisy baseline's standard model)."""

  encoder: nn.Module
  classifier: nn.Module

  @nn.compact
  def __call__(self, x, train: bool = False):
    return self.classifier(self.encoder(x, train=train), train=train)


# ---------------------------------------------------------------- losses (ran_jax.losses)


def recon_loss(pred, target):
  """Per example summed squared error, averaged over the batch (the paper's convention)."""
  return losses.recon_error(target, pred, "sum")


ce_loss = losses.cross_entropy


# ---------------------------------------------------------------- early-stopped fit


@dataclasses.dataclass
class Fitted:
  module: nn.Module
  variables: dict
  epochs: int
  best_epoch: int
  best_val: float
  seconds: float
  lr_cuts: int = 0
  converged: bool = False  # stopped by a final plateau, not by max_epochs or a NaN

  def predict(self, inputs, batch: int = 1024) -> np.ndarray:
    fn = _predict_fn(self.module)
    outs = [np.asarray(fn(self.variables, jnp.asarray(inputs[s:s + batch])))
            for s in range(0, len(inputs), batch)]
    return np.concatenate(outs)


@functools.lru_cache(maxsize=None)
def _predict_fn(module):
  return jax.jit(lambda v, x: module.apply(v, x, train=False))


@dataclasses.dataclass(frozen=True)
class Job:
  """One model of a jointly trained group: a fresh module, its loss and what it learns.

  target: the key of the targets it is fitted to ('x': the inputs, 'y': the labels).
  """

  name: str
  module: nn.Module
  loss: Callable
  target: str = "x"
  cfg: FitConfig = dataclasses.field(default_factory=FitConfig)


def fit(module: nn.Module, loss: Callable, inputs: np.ndarray, targets: np.ndarray,
        val_inputs: np.ndarray, val_targets: np.ndarray, cfg: FitConfig,
        input_noise: float = 0.0, noise_kind: str = "laplace", name: str = "model") -> Fitted:
  """Trains `module` from scratch to minimise `loss` with early stopping on the val part.

  input_noise > 0 adds fresh noise of that scale ('laplace' or 'gaussian' std) to
  every training batch: the attacker of a noisy release, who holds the encoder,
  draws new noise each time (the validation inputs carry their own fixed noise).
  A group of one `Job` (see `fit_group`).
  """
  job = Job(name, module, loss, "t", cfg)
  return fit_group([job], inputs, {"t": targets}, val_inputs, {"t": val_targets},
                   input_noise=input_noise, noise_kind=noise_kind)[name]


def _draw_noise(key, shape, dtype, kind: str):
  """Unit-scale noise; 'gaussian' is `ran_jax.stages.release`'s draw, 'laplace' Noisy's."""
  if kind == "gaussian":
    return jax.random.normal(key, shape, dtype)
  return jax.random.laplace(key, shape, dtype)


def add_noise(z, key, scale, kind: str = "gaussian"):
  """z + scale * noise drawn from `key`: for 'gaussian' exactly `ran_jax.stages.release`."""
  return z + jnp.asarray(scale, z.dtype) * _draw_noise(key, z.shape, z.dtype, kind)


def _variables(params, stats):
  return {"params": params, **({"batch_stats": stats} if stats else {})}


def _train_step(job: Job, tx, st: dict, zb, tb, key):
  """One Adam step of one job on one batch (train-mode batch statistics)."""

  def lf(p):
    out, upd = job.module.apply(_variables(p, st["stats"]), zb, train=True,
                                mutable=["batch_stats"], rngs={"dropout": key})
    return job.loss(out, tb), upd.get("batch_stats", st["stats"])

  (_, stats), g = jax.value_and_grad(lf, has_aux=True)(st["params"])
  upd, opt = tx.update(g, st["opt"], st["params"])
  return {**st, "params": optax.apply_updates(st["params"], upd), "stats": stats, "opt": opt}


def _val_loss(job: Job, st: dict, z_val, t_val, mask):
  """Mean per-example loss over the (padded) validation part, eval mode, in chunks."""

  def chunk(tot, xs):
    zc, tc, mc = xs
    out = job.module.apply(_variables(st["params"], st["stats"]), zc, train=False)
    per = jax.vmap(lambda p, t: job.loss(p[None], t[None]))(out, tc)
    return tot + jnp.sum(per * mc), None

  tot, _ = lax.scan(chunk, jnp.zeros((), jnp.float32), (z_val, t_val, mask))
  return tot / jnp.sum(mask)


def epoch_order(key, n: int, batch: int):
  """[n // batch, batch] example indices of one epoch: the permutation `key` draws.

  The compiled epoch calls it with its epoch key (the first half of its split), so a
  reference can feed the very same batches (bench/attacker_bench.py).
  """
  steps = n // batch
  return jax.random.permutation(key, n)[:steps * batch].reshape(steps, batch)


@functools.lru_cache(maxsize=None)
def _epoch_fn(statics: tuple, batch: int, noise_kind: Optional[str]):
  """The compiled epoch of a group: a shuffled pass of Adam steps for every active job,
  then each one's validation loss and its best weights so far; cached per group.

  statics: ((module, loss, target), ...). noise_kind None: no release noise. jax.jit
  compiles once per array shape, so every encoder of a sweep or a search with the same
  feature shape reuses the program.
  """
  jobs = [Job(f"j{i}", m, loss, target) for i, (m, loss, target) in enumerate(statics)]
  tx = _optimizer()

  def epoch(states, data, key, lrs, active, best_vals, min_deltas, noise_scale):
    k_perm, k_steps = jax.random.split(key)
    order = epoch_order(k_perm, data["z"].shape[0], batch)
    states = tuple({**st, "opt": _with_lr(st["opt"], lrs[i])} for i, st in enumerate(states))

    def step(states, xs):
      idx, i = xs
      k_noise, k_drop = jax.random.split(jax.random.fold_in(k_steps, i))
      zb = jnp.take(data["z"], idx, axis=0)
      if noise_kind is not None:   # fresh release noise on every batch
        zb = add_noise(zb, k_noise, noise_scale, noise_kind)
      new = []
      for j, job in enumerate(jobs):
        tb = jnp.take(data[job.target], idx, axis=0)
        # A job that has stopped costs nothing: only the taken branch runs.
        new.append(lax.cond(active[j], functools.partial(_train_step, job, tx), _skipped_step,
                            states[j], zb, tb, k_drop))
      return tuple(new), None

    states, _ = lax.scan(step, states, (order, jnp.arange(order.shape[0])))
    vals, improved, out = [], [], []
    for j, job in enumerate(jobs):
      st = states[j]
      v = lax.cond(active[j], functools.partial(_val_loss, job), _skipped_val, st,
                   data["z_val"], data[job.target + "_val"], data["mask"])
      better = active[j] & jnp.isfinite(v) & (v < best_vals[j] * (1 - min_deltas[j]))
      out.append({**st, "best_params": _select(better, st["params"], st["best_params"]),
                  "best_stats": _select(better, st["stats"], st["best_stats"])})
      vals.append(v)
      improved.append(better)
    return tuple(out), jnp.stack(vals), jnp.stack(improved)

  return jax.jit(epoch, donate_argnums=(0,))


def _skipped_step(st, *_):
  return st


def _skipped_val(st, *_):
  del st
  return jnp.asarray(jnp.inf, jnp.float32)


def _select(pred, new, old):
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def _optimizer():
  # Adam whose learning rate is an input of each epoch: the plateau cuts change no program.
  return optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)


def _with_lr(opt, lr):
  hp = dict(opt.hyperparams)
  hp["learning_rate"] = jnp.asarray(lr, hp["learning_rate"].dtype)
  return opt._replace(hyperparams=hp)


@functools.lru_cache(maxsize=None)
def _init_fn(module):
  # One compiled program: op-by-op, the fast convolutions' many small slices each compile.
  return jax.jit(lambda key, z: module.init(key, z, train=False))


VAL_CHUNK = 512   # validation examples per step of the compiled validation pass


def _chunked(a: np.ndarray, chunks: int, chunk: int):
  """[n, ...] -> [chunks, chunk, ...] on the device, zero-padded at the end."""
  pad = chunks * chunk - len(a)
  a = np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)]) if pad else a
  return jnp.asarray(a.reshape((chunks, chunk) + a.shape[1:]))


class Group:
  """Jobs trained together on the same inputs: their arrays and states on the device.

  The inputs, targets and validation arrays go to the device once. `epoch()` is one
  call of the compiled epoch (`_epoch_fn`): a whole shuffled epoch of Adam steps for
  every active job (`lax.scan` over the batches, the permutation drawn inside from the
  key), with input_noise > 0 fresh noise on every batch (the same draw for all jobs),
  then each job's validation loss, its best weights so far kept on the device. Jobs
  must share batch_size and seed (their batches are the same).
  """

  def __init__(self, jobs: Sequence[Job], inputs: np.ndarray, targets: dict,
               val_inputs: np.ndarray, val_targets: dict, input_noise: float = 0.0,
               noise_kind: str = "laplace"):
    if noise_kind not in NOISE_KINDS:
      raise ValueError(f"noise_kind must be one of {NOISE_KINDS}, got {noise_kind!r}.")
    names = [j.name for j in jobs]
    if not jobs or len(set(names)) != len(names):
      raise ValueError(f"A group needs jobs with distinct names, got {names}.")
    cfg0 = jobs[0].cfg
    if any((j.cfg.batch_size, j.cfg.seed) != (cfg0.batch_size, cfg0.seed) for j in jobs):
      raise ValueError("The jobs of one group share batch_size and seed; fit them apart.")
    used = sorted({j.target for j in jobs})
    missing = [t for t in used if t not in targets or t not in val_targets]
    if missing:
      raise ValueError(f"No targets {missing} for the jobs {names}.")
    n, n_val = len(inputs), len(val_inputs)
    if n < 1 or n_val < 1:
      raise ValueError(f"A fit needs training and validation examples, got {n} and {n_val}.")
    self.jobs, self.seed = list(jobs), cfg0.seed
    self.batch = min(cfg0.batch_size, n)
    chunk = min(VAL_CHUNK, n_val)
    chunks = -(-n_val // chunk)
    self.data = {"z": jnp.asarray(inputs),
                 "z_val": _chunked(np.asarray(val_inputs), chunks, chunk),
                 "mask": _chunked(np.ones(n_val, np.float32), chunks, chunk)}
    for t in used:
      self.data[t] = jnp.asarray(targets[t])
      self.data[t + "_val"] = _chunked(np.asarray(val_targets[t]), chunks, chunk)
    self.noise = jnp.asarray(input_noise, jnp.float32)
    self._fn = _epoch_fn(tuple((j.module, j.loss, j.target) for j in jobs), self.batch,
                         noise_kind if input_noise > 0 else None)
    tx = _optimizer()
    states = []
    for j in jobs:
      _, k_init = jax.random.split(jax.random.PRNGKey(j.cfg.seed))
      v = _init_fn(j.module)(k_init, self.data["z"][:2])
      params, stats = v["params"], v.get("batch_stats", {})
      states.append({"params": params, "stats": stats, "opt": tx.init(params),
                     "best_params": params, "best_stats": stats})
    self.states = jax.tree.map(jnp.array, tuple(states))  # own copies: epochs donate them

  def epoch(self, key, lr, active, best, min_delta):
    """One epoch (per-job arrays lr, active, best validation loss, min_delta) ->
    (validation losses, improved): numpy [jobs]; inactive jobs are left untouched."""
    self.states, vals, improved = self._fn(
        self.states, self.data, key, jnp.asarray(lr, jnp.float32), jnp.asarray(active),
        jnp.asarray(best, jnp.float32), jnp.asarray(min_delta, jnp.float32), self.noise)
    return np.asarray(vals), np.asarray(improved)

  def best_variables(self, i: int) -> dict:
    st = self.states[i]
    return _variables(st["best_params"], st["best_stats"])


class Progress:
  """What a fit shows per epoch: a bar on a terminal, and in a log a line at most every
  `every` seconds (and after the last epoch) with the epoch, the fits still running, the best
  validation loss and the time left at most (every fit stops at its epoch cap or earlier):

    attack/mlp_decoder[1024x1024] and 2 more: epoch 4 of at most 30, 3 running, best val
    loss 0.01234 | at most 00:05:10 left
  """

  def __init__(self, title: str, cap: int, every: float = 10.0):
    from ran_jax import progress

    self.title, self.cap, self.every = title, int(cap), float(every)
    self.t0 = self.last = time.perf_counter()
    self.bar = progress.open_bar(self.cap, desc=title, unit="epoch")
    self.done = 0

  def epoch(self, epoch: int, running: int, best: float) -> None:
    from ran_jax import progress

    now = time.perf_counter()
    self.bar.update(epoch - self.done)
    self.done = epoch
    self.bar.set_postfix_str(f"{running} running, best val loss {best:.4g}")
    if running and now - self.last < self.every:
      return
    self.last = now
    left = progress.eta(epoch, self.cap, now - self.t0) if running else "00:00:00"
    log.info("%s: epoch %d of at most %d, %d running, best val loss %.4g | at most %s left",
             self.title, epoch, self.cap, running, best, left)

  def close(self) -> None:
    self.bar.close()


def fit_group(jobs: Sequence[Job], inputs: np.ndarray, targets: dict, val_inputs: np.ndarray,
              val_targets: dict, input_noise: float = 0.0,
              noise_kind: str = "laplace") -> dict:
  """Trains every job from scratch on the same inputs in one compiled program (`Group`).

  After each epoch the host applies each job's early stopping (its FitConfig: patience,
  learning-rate cuts, max_epochs, as in the module doc); a stopped job is skipped from
  then on while the others go on. Returns {job name: Fitted}, each with the weights of
  its best validation epoch; `seconds` is the time from the group's start to its stop.
  """
  t0 = time.perf_counter()
  group = Group(jobs, inputs, targets, val_inputs, val_targets, input_noise, noise_kind)
  k = len(jobs)
  lr = np.array([j.cfg.learning_rate for j in jobs], np.float32)
  min_delta = np.array([j.cfg.min_delta for j in jobs], np.float32)
  best = np.full(k, np.inf, np.float32)
  best_epoch, since, cuts = np.zeros(k, int), np.zeros(k, int), np.zeros(k, int)
  epochs, seconds = np.zeros(k, int), np.zeros(k)
  active, converged = np.ones(k, bool), np.zeros(k, bool)
  rng = jax.random.PRNGKey(group.seed)
  epoch = 0
  cap = max(j.cfg.max_epochs for j in jobs)
  title = jobs[0].name if k == 1 else f"{jobs[0].name} and {k - 1} more"
  shown = Progress(title, cap)
  while active.any():
    epoch += 1
    rng, key = jax.random.split(rng)
    vals, improved = group.epoch(key, lr, active, best, min_delta)
    for i, j in enumerate(jobs):
      if not active[i]:
        continue
      epochs[i] = epoch
      if not np.isfinite(vals[i]):
        log.warning("%s: non-finite validation loss at epoch %d; keeping epoch %d", j.name,
                    epoch, best_epoch[i])
        active[i] = False
      elif improved[i]:
        best[i], best_epoch[i], since[i] = vals[i], epoch, 0
      else:
        since[i] += 1
      if active[i] and since[i] >= j.cfg.patience:
        if cuts[i] >= j.cfg.lr_decays:
          converged[i], active[i] = True, False
        else:
          cuts[i], since[i], lr[i] = cuts[i] + 1, 0, lr[i] * j.cfg.lr_decay_factor
      if active[i] and epoch >= j.cfg.max_epochs:
        active[i] = False
      if not active[i]:
        seconds[i] = time.perf_counter() - t0
    shown.epoch(epoch, int(active.sum()), float(np.min(np.where(np.isfinite(best), best, np.inf))))
  shown.close()
  out = {}
  for i, j in enumerate(jobs):
    log.info("%s: %d epochs (best %d, val loss %.5g, %d lr cuts, %s), %.1fs", j.name,
             epochs[i], best_epoch[i], best[i], cuts[i],
             "converged" if converged[i] else "NOT converged: epoch cap", seconds[i])
    out[j.name] = Fitted(j.module, group.best_variables(i), int(epochs[i]), int(best_epoch[i]),
                         float(best[i]), float(seconds[i]), int(cuts[i]), bool(converged[i]))
  return out


# ---------------------------------------------------------------- ridge


@dataclasses.dataclass
class RidgeAttacker:
  """Closed-form ridge regression features -> input values, penalty picked on val."""

  weight: np.ndarray
  bias: np.ndarray
  alpha: float
  output_shape: tuple
  value_range: tuple

  def predict(self, features) -> np.ndarray:
    z = np.asarray(features, np.float64).reshape(len(features), -1)
    out = z @ self.weight + self.bias
    lo, hi = self.value_range
    return np.clip(out, lo, hi).reshape((-1,) + tuple(self.output_shape)).astype(np.float32)


RIDGE_ALPHAS = (1e-9, 1e-7, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def fit_ridge(features, inputs, val_features, val_inputs, value_range,
              alphas=RIDGE_ALPHAS) -> RidgeAttacker:
  """Ridge from centred features; alpha is relative to the mean eigenvalue of Z^T Z / n."""
  z = np.asarray(features, np.float64).reshape(len(features), -1)
  x = np.asarray(inputs, np.float64).reshape(len(inputs), -1)
  zm, xm = z.mean(0), x.mean(0)
  zc, xc = z - zm, x - xm
  evals, evecs = np.linalg.eigh(zc.T @ zc / len(z))
  evals = np.maximum(evals, 0.0)
  proj = evecs.T @ (zc.T @ xc / len(z))          # [d, p]
  scale = max(float(evals.mean()), 1e-12)
  zv = np.asarray(val_features, np.float64).reshape(len(val_features), -1)
  xv = np.asarray(val_inputs, np.float64).reshape(len(val_inputs), -1)
  lo, hi = value_range
  best = None
  for a in alphas:
    w = evecs @ (proj / (evals + a * scale)[:, None])
    b = xm - zm @ w
    err = np.square(np.clip(zv @ w + b, lo, hi) - xv).sum(-1).mean()
    if best is None or err < best[0]:
      best = (err, a, w, b)
  _, a, w, b = best
  return RidgeAttacker(w, b, float(a), tuple(np.asarray(inputs).shape[1:]), tuple(value_range))
