"""Grouped batch-norm (`model.bn_group_size`) and rematerialisation (`model.remat`).

Grouped statistics are checked against an independent reference (Flax's nn.BatchNorm
applied to each group on its own), and a data-parallel iteration with groups of the
per-device batch is checked to give the same state on 1 and on 4 devices. The
rematerialised blocks must give the same parameters' names and the same gradients.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ran_jax import configs, parallel
from ran_jax.config_lib import ConfigError, validate_config
from ran_jax.models import encoders, modules
from ran_jax.program import InputSpec, build_program


def test_grouped_statistics_equal_batch_norm_of_each_group():
  x = jax.random.normal(jax.random.PRNGKey(3), (12, 5, 5, 3)) * 3.0 + 1.0
  gbn = modules.GroupBatchNorm(4)
  v = gbn.init(jax.random.PRNGKey(0), x)
  y, new = gbn.apply(v, x, mutable=["batch_stats"])
  ref = nn.BatchNorm(use_running_average=False, momentum=modules.BN_MOMENTUM,
                     epsilon=modules.BN_EPSILON)
  ys, means, vars_ = [], [], []
  for g in range(3):
    yg, sg = ref.apply(v, x[4 * g:4 * (g + 1)], mutable=["batch_stats"])
    ys.append(yg)
    means.append(sg["batch_stats"]["mean"])
    vars_.append(sg["batch_stats"]["var"])
  chex.assert_trees_all_close(y, jnp.concatenate(ys), atol=1e-5)
  chex.assert_trees_all_close(new["batch_stats"]["mean"], np.mean(means, 0), atol=1e-6)
  chex.assert_trees_all_close(new["batch_stats"]["var"], np.mean(vars_, 0), atol=1e-5)
  # Not the whole batch's statistics: the groups differ.
  y_all, _ = ref.apply(v, x, mutable=["batch_stats"])
  assert float(jnp.max(jnp.abs(y_all - y))) > 1e-2


def test_grouped_batch_norm_evaluates_with_running_statistics():
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 3)) + 2.0
  v = {"params": {"scale": jnp.full((3,), 2.0), "bias": jnp.ones((3,))},
       "batch_stats": {"mean": jnp.full((3,), 0.5), "var": jnp.full((3,), 4.0)}}
  y = modules.GroupBatchNorm(4, use_running_average=True).apply(v, x)
  chex.assert_trees_all_close(y, (x - 0.5) / jnp.sqrt(4.0 + modules.BN_EPSILON) * 2.0 + 1.0,
                              atol=1e-6)


def test_group_that_does_not_divide_the_batch_is_refused():
  with pytest.raises(ValueError, match="bn_group_size=3 must divide the batch of 8"):
    modules.GroupBatchNorm(3).init(jax.random.PRNGKey(0), jnp.ones((8, 2)))
  c = configs.get_config("digits_lenet")
  c.model.bn_group_size = 5
  with pytest.raises(ConfigError, match="bn_group_size=5: must divide batch_size"):
    validate_config(c)


@pytest.mark.parametrize("impl", ["xla", "fast"])
def test_remat_keeps_names_and_gradients(impl):
  spec = encoders.vgg16((32, 32, 3), (4, 4, 8, 8, 8))
  x = jax.random.uniform(jax.random.PRNGKey(0), (4, 32, 32, 3))
  results = {}
  for remat in modules.REMAT_POLICIES:
    enc = modules.Encoder(spec, conv_impl=impl, remat=remat, bn_group_size=2)
    dec = modules.Decoder(spec, (32, 32, 3), conv_impl=impl, remat=remat, bn_group_size=2)
    ve = enc.init(jax.random.PRNGKey(1), x, train=False)
    vd = dec.init(jax.random.PRNGKey(2), enc.apply(ve, x, train=False), train=False)

    def loss(pe, pd, enc=enc, dec=dec, ve=ve, vd=vd):
      z, _ = enc.apply({"params": pe, "batch_stats": ve["batch_stats"]}, x, train=True,
                       mutable=["batch_stats"])
      r, _ = dec.apply({"params": pd, "batch_stats": vd["batch_stats"]}, z, train=True,
                       mutable=["batch_stats"])
      return jnp.sum((r - x) ** 2)

    results[remat] = (jax.tree.structure((ve, vd)),
                      jax.jit(jax.grad(loss, argnums=(0, 1)))(ve["params"], vd["params"]))
  for remat in ("conv", "full"):
    assert results[remat][0] == results["none"][0]
    chex.assert_trees_all_close(results[remat][1], results["none"][1], atol=1e-5, rtol=1e-5)


def _iterate(config, devices, batch):
  mesh = parallel.make_mesh(devices)
  prog = build_program(config, mesh, InputSpec((28, 28, 1), 10))
  state = prog.create_state()
  batch = parallel.to_global(batch, mesh)
  state, metrics = prog.iteration(state, batch)
  return jax.device_get(state.params), jax.device_get(state.batch_stats), jax.device_get(metrics)


def test_groups_of_the_device_batch_give_the_same_state_on_one_and_four_devices():
  assert len(jax.devices()) >= 4
  c = configs.get_config("digits_lenet:paper,smoke")
  c.model.bn_group_size = c.batch_size // 4
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(size=(c.batch_size, 28, 28, 1)).astype(np.float32),
           "label": rng.integers(0, 10, size=(c.batch_size,)).astype(np.int32)}
  one = _iterate(c, jax.devices()[:1], batch)
  four = _iterate(c, jax.devices()[:4], batch)
  # One Algorithm-1 iteration (7 Adam updates); see tests/test_distributed.py on tolerances.
  chex.assert_trees_all_close(four[:2], one[:2], atol=1e-4, rtol=1e-3)
  # ... and grouped statistics really differ from whole-batch ones.
  c.model.bn_group_size = 0
  whole = _iterate(c, jax.devices()[:1], batch)
  stats = jax.tree.leaves(whole[1]), jax.tree.leaves(one[1])
  assert max(float(np.max(np.abs(a - b))) for a, b in zip(*stats)) > 1e-5


# ---------------------------------------------------------------- the classifier over devices


def _classifier_sharded_config():
  c = configs.get_config("digits_lenet:paper,smoke")
  c.model.classifier_hidden = (16, 12)
  return c


def test_classifier_split_over_a_model_axis_gives_the_same_iteration():
  """fc1/fc2 split over groups of 2 of 4 devices: the same maths as one device."""
  c = _classifier_sharded_config()
  rng = np.random.default_rng(1)
  batch = {"image": rng.uniform(size=(c.batch_size, 28, 28, 1)).astype(np.float32),
           "label": rng.integers(0, 10, size=(c.batch_size,)).astype(np.int32)}
  one = _iterate(c, jax.devices()[:1], batch)
  c.model.classifier_shards = 2
  mesh = parallel.make_mesh(jax.devices()[:4], model_shards=2)
  assert dict(mesh.shape) == {"data": 2, "model": 2}
  prog = build_program(c, mesh, InputSpec((28, 28, 1), 10))
  state = prog.create_state()
  spec = jax.sharding.PartitionSpec
  assert state.params["classifier"]["fc1"]["kernel"].sharding.spec == spec(None, "model")
  assert state.params["classifier"]["fc2"]["kernel"].sharding.spec == spec("model", None)
  assert state.params["classifier"]["logits"]["kernel"].sharding.is_fully_replicated
  adam = state.opt_state["disc"]
  moments = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(adam)
             if "fc1" in jax.tree_util.keystr(path) and "kernel" in jax.tree_util.keystr(path)]
  assert moments and all(m.sharding.spec == spec(None, "model") for m in moments)
  state, _ = prog.iteration(state, parallel.to_global(batch, mesh))
  four = jax.device_get(prog.replicate(state).params)
  chex.assert_trees_all_close(four, one[0], atol=1e-4, rtol=1e-3)


def test_classifier_shards_are_checked():
  c = _classifier_sharded_config()
  c.model.classifier_shards = 3
  with pytest.raises(ConfigError, match="classifier_shards=3: must divide the first hidden"):
    validate_config(c, num_devices=4)
  c.model.classifier_shards = 8
  with pytest.raises(ConfigError, match="classifier_shards=8: must divide the 4 devices"):
    validate_config(c, num_devices=4)
  c.model.classifier_hidden = (16,)
  c.model.classifier_shards = 2
  with pytest.raises(ConfigError, match="at least two hidden layers"):
    validate_config(c, num_devices=4)


def test_training_with_a_sharded_classifier_checkpoints_resumes_and_exports(tmp_path, caplog):
  """Train 2 steps on 4 devices with fc1/fc2 split in 2, stop, resume to 4: the checkpoint
  holds the split arrays and the export the whole classifier."""
  from ran_jax import trainer
  from ran_jax.export import load_trained

  c = _classifier_sharded_config()
  c.model.classifier_shards = 2
  c.max_steps = 2
  trainer.train_and_evaluate(c, str(tmp_path))
  c.max_steps = 4
  with caplog.at_level("INFO", logger="ran_jax"):
    final = trainer.train_and_evaluate(c, str(tmp_path))
  assert "Resumed from" in caplog.text and "Training steps 2..4" in caplog.text
  t = load_trained(str(tmp_path))
  assert t.meta["step"] == 4
  assert np.asarray(t.params["classifier"]["fc1"]["kernel"]).shape == (400, 16)  # whole
  assert 0.0 < final["accuracy"] and np.isfinite(final["recon_sse"])
