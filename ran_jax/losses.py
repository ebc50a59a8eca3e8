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


def task_loss(logits, labels, teacher_logits=None, weight: float = 0.0,
              temperature: float = 1.0):
  """The classifier's loss: the cross-entropy, or with a teacher (distillation, Hinton et
  al. 2015) (1 - weight) CE + weight T^2 KL(softmax(teacher / T) || softmax(logits / T)),
  batch means. KL is zero when the student's softened predictions equal the teacher's."""
  ce = cross_entropy(logits, labels)
  if teacher_logits is None or not weight:
    return ce
  t = float(temperature)
  p = jax.nn.softmax(teacher_logits / t, axis=-1)
  kl = jnp.sum(p * (jax.nn.log_softmax(teacher_logits / t, axis=-1)
                    - jax.nn.log_softmax(logits / t, axis=-1)), axis=-1).mean()
  return (1.0 - weight) * ce + weight * t * t * kl


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


def _centred_within_class(k, onehot):
  """Each class's block of kernel k [B, B], double-centred inside the class (H_c K H_c);
  zero between classes. onehot: [B, C] class membership."""
  counts = jnp.maximum(onehot.sum(0), 1.0)                           # [C]
  own = onehot / counts                                               # [B, C]
  row = jnp.sum((k @ own) * onehot, axis=1)                           # [B] mean over own class
  grand = jnp.einsum("ic,ij,jc->c", own, k, own)                      # [C]
  same = onehot @ onehot.T                                            # [B, B] 1 if same class
  return same * (k - row[:, None] - row[None, :] + (onehot @ grand)[:, None])


def conditional_hsic(zs, attributes, labels, num_classes: int, bandwidth: float = 1.0,
                     eps: float = 1e-12):
  """Normalised HSIC between features and attribute inside each class, averaged over classes.

  zs: features [B, D], standardised over the batch; attributes, labels: int ids [B].
  Inside class c (its n_c examples in the batch), with the Gaussian kernel
  K_ij = exp(-d_ij / (bandwidth x mean d)) on the features (d the mean squared difference per
  feature; the mean distance carries no gradient) and the delta kernel L_ij = [a_i = a_j]
  on the attribute, both centred in the class (H K H):
    nHSIC_c = <HKH, HLH> / (|HKH| |HLH|)   in [0, 1]
  (the kernel alignment of Gretton et al.'s HSIC, also called CKA): zero when the features'
  similarities inside the class carry nothing about who shares the attribute, one when
  they are the attribute's (a finite batch gives independent features a small positive
  value, the estimator's bias: about 0.16 for two classes of 32 examples of 4 values in 8
  dimensions). The loss weighs each class by its examples; a class with
  fewer than two attribute values in the batch adds nothing (its HLH carries no
  dependence to measure). A dependence penalty without an adversary: nothing to game,
  nonlinear through the kernel. It needs several examples of one (class, attribute) in a
  batch to see anything: with 64 examples of 6 HAR activities from 30 volunteers few
  pairs share both, so larger batches make it stronger.
  """
  zs = zs.reshape(zs.shape[0], -1).astype(jnp.float32)
  b_size, dim = zs.shape
  sq = jnp.sum(zs * zs, axis=1)
  d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * zs @ zs.T, 0.0) / dim
  eye = jnp.eye(b_size, dtype=jnp.float32)
  scale = jax.lax.stop_gradient(jnp.sum(d2 * (1.0 - eye)) / (b_size * (b_size - 1)))
  k = jnp.exp(-d2 / (bandwidth * scale + eps))
  ell = (attributes[:, None] == attributes[None, :]).astype(jnp.float32)
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)    # [B, C]
  kc = _centred_within_class(k, onehot)
  lc = _centred_within_class(ell, onehot)
  kl = jnp.einsum("ij,ij,ic->c", kc, lc, onehot)                      # per class <HKH, HLH>
  kk = jnp.einsum("ij,ij,ic->c", kc, kc, onehot)
  ll = jnp.einsum("ij,ij,ic->c", lc, lc, onehot)
  ok = (ll > 1e-6) & (kk > 0)
  nhsic = jnp.where(ok, kl / jnp.sqrt(jnp.where(ok, kk * ll, 1.0)), 0.0)
  weight = onehot.sum(0) * ok
  return jnp.sum(weight * nhsic) / jnp.maximum(jnp.sum(weight), 1.0)


def confusion_loss(logits):
  """Cross-entropy of the predicted distribution to the uniform one, minus its minimum.

  mean_b [ -1/C sum_c log p_c(b) ] - log C >= 0, zero exactly when every prediction is
  uniform: the attribute game pushes the encoder towards features from which a head
  cannot tell the attribute, instead of towards fooling it (a negated cross-entropy is
  unbounded and rewards confidently wrong heads, which a retrained attacker undoes).
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.mean(logp) - jnp.log(jnp.float32(logits.shape[-1]))
