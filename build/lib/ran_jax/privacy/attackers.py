"""Attackers that reconstruct inputs from frozen features, and a retrained classifier.

Every neural model here is trained from scratch on (features, target) pairs of
the training split with Adam and *early stopping*: a validation part of the
training split is scored after every epoch, training stops when it has not
improved for `patience` epochs, the learning rate is cut (x `lr_decay_factor`,
at most `lr_decays` times) and training goes on from there; once no cut is left a
plateau ends it (or `max_epochs` does), and the best epoch's weights are kept.
The cuts let an attacker settle into its minimum instead of hovering above it at
a fixed step size. An under-trained attacker overstates privacy.

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
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ran_jax import losses
from ran_jax.models import MLPDecoder  # noqa: F401 - an attacker family, re-exported
from ran_jax.models.modules import FastConv, resolve_conv_impl

log = logging.getLogger("ran_jax")

NOISE_KINDS = ("laplace", "gaussian")


@dataclasses.dataclass
class FitConfig:
  """Schedule of one early-stopped fit."""

  batch_size: int = 128
  learning_rate: float = 1e-3
  max_epochs: int = 50
  patience: int = 3
  min_delta: float = 1e-4     # relative improvement that counts
  lr_decays: int = 2          # learning-rate cuts on plateaus before stopping
  lr_decay_factor: float = 0.2
  seed: int = 0


class ResNetDecoder(nn.Module):
  """A deep conv decoder with residual up-sampling blocks, the highest-capacity attacker.

  Features -> Dense to a coarse grid (the input's size / 4 on every axis longer
  than 1) with `width` channels -> per stage: nearest up-sampling x2, a 3x3 conv
  halving the channels, and `blocks` residual blocks (conv-BN-ReLU-conv-BN + skip)
  -> a 3x3 conv to the input's channels, cropped to its size, sigmoid into the
  value range. No part of it is used in RAN training.
  """

  output_shape: tuple
  value_range: tuple = (0.0, 1.0)
  width: int = 64
  blocks: int = 1
  stages: int = 2

  @nn.compact
  def __call__(self, z, train: bool = False):
    # The CPU fast convolutions (same parameters as nn.Conv) where they are faster.
    conv = FastConv if resolve_conv_impl("auto") == "fast" else nn.Conv
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


def fit(module: nn.Module, loss: Callable, inputs: np.ndarray, targets: np.ndarray,
        val_inputs: np.ndarray, val_targets: np.ndarray, cfg: FitConfig,
        input_noise: float = 0.0, noise_kind: str = "laplace", name: str = "model") -> Fitted:
  """Trains `module` from scratch to minimise `loss` with early stopping on the val part.

  input_noise > 0 adds fresh noise of that scale ('laplace' or 'gaussian' std) to
  every training batch: the attacker of a noisy release, who holds the encoder,
  draws new noise each time (the validation inputs carry their own fixed noise).
  """
  if noise_kind not in NOISE_KINDS:
    raise ValueError(f"noise_kind must be one of {NOISE_KINDS}, got {noise_kind!r}.")
  t0 = time.perf_counter()
  rng = jax.random.PRNGKey(cfg.seed)
  rng, k_init = jax.random.split(rng)
  variables = module.init(k_init, jnp.asarray(inputs[:2]), train=False)
  params = variables["params"]
  stats = variables.get("batch_stats", {})
  tx = optax.inject_hyperparams(optax.adam)(learning_rate=cfg.learning_rate)
  opt = tx.init(params)

  def train_step(params, stats, opt, xb, tb, key):
    k_noise, k_drop = jax.random.split(key)
    if input_noise > 0:
      draw = jax.random.laplace if noise_kind == "laplace" else jax.random.normal
      xb = xb + input_noise * draw(k_noise, xb.shape, xb.dtype)

    def lf(p):
      v = {"params": p, **({"batch_stats": stats} if stats else {})}
      out, upd = module.apply(v, xb, train=True, mutable=["batch_stats"], rngs={"dropout": k_drop})
      return loss(out, tb), upd.get("batch_stats", stats)

    (value, new_stats), g = jax.value_and_grad(lf, has_aux=True)(params)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), new_stats, opt, value

  train_step = jax.jit(train_step, donate_argnums=(0, 1, 2))

  def val_sum(params, stats, xb, tb):
    v = {"params": params, **({"batch_stats": stats} if stats else {})}
    return loss(module.apply(v, xb, train=False), tb) * xb.shape[0]

  val_sum = jax.jit(val_sum)

  def validate(params, stats):
    tot, bs = 0.0, 1024
    for s in range(0, len(val_inputs), bs):
      tot += float(val_sum(params, stats, jnp.asarray(val_inputs[s:s + bs]),
                           jnp.asarray(val_targets[s:s + bs])))
    return tot / len(val_inputs)

  n = len(inputs)
  bs = min(cfg.batch_size, n)
  steps = n // bs
  order_rng = np.random.default_rng(cfg.seed)
  best = (np.inf, 0, jax.device_get((params, stats)))
  since, epoch, lr, cuts, converged = 0, 0, cfg.learning_rate, 0, False
  for epoch in range(1, cfg.max_epochs + 1):
    order = order_rng.permutation(n)
    for i in range(steps):
      idx = order[i * bs:(i + 1) * bs]
      rng, key = jax.random.split(rng)
      params, stats, opt, _ = train_step(params, stats, opt, jnp.asarray(inputs[idx]),
                                         jnp.asarray(targets[idx]), key)
    v = validate(params, stats)
    if not np.isfinite(v):
      log.warning("%s: non-finite validation loss at epoch %d; keeping epoch %d", name, epoch,
                  best[1])
      break
    if v < best[0] * (1 - cfg.min_delta):
      best, since = (v, epoch, jax.device_get((params, stats))), 0
    else:
      since += 1
    if since >= cfg.patience:
      if cuts >= cfg.lr_decays:
        converged = True
        break
      cuts, since, lr = cuts + 1, 0, lr * cfg.lr_decay_factor
      opt.hyperparams["learning_rate"] = jnp.asarray(lr, opt.hyperparams["learning_rate"].dtype)
  p, s = best[2]
  variables = {"params": p, **({"batch_stats": s} if s else {})}
  dt = time.perf_counter() - t0
  log.info("%s: %d epochs (best %d, val loss %.5g, %d lr cuts, %s), %.1fs", name, epoch,
           best[1], best[0], cuts, "converged" if converged else "NOT converged: epoch cap", dt)
  return Fitted(module, variables, epoch, best[1], float(best[0]), dt, cuts, converged)


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
