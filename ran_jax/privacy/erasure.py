"""Linear erasure of a sensitive attribute from the encoder's features (LEACE).

LEACE (Belrose et al., "LEACE: Perfect linear concept erasure in closed form", NeurIPS
2023): given features X [N, D] and the attribute one-hot Z [N, k], the eraser

  r(x) = x - W^+ P W (x - mu),   W = Sigma_XX^{-1/2},   P = projector on col(W Sigma_XZ)

makes the cross-covariance of r(X) with Z zero, so no linear classifier reads the attribute
from r(X) better than a constant does, and it is the smallest such change of X (in any
norm E||r(X) - X||_M^2). W is a pseudo-inverse square root: directions whose variance is
below `floor` times the largest are left alone. It is one affine map x -> A x + b with
A = I - W^+ P W and b = W^+ P W mu, fitted in closed form (numpy, float64).

Class-conditional (`within_class=True`, the default): the covariances are those of X and Z
with each class's mean removed from both (pooled within-class), so the map erases the
directions along which the attribute varies *within* a class, and the covariance of the
class means with the attribute (what the task label itself says about the person, the
label-only floor) is left as it is. The result is still one map, applied without the label.

Folding (`ran_jax.export`): the eraser acts on the encoder's clean (bounded) features,
before the release noise, released = r(features) + noise; `Trained.features` and
`Trained.encode` include it, and so does the phone's `.tflite` (`ran_jax.deploy.convert`).
The server's classifier is refit on the erased releases (`refit_classifier`, encoder
frozen). `WORKDIR/export/eraser.npz` holds the map, the refit classifier and the fit's
description; `eraser.json` beside it is the report of `ran-erase` (`ran_jax.erase`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger("ran_jax")

ERASER_FILE = "eraser.npz"
ERASER_REPORT = "eraser.json"
FORMAT = 1
MAX_DIM = 16384          # D x D matrices: larger feature maps need a bottleneck first
CLASSIFIER_PREFIX = "classifier/"


class EraserError(ValueError):
  """An eraser file that cannot be read or does not fit the networks it is loaded with."""


@dataclasses.dataclass(frozen=True, eq=False)
class Eraser:
  """The affine map x -> matrix @ x + bias on flattened features (float64).

  rank: the number of directions removed; fitted_on: how it was fitted (attribute,
  within_class, split rule, fraction, seed, examples, export step, ...).
  """

  matrix: np.ndarray   # [D, D]
  bias: np.ndarray     # [D]
  rank: int
  fitted_on: dict = dataclasses.field(default_factory=dict)

  @property
  def dim(self) -> int:
    return int(self.bias.shape[0])

  def _flat_dims(self, shape) -> int:
    """How many trailing dims of `shape` hold one feature vector of size D."""
    size = 1
    for n, d in enumerate(reversed(shape), start=1):
      size *= int(d)
      if size == self.dim:
        return n
      if size > self.dim:
        break
    raise EraserError(f"features of shape {tuple(shape)} do not end in {self.dim} values, "
                      f"the size the eraser was fitted on")

  def apply(self, z):
    """Features [..., *feature_shape] (any leading shape) -> erased, same shape and dtype.

    numpy in, numpy out (computed in float64); anything else (jax arrays, tracers) through
    jax.numpy in the features' dtype, so it folds into a jitted or exported network.
    """
    n = self._flat_dims(z.shape)
    lead = tuple(z.shape[:len(z.shape) - n])
    if isinstance(z, np.ndarray):
      flat = z.reshape((-1, self.dim)).astype(np.float64)
      return (flat @ self.matrix.T + self.bias).reshape(z.shape).astype(z.dtype)
    flat = jnp.reshape(z, (math.prod(lead), self.dim))
    out = flat @ jnp.asarray(self.matrix.T, z.dtype) + jnp.asarray(self.bias, z.dtype)
    return jnp.reshape(out, z.shape)


# ---------------------------------------------------------------- the fit


def one_hot(values, num_values: Optional[int] = None) -> np.ndarray:
  """int ids [N] -> [N, k] float64 one-hot (k = num_values or max + 1)."""
  values = np.asarray(values, np.int64)
  k = int(num_values if num_values is not None else values.max() + 1)
  return np.eye(k, dtype=np.float64)[values]


def _centred(x: np.ndarray, labels: Optional[np.ndarray]) -> np.ndarray:
  """x minus its mean, or (labels given) minus the mean of each example's class."""
  if labels is None:
    return x - x.mean(0)
  out = np.empty_like(x)
  for c in np.unique(labels):
    m = labels == c
    out[m] = x[m] - x[m].mean(0)
  return out


