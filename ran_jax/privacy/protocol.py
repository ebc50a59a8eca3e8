"""One evaluation of one frozen feature map: utility, attackers, worst case.

`attack_features` is shared by RAN, DNN, DNN(resized) and Noisy so that every
method goes through the same attackers, the same data and the same metrics. For a noisy
release each threat (one release, the mean of N releases of one input, the clean
features: `Threat`) has its own attackers, trained and early-stopped on that kind of
feature, so every figure is a worst case over attackers trained for it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Optional, Sequence

import flax.linen as nn
import numpy as np

from ran_jax import losses
from ran_jax.privacy import attackers as atk
from ran_jax.privacy import budget as budget_lib
from ran_jax.privacy import inversion
from ran_jax.privacy import metrics

log = logging.getLogger("ran_jax")

ATTACKERS = ("mirrored_decoder", "mlp_decoder", "resnet_decoder", "ridge")
# Every attacker name that may appear in results (fixed CSV schema):
#   own_decoder  the decoder trained with the encoder (RAN's D; none for Noisy)
#   identity     the released data itself taken as the reconstruction (Noisy: |I - noisy I|^2)
#   inversion    white-box inversion through the frozen encoder (`ran_jax.privacy.inversion`)
ALL_ATTACKERS = ("own_decoder", "mirrored_decoder", "mlp_decoder", "resnet_decoder", "ridge",
                 "identity", "inversion")
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
  # One MLP decoder (1024, 1024), or a grid of them ((1024, 1024), (2048, 2048)) searched on
  # validation; learning_rates (empty: attacker_fit's) searched for every trained family.
  mlp_hidden: Sequence = (1024, 1024)
  learning_rates: Sequence[float] = ()
  inversion: bool = False          # white-box inversion through the encoder (given one)
  inversion_steps: int = 200
  inversion_weights: Sequence[float] = (0.01, 0.1, 1.0, 10.0)
  fit_fractions: Sequence[float] = (1.0,)   # convergence: the worst refit on these fractions
  tolerance: float = 0.02          # convergence: relative change of the summed error
  budget: str = ""                 # the declared budget's name, for the record
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
  if cfg.attack_train_limit > 0:
    n_tr = min(n_tr, cfg.attack_train_limit)
  n_val = max(1, int(round(cfg.val_fraction * n_tr)))
  if n_tr - n_val < 1:
    raise ValueError(f"{n_tr} training example(s) (attack_train_limit="
                     f"{cfg.attack_train_limit}) leave none to fit attackers on after {n_val} "
                     "for validation: use at least 2.")
  tr = source.train.get(np.arange(n_tr))
  n_te = len(source.test)
  if cfg.test_limit > 0:
    n_te = min(n_te, cfg.test_limit)
  te = source.test.get(np.arange(n_te))
  perm = np.random.default_rng(cfg.seed).permutation(n_tr)
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


def mean_of_releases(z: np.ndarray, sigma: float, n: int, seed: Sequence[int]) -> np.ndarray:
  """The mean of `n` independent releases of each clean feature vector in z, each drawn
  from its own explicit seed (seed + (r,)); n = 1 is `add_release_noise(z, sigma, seed)`."""
  if n == 1 or not sigma:
    return add_release_noise(z, sigma, seed)
  total = np.zeros(z.shape, np.float64)
  for r in range(n):
    total += add_release_noise(z, sigma, tuple(seed) + (r,))
  return (total / n).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Threat:
  """What one attacker holds of each input, and so trains, validates and is scored on.

  single   one release z + N(0, sigma^2) (what one request shows);
  mean_N   the mean of N releases of the same input (a repeated input): z + the mean of N
           independent N(0, sigma^2) draws;
  clean    the clean features z (an attacker holding the encoder computes them for his own
           inputs; the limit of averaging N -> infinity).
  draws: N (0 for clean). An attacker of a threat trains on that threat's features of the
  training inputs (fresh draws on every batch), early-stops on them for the validation
  part, and is scored on them for the test inputs.
  """

  name: str
  draws: int

  def noise(self, sigma: float) -> float:
    """Std of the noise left in this threat's features. The mean of N independent
    N(0, sigma^2) draws is exactly N(0, sigma^2 / N): one fresh draw at sigma / sqrt(N)
    per batch is a fresh mean of N releases (`attackers.fit_group`'s in-step noise)."""
    return float(sigma) / float(np.sqrt(self.draws)) if self.draws else 0.0

  def features(self, z: np.ndarray, sigma: float, seed: Sequence[int]) -> np.ndarray:
    """This threat's copy of clean features z, from explicit seeds (validation, test, ridge)."""
    return mean_of_releases(z, sigma, self.draws, seed) if self.draws else z


def threats(feature_noise: float, releases: Sequence[int] = (), clean: bool = False) -> list:
  """The threats an evaluation scores: one release first, then (a noisy release only) the
  mean of each N in `releases` and, with `clean`, the clean features. Noise-free, all of
  them are one release."""
  out = [Threat("single", 1)]
  if feature_noise:
    out += [Threat(f"mean_{int(n)}", int(n)) for n in releases if int(n) > 1]
    if clean:
      out.append(Threat("clean", 0))
  return out


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
                    releases: Sequence[int] = (),
                    clean: bool = False,
                    invert_features: Optional[Callable] = None,
                    name: str = "") -> tuple[dict, dict]:
  """Scores one frozen feature map `encode` (numpy [B, ...] -> numpy features).

  feature_noise > 0: `encode` gives the clean features and the server receives them
  plus N(0, feature_noise^2). The validation and test releases carry fixed noise
  (explicit seeds); every trained attacker and the retrained classifier see fresh
  noise on each training batch (an attacker holding the encoder can draw it), ridge
  one fixed noisy copy. Every figure and number is then about what the server
  really receives.

  releases, clean (a noisy release only): the further threats (`Threat`): the mean of
  N releases of each input for every N in `releases`, and the clean features. Every
  attacker family is trained again for each, on that threat's features of the training
  inputs (fresh means of N releases on every batch; the clean features), early-stopped
  on the same kind of features of the validation part (cut from the training split, never
  the test split), and scored on that kind for the test inputs: result['releases'][name]
  (same 'attackers' / 'worst' layout, 'trained_on': name). The own decoder, trained with
  the encoder, is only scored there.

  classify: the service-side classifier on features (utility as deployed).
  own_decode: the decoder trained together with the encoder, scored as one more attacker.
  mirrored: a fresh mirrored decoder module (skipped when None or not in cfg.attackers).
  classifier_module: a fresh classifier retrained on the frozen features.
  identity: also score the features themselves as the reconstruction (Noisy).
  invert_features: the clean feature map as a JAX function (x -> z): with cfg.inversion,
  white-box inversion through it, started from the best trained decoder (`inversion`).

  The trained families are searched (cfg.mlp_hidden's capacities x cfg.learning_rates,
  chosen on validation loss) and the worst case of each threat carries a convergence mark
  (`budget.reconstruction_mark`: the worst attacker refit on cfg.fit_fractions of the fit
  part, and the search's edge gains).

  Returns (result, artifacts): result is JSON-able (accuracy, per-attacker metrics,
  worst case); artifacts are arrays for the figures (reconstructions, 3-D features).
  """
  sigma = float(feature_noise)
  z_fit = batched(encode, data.x_fit, cfg.encode_batch)
  zc_val = batched(encode, data.x_val, cfg.encode_batch)
  zc_test = batched(encode, data.x_test, cfg.encode_batch)
  if not (np.all(np.isfinite(z_fit)) and np.all(np.isfinite(zc_test))):
    raise FloatingPointError(f"{name}: the encoder produced non-finite features.")
  single, *further = threats(sigma, releases, clean)
  z_val = single.features(zc_val, sigma, (cfg.seed, 1))
  z_test = single.features(zc_test, sigma, (cfg.seed, 2))
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
    noise = dict(input_noise=sigma, noise_kind="gaussian") if sigma else {}
    f = atk.fit(classifier_module, atk.ce_loss, z_fit, data.y_fit, z_val, data.y_val,
                cfg.classifier_fit, name=f"{name}/retrained_classifier", **noise)
    result["accuracy_retrained"] = accuracy(f.predict(z_test), data.y_test)
    result["retrained_classifier_epochs"] = f.epochs

  # ---------------------------------------------------------------- attackers
  families = {
      "mirrored_decoder": [((), mirrored)],
      "mlp_decoder": [(tuple(h), atk.MLPDecoder(data.input_shape, tuple(h), data.value_range))
                      for h in mlp_grid(cfg.mlp_hidden)],
      "resnet_decoder": [((), atk.ResNetDecoder(data.input_shape, data.value_range,
                                                cfg.resnet_width, cfg.resnet_blocks))],
  }
  trained = [a for a in TRAINED_ATTACKERS
             if a in cfg.attackers and all(m is not None for _, m in families[a])]
  inv = invert_features if cfg.inversion else None
  by_attacker, recs, conv = _attack_threat(
      data, cfg, single, sigma, z_fit, z_val, z_test, families, trained, own_decode,
      identity, name, inv)
  result["attackers"] = by_attacker
  for attacker, rec in recs.items():
    art[f"rec_{attacker}"] = rec[:cfg.n_show]
  result["worst"] = worst_case(by_attacker)
  if result["worst"]:
    result["worst"]["convergence"] = conv(result["worst"]["attacker"])
  result["budget"] = cfg.budget
  if further:
    result["releases"] = {}
  for threat in further:
    seeds = (cfg.seed, 1, threat.draws), (cfg.seed, 2, threat.draws)
    t_val, t_test = (threat.features(z, sigma, s) for z, s in zip((zc_val, zc_test), seeds))
    t_by, _, t_conv = _attack_threat(data, cfg, threat, sigma, z_fit, t_val, t_test, families,
                                     trained, own_decode, False, f"{name}/{threat.name}", inv)
    t_worst = worst_case(t_by)
    if t_worst:
      t_worst["convergence"] = t_conv(t_worst["attacker"])
    result["releases"][threat.name] = {"trained_on": threat.name, "attackers": t_by,
                                       "worst": t_worst}
  return result, art


