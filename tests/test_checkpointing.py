"""The Orbax checkpoints in-process: what is saved comes back bit-equal, damage is found
and moved aside (never deleted), a checkpoint of another config is refused untouched, and
the fingerprint says exactly which config fields a checkpoint belongs to.

The end-to-end tests (test_train_e2e.py) do the same through train.py; these call
`ran_jax.checkpointing` directly, with known answers.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ran_jax import checkpointing, configs
from ran_jax.checkpointing import CheckpointError, Checkpointer, ForeignCheckpointError
from ran_jax.program import InputSpec

SPEC = InputSpec(input_shape=(8, 8, 1), num_classes=10)
# The digest of the paper's RAN on the embedded digits as the last release wrote it.
PAPER_DIGEST = "5dc536b5a25a5c05"


def _state(seed):
  """A TrainState-like pytree: float and integer leaves, nested."""
  k = jax.random.key(seed)
  return {"theta_e": {"w": jax.random.normal(k, (3, 4)), "b": jnp.arange(4.0) + seed},
          "step": jnp.asarray(seed, jnp.int32)}


def _abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      state)


def _fp(digest="d1"):
  return {"encoder": "lenet", "digest": digest}


def _equal(a, b):
  return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b)))


@pytest.fixture
def three_saves(tmp_path):
  """Steps 1, 2, 3 saved with max_to_keep=2: steps 2 and 3 remain."""
  ck = Checkpointer(str(tmp_path / "ckpt"), max_to_keep=2, async_save=False)
  for s in (1, 2, 3):
    assert ck.save(s, _state(s), {"fingerprint": _fp()})
  ck.wait()
  yield ck
  ck.close()


def test_newest_checkpoint_comes_back_bit_equal_and_only_max_to_keep_remain(three_saves):
  ck = three_saves
  assert ck.all_steps() == [2, 3]
  restored = ck.restore_latest_good(_abstract(_state(0)), _fp())
  assert _equal(restored, _state(3))
  assert int(restored["step"]) == 3
  meta = ck.read_meta(3)
  assert meta["fingerprint"] == _fp()
  # the per-leaf sums saved with the state, in jax.tree.leaves order (b, w, step)
  want = [float(jnp.sum(x.astype(jnp.float32))) for x in jax.tree.leaves(_state(3))]
  np.testing.assert_allclose(meta["leaf_sums"], want, rtol=1e-6)


def _damage_sums(ck, step, leaf, by):
  """Rewrites the leaf sums saved with `step` as if one leaf's bytes had changed by `by`."""
  path = os.path.join(str(ck.directory), str(step), "meta", "metadata")
  with open(path) as f:
    meta = json.load(f)
  meta["leaf_sums"][leaf] += by
  with open(path, "w") as f:
    json.dump(meta, f)


def test_damaged_content_names_the_leaf(three_saves):
  ck = three_saves
  _damage_sums(ck, 3, leaf=1, by=0.5)
  with pytest.raises(CheckpointError, match=r"step 3: .*\(first differing leaf #1\)"):
    ck.restore(3, _abstract(_state(0)))
  # within the tolerance (rtol 1e-5 of a sum near 1): still accepted
  _damage_sums(ck, 2, leaf=2, by=1e-7)
  assert _equal(ck.restore(2, _abstract(_state(0))), _state(2))


def test_damaged_newest_is_moved_aside_and_the_previous_restored(three_saves):
  ck = three_saves
  _damage_sums(ck, 3, leaf=0, by=1.0)
  restored = ck.restore_latest_good(_abstract(_state(0)), _fp())
  assert _equal(restored, _state(2))
  assert ck.all_steps() == [2]
  corrupt = str(ck.directory) + "_corrupt"
  moved = os.listdir(corrupt)
  assert len(moved) == 1 and moved[0].startswith("3-")   # kept, never deleted
  assert os.path.isdir(os.path.join(corrupt, moved[0], "state"))


def test_unreadable_metadata_is_moved_aside(three_saves):
  ck = three_saves
  with open(os.path.join(str(ck.directory), "3", "meta", "metadata"), "w") as f:
    f.write("{not json")
  restored = ck.restore_latest_good(_abstract(_state(0)), _fp())
  assert _equal(restored, _state(2))
  assert os.listdir(str(ck.directory) + "_corrupt")[0].startswith("3-")


def test_all_damaged_gives_none(three_saves):
  ck = three_saves
  _damage_sums(ck, 3, leaf=0, by=1.0)
  _damage_sums(ck, 2, leaf=0, by=1.0)
  assert ck.restore_latest_good(_abstract(_state(0)), _fp()) is None
  assert ck.all_steps() == []
  assert len(os.listdir(str(ck.directory) + "_corrupt")) == 2