def _as_matrix(x) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x.reshape(len(x), -1)


def fit_eraser(x, attribute, labels=None, *, num_values: Optional[int] = None,
               within_class: bool = True, floor: float = 1e-8,
               fitted_on: Optional[dict] = None) -> Eraser:
  """The LEACE eraser of `attribute` from features `x` (module docstring).

  Args:
    x: [N, ...] features (flattened to [N, D]).
    attribute: [N] int ids, or an [N, k] one-hot / real-valued matrix.
    labels: [N] task classes; needed for `within_class`.
    num_values: k for int ids (default: max id + 1).
    within_class: fit on class-centred X and Z (keeps the between-class covariance).
    floor: eigenvalues of Sigma_XX below floor * the largest count as zero (pseudo-inverse);
      singular values of W Sigma_XZ below floor * the largest likewise.
    fitted_on: a description stored with the eraser (JSON-able).
  """
  x = _as_matrix(x)
  n, d = x.shape
  if d > MAX_DIM:
    raise ValueError(f"features of {d} values: an eraser is a {d} x {d} matrix; erase a "
                     f"bottleneck of at most {MAX_DIM} values (model.bottleneck_dim).")
  z = np.asarray(attribute)
  z = one_hot(z, num_values) if z.ndim == 1 else z.astype(np.float64).reshape(n, -1)
  if len(z) != n:
    raise ValueError(f"{n} feature rows but {len(z)} attribute rows")
  if within_class:
    if labels is None:
      raise ValueError("within_class erasure needs the task labels of the fit examples")
    labels = np.asarray(labels).reshape(-1)
  group = labels if within_class else None
  xc, zc = _centred(x, group), _centred(z, group)
  sigma_xx = xc.T @ xc / n                  # [D, D]
  sigma_xz = xc.T @ zc / n                  # [D, k]
  lam, vecs = np.linalg.eigh(sigma_xx)
  keep = lam > floor * max(float(lam.max()), 0.0)
  v, lam = vecs[:, keep], lam[keep]
  whiten = (v / np.sqrt(lam)) @ v.T         # W = Sigma^{-1/2} on its support
  unwhiten = (v * np.sqrt(lam)) @ v.T       # W^+
  u, s, _ = np.linalg.svd(whiten @ sigma_xz, full_matrices=False)
  rank = int(np.sum(s > floor * s.max())) if s.size and s.max() > 0 else 0
  u = u[:, :rank]
  erase = unwhiten @ (u @ u.T) @ whiten     # W^+ P W
  mu = x.mean(0)
  info = {"within_class": bool(within_class), "examples": int(n), "dim": int(d),
          "num_values": int(z.shape[1]), "rank": rank, "floor": float(floor),
          "whitened_dims": int(keep.sum()), **(fitted_on or {})}
  return Eraser(np.eye(d) - erase, erase @ mu, rank, info)


def cross_covariance(x, attribute, labels=None, num_values: Optional[int] = None) -> np.ndarray:
  """Cov(X, Z) [D, k] of features and the attribute (one-hot for ids); with `labels`, the
  pooled within-class one (each class's mean removed from both)."""
  x = _as_matrix(x)
  z = np.asarray(attribute)
  z = one_hot(z, num_values) if z.ndim == 1 else z.astype(np.float64).reshape(len(x), -1)
  g = None if labels is None else np.asarray(labels).reshape(-1)
  return _centred(x, g).T @ _centred(z, g) / len(x)


