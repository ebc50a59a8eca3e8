"""The trained attacker families can invert what they attack (their decoders are real).

The sklearn digits (8 x 8, 1,797 images) as a small real data set: the mirrored
decoder, built from the spec of the encoder it attacks, inverts a random-weight encoder
of that spec; the residual decoder inverts the flattened input. Each must come well under
the error of predicting the training mean, the floor of an attacker that learned nothing.
"""

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits

from ran_jax.models import build_encoder_spec
from ran_jax.models.modules import Decoder, Encoder
from ran_jax.privacy import attackers as atk
from ran_jax.privacy import metrics

SHAPE = (8, 8, 1)
FIT = atk.FitConfig(batch_size=64, learning_rate=3e-3, max_epochs=30, patience=3)


@pytest.fixture(scope="module")
def digits():
  x = (load_digits().images / 16.0).astype(np.float32)[..., None]   # [1797, 8, 8, 1]
  mean_mse = metrics.mse_per_example(x[1500:], np.broadcast_to(x[:1300].mean(0), x[1500:].shape),
                                     "mean").mean()
  return x, float(mean_mse)


def _test_mse(fitted, z, x):
  return float(metrics.mse_per_example(x[1500:], fitted.predict(z[1500:]), "mean").mean())


def test_mirrored_decoder_inverts_its_encoder(digits):
  x, mean_mse = digits
  spec = build_encoder_spec("lenet5", SHAPE, (8, 16))
  enc = Encoder(spec)
  variables = enc.init(jax.random.PRNGKey(0), x[:2], train=False)
  z = np.asarray(jax.jit(lambda a: enc.apply(variables, a, train=False))(x))   # [N, 2, 2, 16]
  fitted = atk.fit(Decoder(spec, SHAPE, (0.0, 1.0)), atk.recon_loss, z[:1300], x[:1300],
                   z[1300:1500], x[1300:1500], FIT)
  mse = _test_mse(fitted, z, x)
  assert mse < 0.6 * mean_mse, (mse, mean_mse)      # measured ~0.43 of the floor


def test_residual_decoder_inverts_the_identity(digits):
  x, mean_mse = digits
  z = x.reshape(len(x), -1)
  fitted = atk.fit(atk.ResNetDecoder(SHAPE, width=32, stages=1), atk.recon_loss, z[:1300],
                   x[:1300], z[1300:1500], x[1300:1500], FIT)
  mse = _test_mse(fitted, z, x)
  assert mse < 0.1 * mean_mse, (mse, mean_mse)      # measured ~0.04 of the floor


# ---------------------------------------------------------------- the retrained classifier


@pytest.mark.parametrize("noise", [0.0, 0.2])
def test_retrained_classifier_learns_the_labels_the_features_carry(digits, noise):
  """AttackConfig's default `retrain_classifier=True`: a fresh classifier fitted on the
  (noisy) released features scores the test part; digit labels are learnable from the
  raw pixels, labels shuffled apart from the images are not."""
  from ran_jax.models.modules import Classifier
  from ran_jax.privacy import protocol

  x, _ = digits
  y = load_digits().target.astype(np.int32)
  fit = atk.FitConfig(batch_size=64, learning_rate=3e-3, max_epochs=20, patience=3)
  cfg = protocol.AttackConfig(attackers=("ridge",), classifier_fit=fit, n_show=2,
                              n_scatter=10)
  assert cfg.retrain_classifier   # the default the attack command runs with
  got = {}
  for name, labels in (("true", y), ("shuffled", np.random.default_rng(0).permutation(y))):
    data = protocol.Data(x[:1300], labels[:1300], x[1300:1500], labels[1300:1500], x[1500:],
                         labels[1500:], SHAPE, 10, (0.0, 1.0))
    res, _ = protocol.attack_features(data, lambda a: a.reshape(len(a), -1), cfg,
                                      feature_noise=noise, classifier_module=Classifier((32,), 10),
                                      name=name)
    got[name] = res["accuracy_retrained"]
  assert got["true"] > 0.85 and got["shuffled"] < 0.25, got   # chance: 0.1
