"""One evaluation of one frozen feature map: utility, attackers, worst case.

`attack_features` is shared by RAN, DNN, DNN(resized) and Noisy so that every
method goes through the same attackers, the same data and the same metrics.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Optional, Sequence

import flax.linen as nn
import numpy as np

from ran_jax import losses
from ran_jax.privacy import attackers as atk
from ran_jax.privacy import metrics

log = logging.getLogger("ran_jax")

ATTACKERS = ("mirrored_decoder", "mlp_decoder", "resnet_decoder", "ridge")
# Every attacker name that may appear in results (fixed CSV schema):
#   own_decoder  the decoder trained with the encoder (RAN's D; none for Noisy)
#   identity     the released data itself taken as the reconstruction (Noisy: |I - noisy I|^2)
ALL_ATTACKERS = ("own_decoder", "mirrored_decoder", "mlp_decoder", "resnet_decoder", "ridge",
                 "identity")
TRAINED_ATTACKERS = ("mirrored_decoder", "mlp_decoder", "resnet_decoder")
METRICS = ("mse_sum", "mse_mean", "psnr", "ssim")


@dataclasses.dataclass
class AttackConfig:
  """How attackers and the retrained classifier are trained and scored."""

  attack_train_limit: int = 0      # >0: first N training examples for all fits (0: all)
  val_fraction: float = 0.1        # held-out part of those for early stopping / ridge alpha
  test_limit: int = 0              # >0: first N test examples (0: the whole test split)
  attackers: Sequence[str] = ATTACKERS
  attacker_fit: atk.FitConfig = dataclasses.field(default_factory=atk.FitConfig)
  classifier_fit: atk.FitConfig = dataclasses.field(
      default_factory=lambda: atk.FitConfig(max_epochs=30, patience=3))
  retrain_classifier: bool = True
  mlp_hidden: Sequence[int] = (1024, 1024)
  resnet_width: int = 64
  resnet_blocks: int = 1
  n_show: int = 8                  # test images whose reconstructions are kept for figures
  n_scatter: int = 2000            # test features kept (3-D PCA) for the scatter figure
  encode_batch: int = 512
  seed: int = 0

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


@dataclasses.dataclass
class Data:
  """The arrays every evaluation of one task uses (train subset split into fit/val)."""

  x_fit: np.ndarray
  y_fit: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  input_shape: tuple
  num_classes: int
  value_range: tuple


def prepare_data(source, cfg: AttackConfig) -> Data:
  """Train subset (split fit/val by a fixed permutation) and test arrays of a DataSource."""
  n_tr = len(source.train)
  if cfg.attack_train_limit and cfg.attack_train_limit > 0:
    n_tr = min(n_tr, cfg.attack_train_limit)
  tr = source.train.get(np.arange(n_tr))
  n_te = len(source.test)
  if cfg.test_limit and cfg.test_limit > 0:
    n_te = min(n_te, cfg.test_limit)
  te = source.test.get(np.arange(n_te))
  perm = np.random.default_rng(cfg.seed).permutation(n_tr)
  n_val = max(1, int(round(cfg.val_fraction * n_tr)))
  val, fit_ = perm[:n_val], perm[n_val:]
  x, y = np.asarray(tr["image"], np.float32), np.asarray(tr["label"], np.int32)
  return Data(x[fit_], y[fit_], x[val], y[val], np.asarray(te["image"], np.float32),
              np.asarray(te["label"], np.int32), tuple(source.input_shape),
              int(source.num_classes), tuple(float(v) for v in source.value_range))


def batched(fn: Callable, x: np.ndarray, batch: int) -> np.ndarray:
  return np.concatenate([np.asarray(fn(x[s:s + batch])) for s in range(0, len(x), batch)])


def pca3(features: np.ndarray) -> np.ndarray:
  """[N, ...] -> [N, 3] projection on the top three principal components."""
  z = features.reshape(len(features), -1).astype(np.float64)
  z = z - z.mean(0)
  _, _, vt = np.linalg.svd(z, full_matrices=False)
  out = z @ vt[:3].T
  if out.shape[1] < 3:
    out = np.pad(out, ((0, 0), (0, 3 - out.shape[1])))
  return out.astype(np.float32)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
  return float(losses.accuracy(np.asarray(logits), np.asarray(labels)))


def add_release_noise(z: np.ndarray, sigma: float, seed: Sequence[int]) -> np.ndarray:
  """The released copy of clean features z: z + N(0, sigma^2), from an explicit seed."""
  if not sigma:
    return z
  noise = np.random.default_rng(list(seed)).standard_normal(z.shape).astype(np.float32)
  return (z + sigma * noise).astype(np.float32)


def reference_levels(data: Data) -> dict:
  """Errors of attackers that ignore the features: where privacy saturates.

  label_only  each test input replaced by the mean training input of its class: the
              best an attacker who learns only the label can do (under squared error).
  mean_image  every test input replaced by the mean training input.
  """
  x_fit = data.x_fit.astype(np.float64)
  mean = x_fit.mean(0)
  class_means = np.stack([x_fit[data.y_fit == c].mean(0) if np.any(data.y_fit == c) else mean
                          for c in range(data.num_classes)])
  return {
      "label_only": metrics.reconstruction_metrics(data.x_test, class_means[data.y_test],
                                                   data.value_range),
      "mean_image": metrics.reconstruction_metrics(
          data.x_test, np.broadcast_to(mean, data.x_test.shape), data.value_range),
  }


def attack_features(data: Data, encode: Callable, cfg: AttackConfig, *,
                    feature_noise: float = 0.0,
                    classify: Optional[Callable] = None,
                    own_decode: Optional[Callable] = None,
                    mirrored: Optional[nn.Module] = None,
                    classifier_module: Optional[nn.Module] = None,
                    identity: bool = False,
                    extra_tests: Optional[dict] = None,
                    name: str = "") -> tuple[dict, dict]:
  """Scores one frozen feature map `encode` (numpy [B, ...] -> numpy features).

  feature_noise > 0: `encode` gives the clean features and the server receives them
  plus N(0, feature_noise^2). The validation and test releases carry fixed noise
  (explicit seeds); every trained attacker and the retrained classifier see fresh
  noise on each training batch (an attacker holding the encoder can draw it), ridge
  one fixed noisy copy. Every figure and number is then about what the server
  really receives.

  classify: the service-side classifier on features (utility as deployed).
  own_decode: the decoder trained together with the encoder, scored as one more attacker.
  mirrored: a fresh mirrored decoder module (skipped when None or not in cfg.attackers).
  classifier_module: a fresh classifier retrained on the frozen features.
  identity: also score the features themselves as the reconstruction (Noisy).
  extra_tests: {name: features [N_test, ...]} other releases of the test inputs (e.g. the
    mean of N releases, the clean features); every attacker trained above is also scored
    on each, under result['releases'][name] (same 'attackers' / 'worst' layout).

  Returns (result, artifacts): result is JSON-able (accuracy, per-attacker metrics,
  worst case); artifacts are arrays for the figures (reconstructions, 3-D features).
  """
  sigma = float(feature_noise)
  z_fit = batched(encode, data.x_fit, cfg.encode_batch)
  z_val = add_release_noise(batched(encode, data.x_val, cfg.encode_batch), sigma, (cfg.seed, 1))
  z_test = add_release_noise(batched(encode, data.x_test, cfg.encode_batch), sigma, (cfg.seed, 2))
  if not (np.all(np.isfinite(z_fit)) and np.all(np.isfinite(z_test))):
    raise FloatingPointError(f"{name}: the encoder produced non-finite features.")
  noise = dict(input_noise=sigma, noise_kind="gaussian") if sigma else {}
  result = {"name": name, "n_fit": len(z_fit), "n_val": len(z_val), "n_test": len(z_test),
            "feature_shape": list(z_test.shape[1:]), "attackers": {},
            "feature_noise": sigma, "reference": reference_levels(data),
            "value_range": [float(v) for v in data.value_range]}
  art = {"x_show": data.x_test[:cfg.n_show], "y_scatter": data.y_test[:cfg.n_scatter],
         "z3": pca3(z_test[:cfg.n_scatter])}

  # ---------------------------------------------------------------- utility
  if classify is not None:
    result["accuracy"] = accuracy(batched(classify, z_test, cfg.encode_batch), data.y_test)
  if cfg.retrain_classifier and classifier_module is not None:
    f = atk.fit(classifier_module, atk.ce_loss, z_fit, data.y_fit, z_val, data.y_val,
                cfg.classifier_fit, name=f"{name}/retrained_classifier", **noise)
    result["accuracy_retrained"] = accuracy(f.predict(z_test), data.y_test)
    result["retrained_classifier_epochs"] = f.epochs

  # ---------------------------------------------------------------- attackers
  extra_tests = extra_tests or {}
  if extra_tests:
    result["releases"] = {k: {"attackers": {}} for k in extra_tests}

  def score(attacker, rec, predict=None, **extra):
    m = metrics.reconstruction_metrics(data.x_test, rec, data.value_range)
    m.update(extra)
    result["attackers"][attacker] = m
    for k, z in (extra_tests.items() if predict is not None else ()):
      result["releases"][k]["attackers"][attacker] = metrics.reconstruction_metrics(
          data.x_test, predict(z), data.value_range)
    art[f"rec_{attacker}"] = rec[:cfg.n_show]
    log.info("%s | %-16s mse_sum %.4g  mse_mean %.4g  psnr %.2f  ssim %.4f", name, attacker,
             m["mse_sum"], m["mse_mean"], m["psnr"], m["ssim"])

  if own_decode is not None:
    score("own_decoder", batched(own_decode, z_test, cfg.encode_batch),
          lambda z: batched(own_decode, z, cfg.encode_batch))
  if identity:
    score("identity", z_test.reshape(data.x_test.shape))
  families = {
      "mirrored_decoder": mirrored,
      "mlp_decoder": atk.MLPDecoder(data.input_shape, tuple(cfg.mlp_hidden), data.value_range),
      "resnet_decoder": atk.ResNetDecoder(data.input_shape, data.value_range, cfg.resnet_width,
                                          cfg.resnet_blocks),
  }
  # The decoder families train together: one compiled program over the same batches.
  trained = [a for a in TRAINED_ATTACKERS if a in cfg.attackers and families[a] is not None]
  if trained:
    jobs = [atk.Job(f"{name}/{a}", families[a], atk.recon_loss, "x", cfg.attacker_fit)
            for a in trained]
    fitted = atk.fit_group(jobs, z_fit, {"x": data.x_fit}, z_val, {"x": data.x_val}, **noise)
    for attacker, job in zip(trained, jobs):
      f = fitted[job.name]
      score(attacker, f.predict(z_test), f.predict, epochs=f.epochs, best_epoch=f.best_epoch,
            lr_cuts=f.lr_cuts, converged=f.converged)
  if "ridge" in cfg.attackers:
    z_ridge = add_release_noise(z_fit, sigma, (cfg.seed, 0))
    r = atk.fit_ridge(z_ridge, data.x_fit, z_val, data.x_val, data.value_range)
    score("ridge", r.predict(z_test), r.predict, alpha=r.alpha)

  result["worst"] = worst_case(result["attackers"])
  for rel in result.get("releases", {}).values():
    rel["worst"] = worst_case(rel["attackers"])
  return result, art


def worst_case(by_attacker: dict) -> dict:
  """The strongest attack: lowest mse (and its name); PSNR/SSIM worst over attackers too."""
  if not by_attacker:
    return {}
  name = min(by_attacker, key=lambda a: by_attacker[a]["mse_sum"])
  return {
      "attacker": name,
      "mse_sum": by_attacker[name]["mse_sum"],
      "mse_mean": by_attacker[name]["mse_mean"],
      "psnr": max(m["psnr"] for m in by_attacker.values()),
      "ssim": max(m["ssim"] for m in by_attacker.values()),
  }


# ---------------------------------------------------------------- storage

RESULT_FILE = "result.json"
ARTIFACT_FILE = "artifacts.npz"


def save(directory: str, result: dict, art: dict) -> None:
  """Writes artifacts first and result.json last: result.json marks a finished point."""
  import json
  import os

  os.makedirs(directory, exist_ok=True)
  np.savez_compressed(os.path.join(directory, ARTIFACT_FILE), **art)
  tmp = os.path.join(directory, RESULT_FILE + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2, default=float)
  os.replace(tmp, os.path.join(directory, RESULT_FILE))


def load(directory: str) -> tuple[Optional[dict], Optional[dict]]:
  import json
  import os

  path = os.path.join(directory, RESULT_FILE)
  if not os.path.exists(path):
    return None, None
  with open(path, encoding="utf-8") as f:
    result = json.load(f)
  ap = os.path.join(directory, ARTIFACT_FILE)
  art = dict(np.load(ap)) if os.path.exists(ap) else {}
  return result, art