def residual_cross_covariance(eraser: Eraser, x, attribute, labels=None) -> float:
  """The largest |entry| of the cross-covariance of the erased `x` with the attribute,
  relative to the largest before erasure (0: all linear information gone). For a
  within-class eraser pass `labels` (it zeroes the within-class cross-covariance)."""
  k = eraser.fitted_on.get("num_values")
  before = np.abs(cross_covariance(x, attribute, labels, k)).max()
  after = np.abs(cross_covariance(eraser.apply(_as_matrix(x)), attribute, labels, k)).max()
  return float(after / before) if before > 0 else float(after)


# ---------------------------------------------------------------- the file


def _tree_paths(tree) -> dict:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}


def save_eraser(path, eraser: Eraser, classifier_params=None) -> None:
  """Writes `eraser` (and the classifier refit on its releases) to `path` (an .npz; local or
  gs://, written whole: `ran_jax.storage.write_bytes`). `path` may be an etils/epath path."""
  from ran_jax import storage

  arrays = {"format": np.asarray(FORMAT), "matrix": eraser.matrix, "bias": eraser.bias,
            "rank": np.asarray(eraser.rank),
            "fitted_on": np.asarray(json.dumps(eraser.fitted_on, sort_keys=True))}
  if classifier_params is not None:
    arrays.update({CLASSIFIER_PREFIX + k: v for k, v in _tree_paths(classifier_params).items()})
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  storage.write_bytes(path, buf.getvalue())


def load_eraser(path, dim: Optional[int] = None, classifier_template=None):
  """Reads an eraser file -> (Eraser, classifier params or None).

  `dim`: the feature size it must fit; `classifier_template`: a pytree with the
  classifier's structure and shapes, filled from the file (it must hold every leaf).
  Raises EraserError, naming the file, when it is unreadable or does not fit.
  """
  from etils import epath

  path = epath.Path(path)
  try:
    with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
    fitted_on = json.loads(str(arrays["fitted_on"]))
    matrix = np.asarray(arrays["matrix"], np.float64)
    bias = np.asarray(arrays["bias"], np.float64)
    rank = int(arrays["rank"])
    fmt = int(arrays["format"])
  except Exception as e:  # noqa: BLE001 - any read failure: name the file and why
    raise EraserError(f"Cannot read the eraser {path}: {type(e).__name__}: {str(e)[:200]}. "
                      "Delete it (the encoder then releases unerased features) or write it "
                      "again with ran-erase.") from None
  if fmt != FORMAT:
    raise EraserError(f"The eraser {path} has format {fmt}; this version reads {FORMAT}.")
  d = bias.shape[0] if bias.ndim == 1 else -1
  if matrix.shape != (d, d) or (dim is not None and d != dim):
    raise EraserError(f"The eraser {path} does not fit these features: matrix {matrix.shape}, "
                      f"bias {bias.shape}" + (f", features of {dim} values" if dim else "")
                      + ". It was fitted on another encoder; write it again with ran-erase.")
  if not (np.all(np.isfinite(matrix)) and np.all(np.isfinite(bias))):
    raise EraserError(f"The eraser {path} holds non-finite values; write it again with "
                      "ran-erase.")
  classifier = None
  if classifier_template is not None:
    stored = {k[len(CLASSIFIER_PREFIX):]: v for k, v in arrays.items()
              if k.startswith(CLASSIFIER_PREFIX)}
    want = _tree_paths(jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), classifier_template))
    bad = [k for k, v in want.items() if k not in stored or stored[k].shape != v.shape]
    if bad:
      raise EraserError(f"The eraser {path} holds no classifier that fits this model (missing "
                        f"or misshapen: {bad[:4]}); write it again with ran-erase.")
    leaves, treedef = jax.tree_util.tree_flatten_with_path(classifier_template)
    classifier = jax.tree_util.tree_unflatten(
        treedef, [jnp.asarray(stored[jax.tree_util.keystr(p)], leaf.dtype) for p, leaf in leaves])
  return Eraser(matrix, bias, rank, fitted_on), classifier


