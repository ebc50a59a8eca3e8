"""The trained (theta_e, theta_d, theta_c) of a workdir, for evaluation and other tools.

At the end of training the trainer writes `WORKDIR/export/`: the networks
{'params': {encoder, classifier, decoder[, adversaries]}, 'batch_stats': ...}
(through `ran_jax.checkpointing`) and `model.json` (model config, input shape,
classes, value range). `load_trained` reads it back by workdir and rebuilds the
Flax modules; its `encode` / `classify` / `decode` are the stage functions.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import ml_collections
from etils import epath

from ran_jax import checkpointing, stages
from ran_jax.models import RANModels, build_models

EXPORT_DIR = "export"


@dataclasses.dataclass
class Trained:
  config: ml_collections.ConfigDict
  models: RANModels
  params: dict
  batch_stats: dict
  meta: dict

  @property
  def feature_noise(self) -> float:
    return self.models.feature_noise

  def features(self, x):
    """The frozen encoder's features before noise, eval mode: x [B, H, W, C] -> z."""
    return stages.features(self.models, self.params["encoder"], self.batch_stats["encoder"], x,
                           False)[0]

  def encode(self, x, key=None):
    """What the phone releases: features plus noise drawn from `key` (needed if noisy)."""
    return stages.encode(self.models, self.params["encoder"], self.batch_stats["encoder"], x,
                         False, key)[0]

  def classify(self, z):
    return stages.classify(self.models, self.params["classifier"], z, False)

  def decode(self, z):
    return stages.decode(self.models, self.params["decoder"], self.batch_stats["decoder"], z,
                         False)[0]


def _export_dir(workdir) -> epath.Path:
  path = epath.Path(workdir) / EXPORT_DIR
  return path if "://" in str(workdir) else epath.Path(path.resolve())


def export_trained(workdir: str, state, config, input_spec, dataset: str) -> str:
  """Writes the final networks of `state` under WORKDIR/export (overwrites)."""
  path = _export_dir(workdir)
  checkpointing.save_networks(path / "networks",
                              {"params": state.params, "batch_stats": state.batch_stats})
  if jax.process_index() == 0:
    meta = {
        "step": int(jax.device_get(state.step)),
        "dataset": dataset,
        "input_shape": list(input_spec.input_shape),
        "num_classes": int(input_spec.num_classes),
        "value_range": [float(v) for v in input_spec.value_range],
        "config": json.loads(config.to_json_best_effort()),
    }
    (path / "model.json").write_text(json.dumps(meta, indent=2))
  return str(path)


def load_trained(workdir: str) -> Trained:
  """Loads the exported networks of a finished run in `workdir`."""
  path = _export_dir(workdir)
  meta_path = path / "model.json"
  if not meta_path.exists():
    raise FileNotFoundError(
        f"No exported model in {workdir} (missing {meta_path}); train to the end first with "
        f"`python train.py --config=... --workdir={workdir}`.")
  meta = json.loads(meta_path.read_text())
  config = ml_collections.ConfigDict(meta["config"])
  models = build_models(config.model, tuple(meta["input_shape"]), meta["num_classes"],
                        tuple(meta["value_range"]), config.get("ran"))
  params, stats = jax.eval_shape(models.init, jax.random.PRNGKey(0))
  tree = checkpointing.restore_networks(path / "networks", {"params": params, "batch_stats": stats})
  return Trained(config, models, tree["params"], tree["batch_stats"], meta)
