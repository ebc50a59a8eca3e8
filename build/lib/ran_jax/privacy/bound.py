"""An attacker-independent lower bound on reconstruction error for noisy releases.

For a release z = f(x) + N(0, sigma^2 I) (f the encoder's clean, bounded features,
eval mode), the Fisher information of z about x is J^T J / sigma^2, J = df/dx.
By the Cramer-Rao bound every *unbiased* estimator x_hat(z) has
E|x_hat - x|^2 >= tr((J^T J)^-1) sigma^2 >= d^2 sigma^2 / tr(J^T J) (d = input
values), so its per-value MSE is at least sigma^2 d / tr(J^T J); averaged over
inputs (Jensen) at least sigma^2 d / E_x[tr(J^T J)]. This is the dFIL bound
(Maeng et al., NeurIPS 2023) in the issue's form.

tr(J^T J) = tr(J J^T) = E_u |J^T u|^2 for Rademacher probes u in feature space
(Hutchinson), one reverse-mode product (VJP) per probe, averaged over the given
inputs. (Reverse mode because the CPU fast path's max-pool has a custom VJP.)

What it does and does not say: it holds for every unbiased attacker whatever its
architecture, but attackers that use a prior (every trained decoder: they are
biased towards the training images) can go below it. It is a floor for the
unbiased case, reported beside the empirical worst case, never instead of it.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def jacobian_trace(fn: Callable, x, key, num_probes: int = 16, batch: int = 256) -> np.ndarray:
  """[N] Hutchinson estimates of tr(J(x_i)^T J(x_i)) of fn at each row of x.

  `fn` maps a batch [B, ...] to features [B, ...] example-wise (no cross-example
  terms: eval-mode batch-norm), so one batched VJP gives every example's J^T u.
  """

  @jax.jit
  def probe_sq(xb, k):
    z, vjp = jax.vjp(fn, xb)
    u = jax.random.rademacher(k, z.shape, jnp.float32).astype(z.dtype)
    (jtu,) = vjp(u)                                   # [B, ...]: each example's J^T u
    return jnp.sum(jnp.square(jtu.reshape(jtu.shape[0], -1).astype(jnp.float32)), axis=-1)

  x = np.asarray(x, np.float32)
  out = []
  for s in range(0, len(x), batch):
    xb = jnp.asarray(x[s:s + batch])
    acc = jnp.zeros((len(xb),), jnp.float32)
    for p in range(num_probes):
      acc = acc + probe_sq(xb, jax.random.fold_in(jax.random.fold_in(key, s), p))
    out.append(np.asarray(acc / num_probes))
  return np.concatenate(out)


def fisher_mse_bound(fn: Callable, x, sigma: float, key=None, num_probes: int = 16) -> dict:
  """The per-value and per-example-sum MSE floor for unbiased attackers of fn(x) + noise.

  Returns {'mse_mean', 'mse_sum', 'trace_jtj', 'num_probes', 'n'}; with sigma = 0
  (a noiseless release) the bound is 0: nothing stops exact inversion.
  """
  key = jax.random.PRNGKey(0) if key is None else key
  x = np.asarray(x, np.float32)
  d = int(np.prod(x.shape[1:]))
  traces = jacobian_trace(fn, x, key, num_probes)
  mean_trace = float(np.mean(traces))
  if sigma <= 0:
    per_value = 0.0
  else:
    per_value = float(sigma) ** 2 * d / max(mean_trace, 1e-30)
  return {"mse_mean": per_value, "mse_sum": per_value * d, "trace_jtj": mean_trace,
          "num_probes": int(num_probes), "n": int(len(x))}
