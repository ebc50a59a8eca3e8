"""The defences as one declared set of named terms (ran_jax.stages.PENALTY_TERMS, Defences):
a new feature penalty is one function and one entry, and reaches both encoder stages."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import pytest

from ran_jax import losses, stages
from tests.helpers import tiny_setup


def _ran(**fields):
  return ml_collections.ConfigDict(dict(k=1, lam=0.5, l1=1e-3, l2=1e-3, l3=1e-3,
                                        recon_reduction="sum", **fields))


def test_defences_are_declared_from_the_config():
  assert stages.Defences.from_config(_ran()) == stages.NO_DEFENCES
  d = stages.Defences.from_config(_ran(compactness=0.5, entangle=2.0, entangle_temperature=0.3,
                                       attribute_weight=1.5))
  assert d.penalties == (stages.Penalty("compactness", 0.5),
                         stages.Penalty("entangle", 2.0, (("temperature", 0.3),)))
  assert d.attribute_weight == 1.5
  # an option left out of the config takes the term's default
  assert stages.Defences.from_config(_ran(entangle=1.0)).penalties[0].options == (
      ("temperature", 0.1),)
  hash(d)  # static: bound into the jitted stages


def test_a_new_penalty_is_one_function_and_one_entry(monkeypatch):
  """A toy term registered once is summed by feature_penalties and moves both encoder
  stages; without its weight in the config the stages are unchanged."""
  models, opts, _, state, batch = tiny_setup(batch=8)

  def mean_square(z, batch, models, scale=1.0):
    del batch, models
    return scale * jnp.mean(jnp.square(z))

  monkeypatch.setitem(stages.PENALTY_TERMS, "mean_square",
                      (mean_square, {"scale": ("mean_square_scale", 1.0)}))
  ran = _ran(compactness=0.5, mean_square=2.0, mean_square_scale=3.0)
  d = stages.Defences.from_config(ran)
  assert [p.name for p in d.penalties] == ["compactness", "mean_square"]
  z = jax.random.normal(jax.random.PRNGKey(0), (8, 16))
  want = (0.5 * losses.within_class_variance(z, batch["label"], models.num_classes)
          + 2.0 * 3.0 * jnp.mean(jnp.square(z)))
  chex.assert_trees_all_close(stages.feature_penalties(z, batch, models, d), want, rtol=1e-6)
  assert stages.feature_penalties(z, batch, models) == 0.0

  on = stages.bind_stages(models, opts, ran)
  off = stages.bind_stages(models, opts, _ran(compactness=0.5))
  assert on.disc.keywords["defences"] == on.adv.keywords["defences"] == d
  for stage in ("disc", "adv"):
    s_on, m_on = jax.jit(getattr(on, stage))(state, batch)
    s_off, m_off = jax.jit(getattr(off, stage))(state, batch)
    loss = f"{stage}/loss"
    assert float(m_on[loss]) > float(m_off[loss])
    chex.assert_trees_all_close(m_on[f"{stage}/ce"], m_off[f"{stage}/ce"])
    delta = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), s_on.params["encoder"],
                         s_off.params["encoder"])
    assert max(jax.tree.leaves(delta)) > 0


def test_an_unknown_term_cannot_be_bound():
  with pytest.raises(KeyError):
    stages.Penalty("no_such_term", 1.0)(jnp.zeros((2, 3)), {}, None)
