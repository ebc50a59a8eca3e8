"""The trained (theta_e, theta_d, theta_c) of a workdir, for evaluation and other tools.

At the end of training the trainer writes `WORKDIR/export/`: the networks
{'params': {encoder, classifier, decoder[, adversaries]}, 'batch_stats': ...}
(through `ran_jax.checkpointing`) and `model.json` (model config, input shape,
classes, value range). `load_trained` reads it back by workdir and rebuilds the
Flax modules; its `encode` / `classify` / `decode` are the stage functions.

An attribute eraser (`ran_jax.privacy.erasure`, written by `ran-erase`) in
`export/eraser.npz` is loaded with them: a fixed affine map on the clean features, before
the release noise, and the classifier refit on its releases. `features`, `encode` and
`classify` then are the erased encoder and that classifier, for every tool that loads
the run (attacks, sweeps, the deployment). A new export (training to the end again)
removes it: it was fitted on the old encoder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Optional

import jax
import ml_collections
import numpy as np
from etils import epath

from ran_jax import checkpointing, stages
from ran_jax.models import RANModels, build_models
from ran_jax.privacy import erasure

log = logging.getLogger("ran_jax")

EXPORT_DIR = "export"


@dataclasses.dataclass
class Trained:
  config: ml_collections.ConfigDict
  models: RANModels
  params: dict
  batch_stats: dict
  meta: dict
  # The attribute eraser on the clean features (None: none); `params['classifier']` is
  # then the classifier refit on its releases.
  eraser: Optional[erasure.Eraser] = None

  @property
  def feature_noise(self) -> float:
    return self.models.feature_noise

  def features(self, x):
    """The frozen encoder's features before noise, eval mode: x [B, H, W, C] -> z
    (erased, when the run carries an eraser)."""
    z = stages.features(self.models, self.params["encoder"], self.batch_stats["encoder"], x,
                        False)[0]
    return z if self.eraser is None else self.eraser.apply(z)

  def encode(self, x, key=None):
    """What the phone releases: features plus noise drawn from `key` (needed if noisy)."""
    return stages.release(self.models, self.features(x), key)

  def classify(self, z):
    return stages.classify(self.models, self.params["classifier"], z, False)

  def decode(self, z):
    return stages.decode(self.models, self.params["decoder"], self.batch_stats["decoder"], z,
                         False)[0]


def _export_dir(workdir) -> epath.Path:
  path = epath.Path(workdir) / EXPORT_DIR
  return path if "://" in str(workdir) else epath.Path(path.resolve())


def eraser_path(workdir) -> epath.Path:
  """WORKDIR/export/eraser.npz."""
  return _export_dir(workdir) / erasure.ERASER_FILE


def remove_eraser(workdir) -> bool:
  """Deletes the run's eraser (and its report); True if there was one."""
  found = False
  for name in (erasure.ERASER_FILE, erasure.ERASER_REPORT):
    p = _export_dir(workdir) / name
    if p.exists():
      p.unlink()
      found = True
  return found


def export_trained(workdir: str, state, config, input_spec, dataset: str) -> str:
  """Writes the final networks of `state` under WORKDIR/export (overwrites; removes an
  eraser fitted on the networks it replaces)."""
  path = _export_dir(workdir)
  if jax.process_index() == 0 and remove_eraser(workdir):
    log.info("export: removed the attribute eraser of the previous export (fitted on other "
             "networks); fit it again with ran-erase")
  checkpointing.save_networks(path / "networks",
                              {"params": state.params, "batch_stats": state.batch_stats})
  if jax.process_index() == 0:
    meta = {
        "step": int(jax.device_get(state.step)),
        "dataset": dataset,
        "input_shape": list(input_spec.input_shape),
        "num_classes": int(input_spec.num_classes),
        "value_range": [float(v) for v in input_spec.value_range],
        "num_attributes": int(getattr(input_spec, "num_attributes", 0)),
        "config": json.loads(config.to_json_best_effort()),
    }
    (path / "model.json").write_text(json.dumps(meta, indent=2))
  return str(path)


def load_trained(workdir: str, eraser: bool = True) -> Trained:
  """Loads the exported networks of a finished run in `workdir`; with `eraser` (default)
  also its attribute eraser and the classifier refit on it, when the run has one.

  Raises FileNotFoundError (no finished run), checkpointing.CheckpointError (damaged
  networks), erasure.EraserError (an eraser file that is damaged or does not fit).
  """
  path = _export_dir(workdir)
  meta_path = path / "model.json"
  if not meta_path.exists():
    raise FileNotFoundError(
        f"No exported model in {workdir} (missing {meta_path}); train to the end first with "
        f"`ran-train --config=... --workdir={workdir}`.")
  meta = json.loads(meta_path.read_text())
  config = ml_collections.ConfigDict(meta["config"])
  models = build_models(config.model, tuple(meta["input_shape"]), meta["num_classes"],
                        tuple(meta["value_range"]), config.get("ran"),
                        meta.get("num_attributes", 0))
  params, stats = jax.eval_shape(models.init, jax.random.PRNGKey(0))
  tree = checkpointing.restore_networks(path / "networks", {"params": params, "batch_stats": stats})
  trained = Trained(config, models, tree["params"], tree["batch_stats"], meta)
  if eraser and (path / erasure.ERASER_FILE).exists():
    attach_eraser(trained, path / erasure.ERASER_FILE)
  return trained


def feature_dim(trained) -> int:
  """The number of values of one example's clean features."""
  x = jax.ShapeDtypeStruct((1, *trained.meta["input_shape"]), "float32")
  shape = jax.eval_shape(
      lambda xb: stages.features(trained.models, trained.params["encoder"],
                                 trained.batch_stats["encoder"], xb, False)[0], x).shape
  return int(np.prod(shape[1:]))


def attach_eraser(trained: Trained, path) -> Trained:
  """Loads the eraser file `path` into `trained` (the eraser and its refit classifier)."""
  er, classifier = erasure.load_eraser(path, feature_dim(trained), trained.params["classifier"])
  step = er.fitted_on.get("step")
  if step is not None and step != trained.meta.get("step"):
    raise erasure.EraserError(
        f"The eraser {path} was fitted on the networks of step {step}, the export is of step "
        f"{trained.meta.get('step')}; write it again with ran-erase.")
  trained.eraser = er
  trained.params = {**trained.params, "classifier": classifier}
  return trained
