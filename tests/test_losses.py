"""Known answers for every loss of ran_jax.losses, against references written here in
plain numpy loops (not the library's vectorised form), on batches with uneven classes and
the edge cases: a class with one example, a class absent from the batch, a class whose
examples share one attribute value."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from ran_jax import losses

RNG = np.random.default_rng(0)
# 12 examples, 4 classes: class 0 x5, class 1 x4, class 2 x1 (alone), class 3 absent.
LABELS = np.array([0, 1, 0, 2, 1, 0, 1, 0, 1, 0, 0, 1])
# attribute: class 1's examples all share value 2 (nothing to measure inside class 1).
ATTRS = np.array([0, 2, 1, 3, 2, 0, 2, 1, 2, 1, 0, 2])
NUM_CLASSES = 4


def _log_softmax(v):
  v = v - v.max()
  return v - math.log(sum(math.exp(x) for x in v))


def test_cross_entropy_accuracy_and_correct():
  logits = RNG.normal(size=(12, 4))
  logits[3] = [0.0, 0.0, 5.0, 0.0]   # a confident right answer
  logits[0] = [0.0, 7.0, 0.0, 0.0]   # a confident wrong one
  want_ce = np.mean([-_log_softmax(logits[i])[LABELS[i]] for i in range(12)])
  assert float(losses.cross_entropy(jnp.asarray(logits), jnp.asarray(LABELS))) == (
      pytest.approx(want_ce, rel=1e-5))
  want_correct = [float(np.argmax(logits[i]) == LABELS[i]) for i in range(12)]
  np.testing.assert_array_equal(losses.correct(jnp.asarray(logits), jnp.asarray(LABELS)),
                                want_correct)
  assert want_correct[3] == 1.0 and want_correct[0] == 0.0
  assert float(losses.accuracy(jnp.asarray(logits), jnp.asarray(LABELS))) == (
      pytest.approx(np.mean(want_correct)))


def test_task_loss_without_a_teacher_is_the_cross_entropy_whatever_the_weight():
  logits = jnp.asarray(RNG.normal(size=(12, 4)))
  ce = float(losses.cross_entropy(logits, jnp.asarray(LABELS)))
  for weight in (0.0, 0.5, 1.0):
    assert float(losses.task_loss(logits, jnp.asarray(LABELS), None, weight, 2.0)) == ce


@pytest.mark.parametrize("weight,temperature", [(0.3, 1.0), (0.7, 3.0)])
def test_task_loss_with_a_teacher_known_answer(weight, temperature):
  """(1 - w) CE + w T^2 KL(teacher || student), the softmaxes at temperature T, written
  per example here; zero KL when the student is the teacher."""
  logits, teacher = RNG.normal(size=(12, 4)), RNG.normal(size=(12, 4)) * 2
  ce = np.mean([-_log_softmax(logits[i])[LABELS[i]] for i in range(12)])
  kl = np.mean([sum(math.exp(pt) * (pt - ps) for pt, ps in
                    zip(_log_softmax(teacher[i] / temperature),
                        _log_softmax(logits[i] / temperature))) for i in range(12)])
  want = (1 - weight) * ce + weight * temperature ** 2 * kl
  got = float(losses.task_loss(jnp.asarray(logits), jnp.asarray(LABELS), jnp.asarray(teacher),
                               weight, temperature))
  assert kl > 0.05 and got == pytest.approx(want, rel=1e-5)
  same = float(losses.task_loss(jnp.asarray(logits), jnp.asarray(LABELS), jnp.asarray(logits),
                                weight, temperature))
  assert same == pytest.approx((1 - weight) * ce, rel=1e-5)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_squared_error_per_example_and_recon_error(reduction):
  x = RNG.normal(size=(3, 2, 4, 1)).astype(np.float32)
  x_rec = x.copy()
  x_rec[1, 0, 2, 0] += 2.0        # example 1: one value off by 2 -> squared error 4
  x_rec[2] += 0.5                  # example 2: all 8 values off by 0.5 -> 8 * 0.25 = 2
  per = losses.squared_error_per_example(jnp.asarray(x), jnp.asarray(x_rec), reduction)
  want = np.array([0.0, 4.0, 2.0]) / (1.0 if reduction == "sum" else 8.0)
  np.testing.assert_allclose(per, want, rtol=1e-6, atol=1e-7)
  assert float(losses.recon_error(jnp.asarray(x), jnp.asarray(x_rec), reduction)) == (
      pytest.approx(want.mean(), rel=1e-6))
  # bfloat16 inputs are compared in float32
  per16 = losses.squared_error_per_example(jnp.asarray(x, jnp.bfloat16),
                                           jnp.asarray(x, jnp.bfloat16) + 1, reduction)
  assert per16.dtype == jnp.float32
  np.testing.assert_allclose(per16, [8.0 if reduction == "sum" else 1.0] * 3, rtol=1e-2)


def test_recon_metric_names_and_adversarial_objective():
  assert losses.recon_metric_name("sum") == "recon_sse"
  assert losses.recon_metric_name("mean") == "recon_mse"
  assert losses.RECON_REDUCTIONS == ("sum", "mean")
  # O_a = lambda CE - (1 - lambda) MSE (Eq. 4)
  assert losses.adversarial_objective(2.0, 10.0, 0.25) == pytest.approx(0.25 * 2 - 0.75 * 10)
  assert losses.adversarial_objective(2.0, 10.0, 1.0) == pytest.approx(2.0)
  assert losses.adversarial_objective(2.0, 10.0, 0.0) == pytest.approx(-10.0)


def test_within_class_variance_known_answer():
  z = RNG.normal(size=(12, 3, 2)).astype(np.float32)
  flat = z.reshape(12, -1)
  total = 0.0
  for i in range(12):
    mates = flat[LABELS == LABELS[i]]
    total += np.sum((flat[i] - mates.mean(0)) ** 2) / flat.shape[1]
  want = total / 12
  got = float(losses.within_class_variance(jnp.asarray(z), jnp.asarray(LABELS), NUM_CLASSES))
  assert got == pytest.approx(want, rel=1e-5)
  # a feature equal to the class mean costs nothing
  same = np.stack([np.full(6, LABELS[i], np.float32) for i in range(12)])
  assert float(losses.within_class_variance(jnp.asarray(same), jnp.asarray(LABELS), 4)) == 0.0


def _np_entanglement(z, attrs, labels, temperature):
  b, dim = z.shape
  d = np.array([[np.mean((z[i] - z[j]) ** 2) for j in range(b)] for i in range(b)])
  scale = sum(d[i, j] for i in range(b) for j in range(b) if i != j) / (b * (b - 1))
  terms = []
  for i in range(b):
    mates = [j for j in range(b) if j != i and labels[j] == labels[i]]
    if not mates:
      continue
    logits = np.array([-d[i, j] / (temperature * scale) for j in mates])
    w = np.exp(logits - logits.max())
    w /= w.sum()
    p = sum(wj for wj, j in zip(w, mates) if attrs[j] == attrs[i])
    base = sum(attrs[j] == attrs[i] for j in mates) / len(mates)
    terms.append((p - base) ** 2)
  return float(np.mean(terms))


@pytest.mark.parametrize("temperature", [0.1, 1.0])
def test_attribute_entanglement_known_answer(temperature):
  z = RNG.normal(size=(12, 5)).astype(np.float32)
  want = _np_entanglement(z, ATTRS, LABELS, temperature)
  got = float(losses.attribute_entanglement(jnp.asarray(z), jnp.asarray(ATTRS),
                                            jnp.asarray(LABELS), temperature))
  assert got == pytest.approx(want, rel=1e-4, abs=1e-7)
  assert want > 1e-3


def test_attribute_entanglement_is_high_when_neighbours_share_the_attribute():
  """Features that are the attribute: each example's nearest classmates share it (p = 1).
  Class 0 has 6 examples, 3 of each of two values: b = 2/5, (1 - 2/5)^2 each; class 1
  shares one value (p = b = 1) and class 2's only example has no classmate: 6 x 0.36 / 11."""
  z = np.eye(4, dtype=np.float32)[ATTRS] * 3 + 0.01 * RNG.normal(size=(12, 4))
  got = float(losses.attribute_entanglement(jnp.asarray(z, jnp.float32), jnp.asarray(ATTRS),
                                            jnp.asarray(LABELS), 0.1))
  assert got == pytest.approx(_np_entanglement(z, ATTRS, LABELS, 0.1), rel=1e-4)
  assert got == pytest.approx(6 * 0.36 / 11, abs=1e-3)


