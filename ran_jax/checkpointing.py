"""The one module that talks to Orbax.

A checkpoint holds the whole TrainState under 'state' (theta_e, theta_d, theta_c,
the three Adam states, the step and the RNG; the input position is the step,
because the pipeline's order is a pure function of it) and a JSON 'meta' item:
the model/data fingerprint (to refuse checkpoints of another config) and per-leaf
sums of the state (to detect a checkpoint whose bytes were damaged).

Saves are asynchronous and atomic (Orbax writes into a temporary folder and
renames it when complete), so a kill during a save leaves the previous
checkpoints intact. Paths may be local or gs://.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger("ran_jax")


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used; the message says which and why."""


class ForeignCheckpointError(CheckpointError):
  """The workdir holds a checkpoint of a different model/data config."""


@jax.jit
def leaf_sums(state):
  """One float per leaf: a cheap content fingerprint computed on device."""
  return [jnp.sum(jnp.asarray(x, jnp.float32)) for x in jax.tree.leaves(state)]


def _path(p: str) -> epath.Path:
  path = epath.Path(p)
  return path if "://" in p else epath.Path(path.resolve())


class Checkpointer:
  def __init__(self, directory: str, *, max_to_keep: int = 2, async_save: bool = True):
    self.directory = _path(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True)   # what a save killed midway left behind
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "meta"))

  def all_steps(self):
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, meta: dict) -> bool:
    meta = dict(meta, leaf_sums=[float(v) for v in jax.device_get(leaf_sums(state))])
    return self.manager.save(
        int(step),
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=True)

  def read_meta(self, step: int) -> dict:
    out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(out["meta"])

  def restore(self, step: int, abstract_state):
    """Restores `step` onto the shardings of `abstract_state` and verifies its content."""
    out = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                      meta=ocp.args.JsonRestore()))
    state, meta = out["state"], out["meta"]
    expected = meta.get("leaf_sums")
    if expected is not None:
      got = np.asarray(jax.device_get(leaf_sums(state)), np.float64)
      expected = np.asarray(expected, np.float64)
      if got.shape != expected.shape:
        raise CheckpointError(f"step {step}: {got.size} leaves restored but {expected.size} "
                              "sums saved with them; the files are damaged.")
      if not np.allclose(got, expected, rtol=1e-5, atol=1e-6):
        bad = int(np.argmax(~np.isclose(got, expected, rtol=1e-5, atol=1e-6)))
        raise CheckpointError(f"step {step}: restored content does not match the sums saved "
                              f"with it (first differing leaf #{bad}); the files are damaged.")
    return state

  def restore_latest_good(self, abstract_state, fingerprint: dict):
    """Restores the newest usable checkpoint, or returns None when there is none.

    A damaged or partially written checkpoint is reported, moved aside to
    `<checkpoints>_corrupt/` (kept for inspection, never deleted) and the previous
    one is tried. A checkpoint of a different model/data config stops the run.
    """
    for step in reversed(self.all_steps()):
      try:
        meta = self.read_meta(step)
      except Exception as e:  # noqa: BLE001 - any read failure means unusable
        self._quarantine(step, f"its metadata cannot be read ({type(e).__name__}: {e})")
        continue
      theirs = meta.get("fingerprint", {})
      if theirs.get("digest") != fingerprint["digest"]:
        raise ForeignCheckpointError(
            f"{self.directory} holds a checkpoint (step {step}) of a different model/data config: "
            f"{ {k: v for k, v in theirs.items() if k != 'digest'} } vs this run's "
            f"{ {k: v for k, v in fingerprint.items() if k != 'digest'} }. Use another --workdir; "
            "the existing checkpoint was left untouched.")
      try:
        state = self.restore(step, abstract_state)
      except Exception as e:  # noqa: BLE001
        self._quarantine(step, f"{type(e).__name__}: {str(e)[:500]}")
        continue
      return state
    return None

  def _quarantine(self, step: int, why: str):
    src = self.directory / str(step)
    dst_dir = epath.Path(str(self.directory) + "_corrupt")
    log.warning("Checkpoint step %d in %s is unusable: %s. Moving it to %s and falling back to "
                "the previous checkpoint.", step, self.directory, why, dst_dir)
    if jax.process_index() == 0:
      dst_dir.mkdir(parents=True, exist_ok=True)
      src.rename(dst_dir / f"{step}-{int(time.time())}")
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices(f"ran_quarantine_{step}")
    self.manager.reload()

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def model_fingerprint(config, input_spec) -> dict:
  """What must match for a checkpoint to belong to this run (state structure, not values).

  Defence fields enter only when set, so checkpoints of the paper's RAN keep their
  digest across versions.
  """
  from ran_jax.data import own

  m, r = config.model, config.ran
  desc = {
      "encoder": m.encoder,
      "widths": list(m.widths) if m.get("widths") else None,
      "classifier_hidden": list(m.classifier_hidden),
      "dataset": own.data_identity(config.data.name),   # own data: its resolved path
      "input_shape": list(input_spec.input_shape),
      "num_classes": int(input_spec.num_classes),
  }
  if m.bottleneck_dim:
    desc["bottleneck"] = [int(m.bottleneck_dim), m.get("bottleneck_kind", "dense")]
  if m.get("feature_noise", 0.0):
    desc["bounded"] = True
  if r.get("extra_decoders", ()):
    desc["extra_decoders"] = list(r.extra_decoders)
    desc["mlp_decoder_hidden"] = list(r.get("mlp_decoder_hidden", (1024,)))
    desc["wide_decoder_mult"] = int(r.wide_decoder_mult)
  if r.get("attribute_weight", 0.0):
    desc["attribute_heads"] = [list(r.get("attribute_heads", ())),
                               list(r.get("attribute_hidden", ())),
                               int(input_spec.num_attributes)]
  if r.get("schedule", "constant") != "constant":
    desc["schedule"] = True  # the Adam states carry a schedule count
  if r.get("ema_decay", 0.0):
    desc["ema"] = True
  desc["digest"] = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]
  return desc


# ---------------------------------------------------------------- exported networks


def save_networks(path, tree) -> None:
  """Writes a pytree of final networks (overwrites), for `ran_jax.export`."""
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(_path(str(path)), tree, force=True)


def restore_networks(path, abstract_tree):
  """Reads networks saved by `save_networks` onto this process's first device."""
  dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=dev),
                        abstract_tree)
  try:
    with ocp.StandardCheckpointer() as ckptr:
      return ckptr.restore(_path(str(path)), target)
  except Exception as e:  # noqa: BLE001 - any read failure: say which files and why
    raise CheckpointError(f"Cannot read the exported networks in {path}: {type(e).__name__}: "
                          f"{str(e)[:300]}. The export is damaged or from another model "
                          "config; re-run training to the end to write it again.") from None
