"""Two Algorithm-1 iterations of the paper's RAN (defaults), state leaves saved by path.

  PYTHONPATH=. python tests/golden/make_paper_ran_2iter.py tests/golden/paper_ran_2iter.npz

paper_ran_2iter.npz was written by this script on the code before any defence existed
(commit 916ba43); tests/test_defences.py runs `paper_ran_state` on the current code and
compares.
"""

import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ran_jax import stages
from ran_jax.models import RANModels, build_encoder_spec


def paper_ran_state():
  """The state after two fused iterations (k=2, lambda 0.3, dropout 0.1, batch 16), as leaves."""
  spec = build_encoder_spec("lenet5", (28, 28, 1), (4, 8))
  models = RANModels(spec, (28, 28, 1), 10, (16,), dropout=0.1)
  ran = ml_collections.ConfigDict(dict(k=2, lam=0.3, l1=1e-3, l2=1e-3, l3=1e-3,
                                       recon_reduction="sum"))
  opts = stages.make_optimizers(ran)
  state = jax.jit(lambda r: stages.init_state(models, opts, r))(jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.uniform(0, 1, (16, 28, 28, 1)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 10, 16), jnp.int32)}
  fns = stages.bind_stages(models, opts, ran)
  it = jax.jit(lambda s, b: stages.ran_iteration(s, b, stages=fns, k=2))
  for _ in range(2):
    state, _ = it(state, batch)
  flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}


if __name__ == "__main__":
  np.savez(sys.argv[1], **paper_ran_state())
