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

import jax
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


def attribute_entanglement(zs, attributes, labels, temperature: float = 0.1):
  """How far each example's soft nearest neighbours of its class over-share its attribute.

  zs: features [B, D], standardised over the batch; attributes, labels: int ids [B].
  Example i weighs every other example j *of its own class* by
  softmax_j(-d_ij / (temperature x mean d)), d the mean squared difference per feature, so
  the weights follow its nearest same-class neighbours (the mean distance carries no
  gradient: shrinking every feature does not help). p_i is the weight on examples of i's
  own attribute, b_i the share of those among i's classmates in the batch. The loss is
  the mean of (p_i - b_i)^2 over examples with a classmate, in [0, 1] (a KL divergence
  here is unbounded as p_i -> 1 and its gradient swamped the task's): zero exactly when the
  neighbourhoods inside a class are no likelier than the class to share the attribute,
  which is what a kNN attacker reads. It is the soft nearest-neighbour loss of Frosst et
  al. 2019, pushed to its chance value rather than maximised (so "far" does not become a
  sign of "same") and kept inside each class (across classes it would pull the classes
  together and cost the task its accuracy).
  """
  zs = zs.reshape(zs.shape[0], -1).astype(jnp.float32)
  b_size, dim = zs.shape
  sq = jnp.sum(zs * zs, axis=1)
  d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * zs @ zs.T, 0.0) / dim
  eye = jnp.eye(b_size, dtype=bool)
  mates = jnp.logical_and(labels[:, None] == labels[None, :], ~eye)
  scale = jax.lax.stop_gradient(jnp.sum(jnp.where(eye, 0.0, d2)) / (b_size * (b_size - 1)))
  logits = jnp.where(mates, -d2 / (temperature * scale + 1e-12), -jnp.inf)
  has = jnp.any(mates, axis=1)
  w = jax.nn.softmax(jnp.where(has[:, None], logits, 0.0), axis=1)
  same = jnp.logical_and(attributes[:, None] == attributes[None, :], mates)
  p = jnp.sum(jnp.where(same, w, 0.0), axis=1)
  b = jnp.sum(same, axis=1) / jnp.maximum(jnp.sum(mates, axis=1), 1)
  return jnp.sum(jnp.where(has, jnp.square(p - b), 0.0)) / jnp.maximum(jnp.sum(has), 1)


def confusion_loss(logits):
  """Cross-entropy of the predicted distribution to the uniform one, minus its minimum.

  mean_b [ -1/C sum_c log p_c(b) ] - log C >= 0, zero exactly when every prediction is
  uniform: the attribute game pushes the encoder towards features from which a head
  cannot tell the attribute, instead of towards fooling it (a negated cross-entropy is
  unbounded and rewards confidently wrong heads, which a retrained attacker undoes).
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.mean(logp) - jnp.log(jnp.float32(logits.shape[-1]))
