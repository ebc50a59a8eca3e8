"""The trained (theta_e, theta_d, theta_c) of a workdir, for evaluation and other tools.

At the end of training the trainer writes `WORKDIR/export/`: an Orbax checkpoint of
{'params': {encoder, classifier, decoder}, 'batch_stats': {encoder, decoder}} and
`model.json` (model config, input shape, classes, value range). `load_trained`
reads it back by workdir and rebuilds the Flax modules.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from ran_jax.models import RANModels, build_models

EXPORT_DIR = "export"


@dataclasses.dataclass
class Trained:
  config: ml_collections.ConfigDict
  models: RANModels
  params: dict
  batch_stats: dict
  meta: dict

  def encode(self, x):
    """Frozen encoder in eval mode: x [B, H, W, C] -> features."""
    return self.models.encoder.apply(
        {"params": self.params["encoder"], "batch_stats": self.batch_stats["encoder"]}, x, train=False)

  def classify(self, z):
    return self.models.classifier.apply({"params": self.params["classifier"]}, z, train=False)

  def decode(self, z):
    return self.models.decoder.apply(
        {"params": self.params["decoder"], "batch_stats": self.batch_stats["decoder"]}, z, train=False)


def _export_dir(workdir) -> epath.Path:
  path = epath.Path(workdir) / EXPORT_DIR
  return path if "://" in str(workdir) else epath.Path(path.resolve())


def export_trained(workdir: str, state, config, source) -> str:
  """Writes the final networks of `state` under WORKDIR/export (overwrites)."""
  path = _export_dir(workdir)
  tree = {"params": state.params, "batch_stats": state.batch_stats}
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path / "networks", tree, force=True)
  if jax.process_index() == 0:
    meta = {
        "step": int(jax.device_get(state.step)),
        "dataset": source.name,
        "input_shape": list(source.input_shape),
        "num_classes": int(source.num_classes),
        "value_range": [float(v) for v in source.value_range],
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
                        tuple(meta["value_range"]))
  params, stats = jax.eval_shape(models.init, jax.random.PRNGKey(0))
  # Restore onto this process's first device, whatever topology saved it.
  dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=dev),
                        {"params": params, "batch_stats": stats})
  with ocp.StandardCheckpointer() as ckptr:
    tree = ckptr.restore(path / "networks", target)
  return Trained(config, models, tree["params"], tree["batch_stats"], meta)
