"""Every loss and training metric, stated once.

Stages and attackers import these; nothing in the library writes its own
cross-entropy, reconstruction error or accuracy. The benchmark's PyTorch reference
states the same formulas in torch, and tests/test_bench.py checks they agree.

Reconstruction error convention (Eq. 2-4 of the paper): per example, the squared
error *summed* over all input values (`reduction='sum'`, metric name `recon_sse`)
or averaged over them (`'mean'`, metric name `recon_mse`), then averaged over the
batch.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

RECON_REDUCTIONS = ("sum", "mean")


def cross_entropy(logits, labels):
  """Mean softmax cross-entropy over the batch, integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def cross_entropy_per_example(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def correct(logits, labels):
  """[B] 1.0 where the arg-max class is the label."""
  return (jnp.argmax(logits, -1) == labels).astype(jnp.float32)


def accuracy(logits, labels):
  return jnp.mean(correct(logits, labels))


def squared_error_per_example(x, x_rec, reduction: str = "sum"):
  """[B] squared error of each example, summed ('sum') or averaged ('mean') over its values."""
  se = jnp.square(x.astype(jnp.float32) - x_rec.astype(jnp.float32))
  se = se.reshape(se.shape[0], -1)
  return se.sum(-1) if reduction == "sum" else se.mean(-1)


def recon_error(x, x_rec, reduction: str = "sum"):
  """Batch mean of `squared_error_per_example`: the paper's |I - I'|^2."""
  return squared_error_per_example(x, x_rec, reduction).mean()


def recon_metric_name(reduction: str) -> str:
  """'recon_sse' for per-example sums, 'recon_mse' for per-value means."""
  return "recon_sse" if reduction == "sum" else "recon_mse"


def adversarial_objective(ce, recon, lam):
  """O_a = lambda * CE - (1 - lambda) * |I - I'|^2  (Eq. 4)."""
  return lam * ce - (1.0 - lam) * recon


def within_class_variance(z, labels, num_classes: int):
  """Mean over examples of |z_i - mu_{y_i}|^2 / dim, mu_c the batch mean of class c.

  The within-class compactness penalty: features of one class pulled together
  carry less about the particular input than about its label.
  """
  z = z.reshape(z.shape[0], -1).astype(jnp.float32)
  onehot = jnp.eye(num_classes, dtype=jnp.float32)[labels]           # [B, K]
  counts = onehot.sum(0)                                              # [K]
  means = (onehot.T @ z) / jnp.maximum(counts, 1.0)[:, None]          # [K, d]
  return jnp.mean(jnp.square(z - onehot @ means))