def _np_conditional_hsic(z, attrs, labels, num_classes, bandwidth):
  b = z.shape[0]
  d = np.array([[np.mean((z[i] - z[j]) ** 2) for j in range(b)] for i in range(b)])
  scale = sum(d[i, j] for i in range(b) for j in range(b) if i != j) / (b * (b - 1))
  num = den = 0.0
  for c in range(num_classes):
    idx = np.flatnonzero(labels == c)
    n = len(idx)
    if n == 0:
      continue
    k = np.exp(-d[np.ix_(idx, idx)] / (bandwidth * scale))
    ell = (attrs[idx][:, None] == attrs[idx][None, :]).astype(float)
    h = np.eye(n) - np.ones((n, n)) / n
    hkh, hlh = h @ k @ h, h @ ell @ h
    if np.sum(hlh * hlh) <= 1e-6:
      continue
    nh = np.sum(hkh * hlh) / math.sqrt(np.sum(hkh * hkh) * np.sum(hlh * hlh))
    num += n * nh
    den += n
  return num / max(den, 1.0)


@pytest.mark.parametrize("bandwidth", [1.0, 0.3])
def test_conditional_hsic_known_answer(bandwidth):
  z = RNG.normal(size=(12, 3)).astype(np.float32)
  want = _np_conditional_hsic(z, ATTRS, LABELS, NUM_CLASSES, bandwidth)
  got = float(losses.conditional_hsic(jnp.asarray(z), jnp.asarray(ATTRS), jnp.asarray(LABELS),
                                      NUM_CLASSES, bandwidth))
  assert got == pytest.approx(want, rel=1e-4, abs=1e-6)
  assert 0.0 < want < 1.0