def test_foreign_checkpoint_is_refused_and_left_untouched(three_saves):
  ck = three_saves
  with pytest.raises(ForeignCheckpointError, match=r"\(step 3\) of a different model/data"):
    ck.restore_latest_good(_abstract(_state(0)), _fp("other"))
  assert ck.all_steps() == [2, 3]
  assert not os.path.exists(str(ck.directory) + "_corrupt")


def test_empty_directory_gives_none(tmp_path):
  ck = Checkpointer(str(tmp_path / "none"), async_save=False)
  assert ck.all_steps() == []
  assert ck.restore_latest_good(_abstract(_state(0)), _fp()) is None
  ck.close()


def _fingerprint(**changes):
  c = configs.get_config("digits_lenet")
  c.ran.schedule, c.ran.ema_decay = "constant", 0.0     # the paper's RAN
  for key, value in changes.items():
    section, field = key.split("__")
    c[section][field] = value
  return checkpointing.model_fingerprint(c, SPEC)


def test_fingerprint_fields_of_the_paper_config():
  fp = _fingerprint()
  c = configs.get_config("digits_lenet")
  assert {k: v for k, v in fp.items() if k != "digest"} == {
      "encoder": c.model.encoder,
      "widths": list(c.model.widths) if c.model.get("widths") else None,
      "classifier_hidden": list(c.model.classifier_hidden),
      "dataset": "digits", "input_shape": [8, 8, 1], "num_classes": 10}
  assert len(fp["digest"]) == 16


@pytest.mark.parametrize("change,field,value", [
    ({"model__bottleneck_dim": 16}, "bottleneck", [16, "dense"]),
    ({"model__feature_noise": 0.5}, "bounded", True),
    ({"ran__extra_decoders": ("mlp",)}, "extra_decoders", ["mlp"]),
    ({"ran__attribute_weight": 0.1}, "attribute_heads", None),
    ({"ran__schedule": "cosine"}, "schedule", True),
    ({"ran__ema_decay": 0.99}, "ema", True),
])
def test_each_state_changing_field_changes_the_digest(change, field, value):
  base, fp = _fingerprint(), _fingerprint(**change)
  assert field not in base and field in fp
  if value is not None:
    assert fp[field] == value
  assert fp["digest"] != base["digest"]


def test_extra_decoders_record_their_widths():
  fp = _fingerprint(ran__extra_decoders=("mlp", "wide"))
  assert fp["mlp_decoder_hidden"] == [1024] and fp["wide_decoder_mult"] == 2


def test_values_that_do_not_change_the_state_keep_the_digest():
  """Learning rates, lambda and the seed change values, not the state's structure."""
  base = _fingerprint()["digest"]
  assert _fingerprint(ran__lam=0.5)["digest"] == base
  assert _fingerprint(ran__l1=0.5, ran__k=3)["digest"] == base
  other = checkpointing.model_fingerprint(configs.get_config("digits_lenet"),
                                          InputSpec(input_shape=(8, 8, 1), num_classes=9))
  assert other["digest"] != base and other["num_classes"] == 9


def test_exported_networks_round_trip_and_damage_is_named(tmp_path):
  tree = _state(5)
  path = tmp_path / "export" / "networks"
  checkpointing.save_networks(path, tree)
  back = checkpointing.restore_networks(path, _abstract(tree))
  assert _equal(back, tree)
  wrong = {"theta_e": {"w": jax.ShapeDtypeStruct((5, 4), jnp.float32)}}
  with pytest.raises(CheckpointError, match="Cannot read the exported networks in .*networks"):
    checkpointing.restore_networks(path, wrong)


def test_defaults_keep_the_last_two_and_options_are_keyword_only(tmp_path):
  ck = Checkpointer(str(tmp_path / "a" / "b" / "ckpt"))    # a folder that does not exist yet
  for s in (1, 2, 3):
    assert ck.save(s, _state(s), {"fingerprint": _fp()})
  ck.wait()
  assert ck.all_steps() == [2, 3]
  ck.close()
  with pytest.raises(TypeError):
    Checkpointer(str(tmp_path / "c"), 3)   # a bare number is not taken for max_to_keep


def test_a_save_is_never_skipped_silently(three_saves):
  """An earlier step than the newest is written (Orbax would skip it without force), and
  the same step twice is an error rather than a no-op."""
  ck = three_saves
  assert ck.save(1, _state(1), {"fingerprint": _fp()})
  ck.wait()
  assert 1 in ck.all_steps()
  with pytest.raises(Exception, match="already exists"):
    ck.save(3, _state(7), {"fingerprint": _fp()})
    ck.wait()