def mlp_grid(value) -> list:
  """mlp_hidden as a grid: (1024, 1024) is one decoder; ((1024, 1024), (2048, 2048)) two.

  >>> mlp_grid((1024, 1024)), mlp_grid(((64,), (128, 128)))
  ([(1024, 1024)], [(64,), (128, 128)])
  """
  value = tuple(value)
  if value and all(isinstance(v, (tuple, list)) for v in value):
    return [tuple(int(w) for w in v) for v in value]
  return [tuple(int(v) for v in value)]


def _learning_rates(cfg: AttackConfig) -> list:
  return [float(v) for v in cfg.learning_rates] or [float(cfg.attacker_fit.learning_rate)]


def _attack_threat(data: Data, cfg: AttackConfig, threat: Threat, sigma: float,
                   z_fit: np.ndarray, z_val: np.ndarray, z_test: np.ndarray, families: dict,
                   trained: Sequence[str], own_decode: Optional[Callable], identity: bool,
                   name: str, invert_features: Optional[Callable] = None):
  """Every attacker of cfg.attackers fitted to one threat's features and scored on them.

  z_fit: clean features of the fit part (the threat's noise is drawn from them: fresh per
  batch for the trained families, one fixed copy for ridge); z_val / z_test: the threat's
  features of the validation and test parts. families: {family: [(capacity, module)]}:
  every capacity x learning rate of a family trains in one group, the lowest validation
  loss is the family's attacker (result 'search'). Returns ({attacker: metrics},
  {attacker: reconstructions of the test inputs}, convergence(attacker) -> mark or None).
  """
  by_attacker, recs, chosen = {}, {}, {}

  def score(attacker, rec, **extra):
    m = metrics.reconstruction_metrics(data.x_test, rec, data.value_range)
    m.update(extra)
    by_attacker[attacker], recs[attacker] = m, rec
    log.info("%s | %-16s mse_sum %.4g  mse_mean %.4g  psnr %.2f  ssim %.4f", name, attacker,
             m["mse_sum"], m["mse_mean"], m["psnr"], m["ssim"])

  if own_decode is not None:
    score("own_decoder", batched(own_decode, z_test, cfg.encode_batch))
  if identity:
    score("identity", z_test.reshape(data.x_test.shape))
  noise_std = threat.noise(sigma)
  noise = dict(input_noise=noise_std, noise_kind="gaussian") if noise_std else {}
  lrs = _learning_rates(cfg)

  def jobs_of(attackers):
    return [(a, cap, lr, atk.Job(f"{name}/{a}" + (f"[{'x'.join(map(str, cap))}]" if cap else "")
                                 + (f"[lr={lr:g}]" if len(lrs) > 1 else ""), module,
                                 atk.recon_loss, "x",
                                 dataclasses.replace(cfg.attacker_fit, learning_rate=lr)))
            for a in attackers for cap, module in families[a] for lr in lrs]

  # The decoder families train together: one compiled program over the same batches.
  if trained:
    jobs = jobs_of(trained)
    fitted = atk.fit_group([j for *_, j in jobs], z_fit, {"x": data.x_fit}, z_val,
                           {"x": data.x_val}, **noise)
    for attacker in trained:
      mine = [(cap, lr, job, fitted[job.name]) for a, cap, lr, job in jobs if a == attacker]
      cap, lr, job, f = min(mine, key=lambda t: t[3].best_val)
      grid = [{"capacity": list(c), "learning_rate": r, "val_loss": g.best_val,
               "epochs": g.epochs, "converged": g.converged} for c, r, _, g in mine]
      caps = list(dict.fromkeys(c for c, *_ in mine))
      per_cap = [min(g.best_val for c, r, _, g in mine if c == cc) for cc in caps]
      gain = budget_lib.edge_gain(per_cap, caps.index(cap), higher_is_better=False)
      chosen[attacker] = {"job": job, "capacity": cap, "lr": lr,
                          "capacity_gain": gain / per_cap[-2] if len(per_cap) > 1 else 0.0}
      extra = {"search": grid, "capacity": list(cap), "learning_rate": lr} if len(mine) > 1 \
          else {}
      score(attacker, f.predict(z_test), epochs=f.epochs, best_epoch=f.best_epoch,
            lr_cuts=f.lr_cuts, converged=f.converged, **extra)
      chosen[attacker]["fitted"] = f
  if "ridge" in cfg.attackers:
    z_ridge = threat.features(z_fit, sigma, (cfg.seed, 0) + ((threat.draws,) if
                                                            threat.draws > 1 else ()))
    r = atk.fit_ridge(z_ridge, data.x_fit, z_val, data.x_val, data.value_range)
    score("ridge", r.predict(z_test), alpha=r.alpha)
  if invert_features is not None and chosen:
    start = min(chosen, key=lambda a: chosen[a]["fitted"].best_val)
    f = chosen[start]["fitted"]
    rec, info = inversion.search_and_invert(
        invert_features, z_val, f.predict(z_val), data.x_val, z_test, f.predict(z_test),
        data.value_range, cfg.inversion_weights, cfg.inversion_steps, f"{name}/inversion")
    score("inversion", rec, started_from=start, **info)

  def convergence(attacker: str):
    """The mark of `attacker`'s figure: refit on cfg.fit_fractions of the fit part."""
    fractions = sorted(float(v) for v in cfg.fit_fractions if 0 < float(v) < 1)
    if attacker in ("own_decoder", "identity") or not fractions:
      return None
    base = chosen.get(by_attacker[attacker].get("started_from", attacker))
    if attacker != "ridge" and base is None:
      return None
    curve = []
    for frac in fractions:
      keep = np.sort(np.random.default_rng([cfg.seed, 41]).permutation(len(z_fit))[
          :max(2, int(frac * len(z_fit)))])
      if attacker == "ridge":
        zr = threat.features(z_fit[keep], sigma, (cfg.seed, 0, 41))
        pred = atk.fit_ridge(zr, data.x_fit[keep], z_val, data.x_val,
                             data.value_range).predict(z_test)
      else:
        job = dataclasses.replace(base["job"], name=f"{base['job'].name}/fraction{frac:g}")
        pred = atk.fit_group([job], z_fit[keep], {"x": data.x_fit[keep]}, z_val,
                             {"x": data.x_val}, **noise)[job.name].predict(z_test)
      curve.append(float(metrics.reconstruction_metrics(data.x_test, pred,
                                                        data.value_range)["mse_sum"]))
    figure = by_attacker[attacker]["mse_sum"]
    if attacker == "inversion":   # the inversion's curve is its starting decoder's
      figure = by_attacker[by_attacker[attacker]["started_from"]]["mse_sum"]
    gains = {} if attacker == "ridge" else {"capacity": base["capacity_gain"]}
    mark = budget_lib.reconstruction_mark(curve + [figure], gains, cfg.tolerance)
    mark["fractions"] = fractions + [1.0]
    log.info("%s | %s: %s (fit fractions %s: %s)", name, attacker, budget_lib.mark_label(mark),
             "/".join(f"{v:g}" for v in mark["fractions"]),
             " ".join(f"{v:.4g}" for v in mark["fit_curve"]))
    return mark

  return by_attacker, recs, convergence


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
  """Writes artifacts first and result.json last: result.json marks a finished point.
  `directory` may be local or gs:// (each file is written whole, `ran_jax.storage`)."""
  import io
  import json

  from ran_jax import storage

  storage.path(directory).mkdir(parents=True, exist_ok=True)
  buf = io.BytesIO()
  np.savez_compressed(buf, **art)
  storage.write_bytes(storage.path(directory) / ARTIFACT_FILE, buf.getvalue())
  storage.write_text(storage.path(directory) / RESULT_FILE,
                     json.dumps(result, indent=2, default=float))


def load(directory: str) -> tuple[Optional[dict], Optional[dict]]:
  """(result, artifacts) of a finished point, or (None, None) before its result.json."""
  import io
  import json

  from ran_jax import storage

  path = storage.path(directory) / RESULT_FILE
  if not path.exists():
    return None, None
  result = json.loads(path.read_text(encoding="utf-8"))
  ap = storage.path(directory) / ARTIFACT_FILE
  art = dict(np.load(io.BytesIO(ap.read_bytes()))) if ap.exists() else {}
  return result, art