def test_conditional_hsic_is_one_when_the_features_are_the_attribute():
  # inside class 0 (the only class with two or more attribute values) the kernel is the
  # attribute's own when the features are far-apart attribute codes
  z = np.eye(4, dtype=np.float32)[ATTRS] * 30.0
  got = float(losses.conditional_hsic(jnp.asarray(z), jnp.asarray(ATTRS), jnp.asarray(LABELS),
                                      NUM_CLASSES, 1.0))
  assert got == pytest.approx(1.0, abs=1e-4)
  assert got == pytest.approx(_np_conditional_hsic(z, ATTRS, LABELS, NUM_CLASSES, 1.0), abs=1e-4)


def test_centred_within_class_is_each_class_block_double_centred():
  k = RNG.normal(size=(12, 12)).astype(np.float32)
  k = k + k.T
  onehot = np.eye(NUM_CLASSES, dtype=np.float32)[LABELS]
  got = np.asarray(losses._centred_within_class(jnp.asarray(k), jnp.asarray(onehot)))
  want = np.zeros((12, 12))
  for c in range(NUM_CLASSES):
    idx = np.flatnonzero(LABELS == c)
    if len(idx):
      n = len(idx)
      h = np.eye(n) - np.ones((n, n)) / n
      want[np.ix_(idx, idx)] = h @ k[np.ix_(idx, idx)] @ h
  np.testing.assert_allclose(got, want, atol=1e-4)


def test_confusion_loss_known_answer():
  logits = RNG.normal(size=(6, 5)).astype(np.float32)
  want = np.mean([-np.mean(_log_softmax(row)) for row in logits]) - math.log(5)
  assert float(losses.confusion_loss(jnp.asarray(logits))) == pytest.approx(want, rel=1e-5)
  assert float(losses.confusion_loss(jnp.zeros((3, 5)))) == pytest.approx(0.0, abs=1e-6)
  assert want > 0


# A batch with the edge cases of the per-class terms: class 0 (examples 0-1) has exactly one
# classmate each, with different attribute values; class 1 (examples 2-5) has features all
# equal (a within-class kernel of zeros after centring); class 2 (6-9) is an ordinary class;
# class 3 (10-11) is a pair sharing one attribute value (b = 1 / 1).
EDGE_LABELS = np.array([0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3])
EDGE_ATTRS = np.array([0, 1, 0, 1, 0, 1, 0, 0, 1, 1, 2, 2])


def _edge_features():
  z = RNG.normal(size=(12, 3)).astype(np.float32)
  z[2:6] = z[2]
  return z


def test_entanglement_of_a_class_of_two():
  """An example whose only classmate has another attribute value (p = 0, b = 0 / 1) or the
  same (p = 1, b = 1 / 1)."""
  z = _edge_features()
  want = _np_entanglement(z, EDGE_ATTRS, EDGE_LABELS, 0.5)
  got = float(losses.attribute_entanglement(jnp.asarray(z), jnp.asarray(EDGE_ATTRS),
                                            jnp.asarray(EDGE_LABELS), 0.5))
  assert got == pytest.approx(want, rel=1e-4, abs=1e-7)


def test_conditional_hsic_of_a_class_of_two_and_of_a_constant_class():
  """A class of two with different attribute values counts (its centred kernels' norms are
  below 1); a class whose features are all equal has a zero centred kernel and adds
  nothing: the loss stays finite."""
  z = _edge_features()

  def reference(z):
    b = len(z)
    d = np.array([[np.mean((z[i] - z[j]) ** 2) for j in range(b)] for i in range(b)])
    scale = d[~np.eye(b, dtype=bool)].mean()
    num = den = 0.0
    for c in range(4):
      idx = np.flatnonzero(EDGE_LABELS == c)
      n = len(idx)
      h = np.eye(n) - 1.0 / n
      hkh = h @ np.exp(-d[np.ix_(idx, idx)] / scale) @ h
      hlh = h @ (EDGE_ATTRS[idx][:, None] == EDGE_ATTRS[idx][None, :]).astype(float) @ h
      if np.sum(hlh * hlh) <= 1e-6 or np.sum(hkh * hkh) == 0:
        continue
      num += n * np.sum(hkh * hlh) / math.sqrt(np.sum(hkh * hkh) * np.sum(hlh * hlh))
      den += n
    return num / den

  got = float(losses.conditional_hsic(jnp.asarray(z), jnp.asarray(EDGE_ATTRS),
                                      jnp.asarray(EDGE_LABELS), 4, 1.0))
  assert np.isfinite(got)
  assert got == pytest.approx(reference(z), rel=1e-4)
  # class 0 alone: two examples of two values are perfectly "aligned" (normalised HSIC 1)
  two = float(losses.conditional_hsic(jnp.asarray(z[:2]), jnp.asarray(EDGE_ATTRS[:2]),
                                      jnp.asarray(EDGE_LABELS[:2]), 4, 1.0))
  assert two == pytest.approx(1.0, abs=1e-5)
