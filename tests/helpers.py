"""Small shared builders for tests."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from ran_jax import stages
from ran_jax.models import RANModels, build_encoder_spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_setup(encoder="lenet5", input_shape=(28, 28, 1), widths=None, num_classes=10, lam=0.5,
               lr=1e-3, k=1, batch=8, seed=0, recon_reduction="sum"):
  import ml_collections

  spec = build_encoder_spec(encoder, input_shape, widths)
  models = RANModels(spec, input_shape, num_classes, (16,))
  ran = ml_collections.ConfigDict(dict(k=k, lam=lam, l1=lr, l2=lr, l3=lr,
                                       recon_reduction=recon_reduction))
  opts = stages.make_optimizers(ran)
  state = jax.jit(lambda r: stages.init_state(models, opts, r))(jax.random.PRNGKey(seed))
  rng = np.random.default_rng(seed)
  batch_ = {"image": jnp.asarray(rng.uniform(0, 1, (batch,) + tuple(input_shape)), jnp.float32),
            "label": jnp.asarray(rng.integers(0, num_classes, batch), jnp.int32)}
  return models, opts, ran, state, batch_


def run_train(args, env_extra=None, timeout=600):
  """Runs train.py as a user would; returns the CompletedProcess."""
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env["JAX_PLATFORMS"] = "cpu"
  env.update(env_extra or {})
  return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)