def test_what_a_killed_save_left_behind_is_cleaned_on_open(tmp_path):
  """A save killed midway leaves Orbax's temporary folder; the next run's Checkpointer
  removes it and keeps the finished checkpoints."""
  ck = Checkpointer(str(tmp_path / "ckpt"), async_save=False)
  assert ck.save(1, _state(1), {"fingerprint": _fp()})
  ck.close()
  tmp = tmp_path / "ckpt" / "5.orbax-checkpoint-tmp-1700000000"
  os.makedirs(tmp / "state")
  again = Checkpointer(str(tmp_path / "ckpt"), async_save=False)
  assert again.save(2, _state(2), {"fingerprint": _fp()})   # Orbax awaits its cleanup here
  again.close()
  assert sorted(os.listdir(tmp_path / "ckpt")) == ["1", "2"]


def test_missing_sums_are_reported_as_damage(three_saves):
  ck = three_saves
  path = os.path.join(str(ck.directory), "3", "meta", "metadata")
  with open(path) as f:
    meta = json.load(f)
  meta["leaf_sums"] = meta["leaf_sums"][:2]
  with open(path, "w") as f:
    json.dump(meta, f)
  with pytest.raises(CheckpointError, match="step 3: 3 leaves restored but 2 sums saved"):
    ck.restore(3, _abstract(_state(0)))


def test_foreign_checkpoint_message_names_both_configs_without_digests(three_saves):
  ck = three_saves
  mine = {"encoder": "alexnet", "digest": "d9"}
  with pytest.raises(ForeignCheckpointError) as e:
    ck.restore_latest_good(_abstract(_state(0)), mine)
  msg = str(e.value)
  assert "{'encoder': 'lenet'} vs this run's {'encoder': 'alexnet'}" in msg
  assert "digest" not in msg and "d1" not in msg


def test_the_paper_config_keeps_its_digest():
  """Checkpoints written by earlier versions resume: the digest of the paper's RAN on the
  embedded digits is pinned (sorted-key JSON of the fields above, SHA-256, 16 hex)."""
  fp = _fingerprint()
  desc = {k: v for k, v in fp.items() if k != "digest"}
  import hashlib
  want = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]
  assert fp["digest"] == want == PAPER_DIGEST


def test_attribute_heads_record_the_attribute_values():
  c = configs.get_config("digits_lenet")
  c.ran.attribute_weight = 0.1
  spec = InputSpec(input_shape=(8, 8, 1), num_classes=10, num_attributes=3)
  fp = checkpointing.model_fingerprint(c, spec)
  assert fp["attribute_heads"][2] == 3
  assert checkpointing.model_fingerprint(c, SPEC)["attribute_heads"][2] == 0


def test_exported_networks_overwrite_and_land_on_the_first_device(tmp_path):
  path = tmp_path / "export" / "networks"
  checkpointing.save_networks(path, _state(1))
  checkpointing.save_networks(path, _state(2))      # a second export replaces the first
  back = checkpointing.restore_networks(path, _abstract(_state(0)))
  assert _equal(back, _state(2))
  assert all(x.devices() == {jax.local_devices()[0]} for x in jax.tree.leaves(back))


_TWO_PROCESSES = r'''
import json, sys, time
import jax
port, pid, directory = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.distributed.initialize(f"127.0.0.1:{port}", 2, pid)
from etils import epath
from ran_jax.checkpointing import Checkpointer
import tests.test_checkpointing as t
if pid == 0:   # process 0 moves the damaged step late: process 1 must wait for it
  cls = type(epath.Path(directory))
  real = cls.rename
  def slow(self, target):
    time.sleep(3.0)
    return real(self, target)
  cls.rename = slow
ck = Checkpointer(directory, async_save=False)
state = ck.restore_latest_good(t._abstract(t._state(0)), t._fp())
print(json.dumps({"steps": ck.all_steps(), "step": int(state["step"])}), flush=True)
ck.close()
'''


@pytest.mark.slow
def test_two_processes_see_the_damaged_checkpoint_moved_before_going_on(three_saves, tmp_path):
  """On a multi-host slice only process 0 moves a damaged checkpoint aside; every process
  waits for it (a barrier) before listing the checkpoints again, so none of them goes on
  believing the damaged one is still there."""
  import socket
  import subprocess
  import sys

  from tests.helpers import ROOT, subprocess_env

  ck = three_saves
  ck.close()
  _damage_sums(ck, 3, leaf=0, by=1.0)
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = subprocess_env({"PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"})
  procs = [subprocess.Popen([sys.executable, "-c", _TWO_PROCESSES, str(port), str(i),
                             str(ck.directory)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=300))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  got = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
  assert got == [{"steps": [2], "step": 2}] * 2
  assert len(os.listdir(str(ck.directory) + "_corrupt")) == 1