# ---------------------------------------------------------------- the server's classifier

TRAINED = "trained"   # eraser=TRAINED: the eraser `trained` carries (None: no eraser)


def _features_fn(trained, eraser):
  """x -> the frozen encoder's clean features, erased by `eraser` (TRAINED: trained's)."""
  from ran_jax import stages

  eraser = getattr(trained, "eraser", None) if eraser is TRAINED else eraser
  base = jax.jit(lambda xb: stages.features(trained.models, trained.params["encoder"],
                                            trained.batch_stats["encoder"], xb, False)[0])
  return base if eraser is None else jax.jit(lambda xb: eraser.apply(base(xb)))


def clean_features(trained, x, *, eraser=TRAINED, batch: int = 512) -> np.ndarray:
  """The frozen encoder's clean features of `x` (numpy), erased by `eraser`."""
  feats = _features_fn(trained, eraser)
  return np.concatenate([np.asarray(feats(x[s:s + batch])) for s in range(0, len(x), batch)])


def refit_classifier(trained, x, labels, *, eraser=TRAINED, epochs: int = 5,
                     batch_size: int = 128, learning_rate: float = 1e-3, seed: int = 0,
                     encode_batch: int = 512):
  """The server's classifier refit on releases of `x` (training data), the encoder frozen:
  `eraser` (TRAINED: the one `trained` carries; None: none) on the clean features, fresh
  release noise on every batch, `epochs` passes of Adam starting from `trained`'s
  classifier. A fixed schedule: nothing is chosen on held-out data. Returns its params."""
  import optax

  from ran_jax import stages

  z = clean_features(trained, x, eraser=eraser, batch=encode_batch)
  labels = np.asarray(labels, np.int32)
  models = trained.models
  tx = optax.adam(learning_rate)
  params = trained.params["classifier"]
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, zb, yb, key):
    k_noise, k_drop = jax.random.split(key)

    def loss_fn(p):
      logits = stages.classify(models, p, stages.release(models, zb, k_noise), True, k_drop)
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  key = jax.random.PRNGKey(seed)
  for epoch in range(int(epochs)):
    perm = rng.permutation(len(z))
    losses = []
    for i, s in enumerate(range(0, len(z), batch_size)):
      b = perm[s:s + batch_size]
      params, opt_state, loss = step(params, opt_state, z[b], labels[b],
                                     jax.random.fold_in(key, epoch * 100003 + i))
      losses.append(loss)
    log.info("erase: classifier refit, epoch %d: loss %.4f", epoch + 1,
             float(np.mean(jax.device_get(losses))))
  return params


def accuracy(trained, x, labels, *, classifier_params=None, eraser=TRAINED, seed: int = 0,
             batch: int = 512) -> float:
  """Top-1 of a classifier (default `trained`'s) on releases of `x` (noise keys from
  `seed`), `eraser` (TRAINED: `trained`'s; None: none) on the clean features."""
  from ran_jax import stages

  params = trained.params["classifier"] if classifier_params is None else classifier_params
  z = clean_features(trained, x, eraser=eraser, batch=batch)
  classify = jax.jit(lambda p, zb, key: stages.classify(
      trained.models, p, stages.release(trained.models, zb, key), False))
  key = jax.random.PRNGKey(seed)
  correct = 0
  for s in range(0, len(z), batch):
    logits = classify(params, z[s:s + batch], jax.random.fold_in(key, s))
    correct += int(np.sum(np.asarray(logits).argmax(-1) == np.asarray(labels[s:s + batch])))
  return correct / max(len(z), 1)
