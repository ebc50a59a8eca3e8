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


def subprocess_env(env_extra=None, optimized=False):
  """The environment of a train.py subprocess: CPU, no inherited XLA_FLAGS.

  `optimized=True` compiles as users do: the suite's JAX_DISABLE_MOST_OPTIMIZATIONS
  (tests/conftest.py) is not passed on, for the claims that must hold at the default level.
  """
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  if optimized:
    env.pop("JAX_DISABLE_MOST_OPTIMIZATIONS", None)
  env["JAX_PLATFORMS"] = "cpu"
  env.update(env_extra or {})
  return env


def run_train(args, env_extra=None, timeout=600, optimized=False):
  """Runs train.py as a user would; returns the CompletedProcess."""
  return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args], cwd=ROOT,
                        env=subprocess_env(env_extra, optimized), capture_output=True, text=True,
                        timeout=timeout)


def bench_torch():
  """torch, from the `[bench]` extra (the benchmark's PyTorch reference).

  Without it the test skips, as on a machine set up by README command 2 alone; where
  RAN_TEST_REQUIRE_BENCH=1 (.ci/run, which installs it) a missing torch fails the test.
  """
  import pytest

  if os.environ.get("RAN_TEST_REQUIRE_BENCH") == "1":
    import torch
    return torch
  return pytest.importorskip("torch")


def tpu_plan_libtpu():
  """libtpu, from the `[tpu-plan]` extra (ran-plan's ahead-of-time TPU compilation).

  Without it the calling test module skips, as after the dev install alone; where
  RAN_TEST_REQUIRE_TPU_PLAN=1 (.ci/run, which installs it) a missing libtpu fails it.
  """
  import pytest

  if os.environ.get("RAN_TEST_REQUIRE_TPU_PLAN") == "1":
    import libtpu
    return libtpu
  return pytest.importorskip("libtpu", reason='the [tpu-plan] extra: pip install -e ".[tpu-plan]"')
