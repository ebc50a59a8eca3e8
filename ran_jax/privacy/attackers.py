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

log = logging.getLogger("ran_jax")


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


class MLPDecoder(nn.Module):
  """A larger fully-connected decoder: [B, ...] features -> [B, H, W, C] in value_range."""

  output_shape: tuple
  hidden: tuple = (1024, 1024)
  value_range: tuple = (0.0, 1.0)

  @nn.compact
  def __call__(self, z, train: bool = False):
    del train
    z = z.reshape((z.shape[0], -1)).astype(jnp.float32)
    for i, w in enumerate(self.hidden, start=1):
      z = nn.relu(nn.Dense(w, name=f"fc{i}")(z))
    out = nn.Dense(int(np.prod(self.output_shape)), name="out")(z)
    lo, hi = self.value_range
    return (lo + (hi - lo) * nn.sigmoid(out)).reshape((-1,) + tuple(self.output_shape))


class EncoderClassifier(nn.Module):
  """Encoder followed by classifier as one network (Noisy baseline's standard model)."""

  encoder: nn.Module
  classifier: nn.Module

  @nn.compact
  def __call__(self, x, train: bool = False):
    return self.classifier(self.encoder(x, train=train), train=train)


# ---------------------------------------------------------------- losses


def recon_loss(pred, target):
  """Per example summed squared error, averaged over the batch (the paper's convention)."""
  se = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
  return se.reshape(se.shape[0], -1).sum(-1).mean()


def ce_loss(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


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
        input_noise: float = 0.0, name: str = "model") -> Fitted:
  """Trains `module` from scratch to minimise `loss` with early stopping on the val part.

  input_noise > 0 adds fresh Laplace noise of that scale to every training batch
  (the validation inputs are expected to carry their own fixed noise).
  """
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
      xb = xb + input_noise * jax.random.laplace(k_noise, xb.shape, xb.dtype)

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
