"""The methods of §3.1 through one evaluation: RAN / DNN encoders, DNN(resized), Noisy.

  RAN           the trained encoder of a workdir; service classifier = RAN's C.
  DNN           the same architecture trained with lambda = 1.0, where
                O_a = CE: encoder+classifier learn without any adversarial term (the
                decoder still trains in the generative stage but never influences the
                encoder). Evaluated exactly like RAN.
  DNN(resized)  Ossia et al. (2017): the DNN features projected on their top principal
                components (fitted on the training features) plus Laplace noise of scale
                factor * (std of each component); the attacker receives the noisy
                projection mapped back to the feature space (a fixed, public linear map),
                so the mirrored decoder applies. Service classifier = DNN's C on it.
  Noisy         Laplace noise of scale factor * (hi - lo) on the raw input; a classifier of
                the same architecture (encoder + classifier) is trained from scratch on
                noisy inputs (fresh noise per batch). Privacy as in the paper: the
                'identity' attacker |I - noisy I|^2, plus the attackers in the config that
                apply to raw data (ridge: a linear denoiser; mlp_decoder).
"""

from __future__ import annotations

import jax
import numpy as np

from ran_jax.privacy import attackers as atk
from ran_jax.privacy import bound
from ran_jax.privacy import protocol
from ran_jax.models import Classifier, Decoder, build_models


def fresh_mirror(trained):
  """A fresh decoder mirroring the released encoder (its bottleneck included)."""
  m = trained.models
  d = m.decoder
  return Decoder(m.spec, m.input_shape, tuple(float(v) for v in trained.meta["value_range"]),
                 bottleneck_dim=d.bottleneck_dim, bottleneck_kind=d.bottleneck_kind)


def fresh_classifier(trained):
  c = trained.config.model
  return Classifier(tuple(c.classifier_hidden), trained.models.num_classes, c.get("dropout", 0.0))


BOUND_EXAMPLES = 512   # test inputs over which E[tr(J^T J)] is estimated
BOUND_PROBES = 8


def attack_trained(trained, data: protocol.Data, cfg: protocol.AttackConfig, name: str = "ran",
                   releases=(), clean: bool = False):
  """RAN, DNN or a defended encoder: the workdir's frozen encoder as released (noise
  included), its classifier and its own decoder, plus the Fisher bound when noisy.
  `releases`, `clean`: the further threats (mean of N releases of each input, the clean
  features), each with attackers trained on its own kind of features
  (`protocol.attack_features`)."""
  feats = jax.jit(trained.features)
  result, art = protocol.attack_features(
      data, feats, cfg, feature_noise=trained.feature_noise, classify=jax.jit(trained.classify),
      own_decode=jax.jit(trained.decode), mirrored=fresh_mirror(trained),
      classifier_module=fresh_classifier(trained), releases=releases, clean=clean,
      invert_features=trained.features, name=name)
  result["train_step"] = trained.meta.get("step")
  result["lam"] = float(trained.config.ran.lam)
  if trained.feature_noise:
    result["fisher_bound"] = bound.fisher_mse_bound(
        trained.features, data.x_test[:BOUND_EXAMPLES], trained.feature_noise,
        jax.random.PRNGKey(cfg.seed), BOUND_PROBES)
  return result, art


class ResizedEncoder:
  """x -> DNN features -> top-k PCA + Laplace noise -> back to the feature shape."""

  def __init__(self, trained, fit_inputs: np.ndarray, factor: float, n_components: int,
               seed: int = 0, batch: int = 512):
    self.enc = jax.jit(trained.features)
    z = protocol.batched(self.enc, fit_inputs, batch)
    self.shape = z.shape[1:]
    z = z.reshape(len(z), -1).astype(np.float64)
    self.mean = z.mean(0)
    _, _, vt = np.linalg.svd(z - self.mean, full_matrices=False)
    self.k = int(min(n_components, vt.shape[0]))
    self.components = vt[:self.k]                               # [k, d]
    proj = (z - self.mean) @ self.components.T
    self.scale = factor * proj.std(0)                           # [k]
    self.rng = np.random.default_rng(seed)

  def __call__(self, x):
    z = np.asarray(self.enc(x), np.float64).reshape(len(x), -1)
    p = (z - self.mean) @ self.components.T
    p = p + self.rng.laplace(size=p.shape) * self.scale
    return (p @ self.components + self.mean).reshape((-1,) + self.shape).astype(np.float32)


def attack_dnn_resized(trained_dnn, data: protocol.Data, cfg: protocol.AttackConfig, factor: float,
                         n_components: int = 8, name: str = "dnn_resized"):
  enc = ResizedEncoder(trained_dnn, data.x_fit, factor, n_components, seed=cfg.seed)
  result, art = protocol.attack_features(
      data, enc, cfg, classify=jax.jit(trained_dnn.classify), mirrored=fresh_mirror(trained_dnn),
      classifier_module=fresh_classifier(trained_dnn), name=name)
  result.update(noise_factor=float(factor), n_components=enc.k)
  return result, art


def attack_noisy(model_config, data: protocol.Data, cfg: protocol.AttackConfig, factor: float,
                   name: str = "noisy"):
  """Laplace noise on the raw input; a same-architecture classifier trained on noisy data."""
  lo, hi = data.value_range
  scale = float(factor) * (hi - lo)
  models = build_models(model_config, data.input_shape, data.num_classes, data.value_range)
  rng = np.random.default_rng([cfg.seed, 7])

  def noisy(x):
    return (x + rng.laplace(size=x.shape) * scale).astype(np.float32)

  x_val_noisy = noisy(data.x_val)
  net = atk.EncoderClassifier(models.encoder, models.classifier)
  f = atk.fit(net, atk.ce_loss, data.x_fit, data.y_fit, x_val_noisy, data.y_val,
              cfg.classifier_fit, input_noise=scale, name=f"{name}/classifier")
  attack_cfg = protocol.AttackConfig(**{**cfg.__dict__, "retrain_classifier": False,
                                  "attackers": [a for a in cfg.attackers
                                                if a != "mirrored_decoder"]})
  result, art = protocol.attack_features(
      data, noisy, attack_cfg, classify=lambda z: f.predict(z), identity=True, name=name)
  result.update(noise_factor=float(factor), noise_scale=scale, classifier_epochs=f.epochs)
  return result, art
