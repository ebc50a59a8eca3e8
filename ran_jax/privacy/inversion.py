"""White-box inversion: an attacker who holds the frozen encoder E solves for the input.

Model inversion against collaborative inference (He et al., 2019): gradient descent on x
through E to explain the release z, started from the best trained decoder's output x0 and
held near it by a learned prior (the decoder, fitted on the attacker's own data):

  x* = argmin_x  mean_f (E(x) - z)^2 / var(z)  +  w * mean_p (x - x0)^2 / s_x^2

(s_x^2 = (hi - lo)^2 / 12, the variance of a uniform input over the value range)

x is kept in the value range by a sigmoid parameterisation. The prior weight w is chosen on
the attacker's validation part (its inputs are known to it) among the budget's grid and
"the decoder alone" (no inversion step), so inversion is never reported worse than the
decoder it starts from. A rounded release (`model.release_step`) has the straight-through
gradient of `ran_jax.stages.round_to_step`.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ran_jax.privacy import metrics

log = logging.getLogger("ran_jax")


@functools.lru_cache(maxsize=None)
def _solver(features: Callable, steps: int, lr: float, lo: float, hi: float):
  tx = optax.adam(lr)

  def run(z, x0, weight, z_scale, x_scale):
    span = hi - lo
    p0 = jnp.clip((x0 - lo) / span, 1e-4, 1 - 1e-4)
    u0 = jnp.log(p0) - jnp.log1p(-p0)

    def loss(u):
      x = lo + span * jax.nn.sigmoid(u)
      data = jnp.mean(jnp.square(features(x) - z).reshape(len(z), -1), -1) / z_scale
      prior = jnp.mean(jnp.square(x - x0).reshape(len(x0), -1), -1) / x_scale
      return jnp.sum(data + weight * prior)

    def step(carry, _):
      u, opt = carry
      g = jax.grad(loss)(u)
      upd, opt = tx.update(g, opt, u)
      return (optax.apply_updates(u, upd), opt), None

    (u, _), _ = jax.lax.scan(step, (u0, tx.init(u0)), None, length=steps)
    return lo + span * jax.nn.sigmoid(u)

  return jax.jit(run)


def invert(features: Callable, z: np.ndarray, x0: np.ndarray, value_range: Sequence[float],
           weight: float, steps: int = 200, lr: float = 0.05, batch: int = 512,
           z_scale: float | None = None, x_scale: float | None = None) -> np.ndarray:
  """Inverts releases z [M, ...] through `features` (JAX, the clean feature map) from x0."""
  lo, hi = (float(v) for v in value_range)
  z_scale = float(z_scale or max(float(np.var(z)), 1e-8))
  x_scale = float(x_scale or (hi - lo) ** 2 / 12.0)
  fn = _solver(features, int(steps), float(lr), lo, hi)
  out = [np.asarray(fn(jnp.asarray(z[s:s + batch]), jnp.asarray(x0[s:s + batch]),
                       float(weight), z_scale, x_scale)) for s in range(0, len(z), batch)]
  return np.concatenate(out).astype(np.float32)


def search_and_invert(features: Callable, z_val: np.ndarray, x0_val: np.ndarray,
                      x_val: np.ndarray, z_test: np.ndarray, x0_test: np.ndarray,
                      value_range: Sequence[float], weights: Sequence[float], steps: int,
                      name: str = "") -> tuple[np.ndarray, dict]:
  """The prior weight chosen on validation (summed squared error against the known inputs;
  'decoder' = x0 itself is a candidate), then the test releases inverted with it.
  Returns (test reconstructions, {'weight', 'val_mse_sum': {candidate: error}})."""
  z_scale = max(float(np.var(z_val)), 1e-8)
  x_scale = (float(value_range[1]) - float(value_range[0])) ** 2 / 12.0
  scores = {"decoder": float(metrics.mse_per_example(x_val, x0_val, "sum").mean())}
  for w in weights:
    rec = invert(features, z_val, x0_val, value_range, w, steps, z_scale=z_scale,
                 x_scale=x_scale)
    scores[f"{float(w):g}"] = float(metrics.mse_per_example(x_val, rec, "sum").mean())
  best = min(scores, key=scores.get)
  log.info("%s: inversion on validation %s -> %s", name,
           " ".join(f"{k}:{v:.4g}" for k, v in scores.items()), best)
  if best == "decoder":
    return x0_test.astype(np.float32), {"weight": None, "val_mse_sum": scores}
  rec = invert(features, z_test, x0_test, value_range, float(best), steps, z_scale=z_scale,
               x_scale=x_scale)
  return rec, {"weight": float(best), "val_mse_sum": scores}
