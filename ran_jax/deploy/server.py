"""The server side: the exported classifier, and the features files a phone sends.

`classifier.jaxexport` is the classifier in eval mode as serialized StableHLO
(`jax.export`), any batch size, lowered for cpu, cuda and tpu; running it needs only
`jax`, not the training code. `classify_file` refuses features made by an encoder that
is not this deployment's (their sha256 is in the features file).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np

from ran_jax.deploy.artefacts import (MANIFEST, ArtefactError, check_against_manifest,
                                      deploy_dir, existing, read_bytes, read_manifest, sha256)


@dataclasses.dataclass
class ExportedClassifier:
  """The server's classifier: released features [N, *feature_shape] -> logits [N, classes]."""

  exported: object       # jax.export.Exported
  name: str
  sha256: str
  feature_shape: tuple

  def __call__(self, z) -> np.ndarray:
    z = np.asarray(z, np.float32)
    if z.shape[1:] != self.feature_shape:
      raise ArtefactError(f"{self.name} classifies features of shape "
                          f"[N, {', '.join(map(str, self.feature_shape))}], got {list(z.shape)}"
                          ": features of another encoder?")
    return np.asarray(self.exported.call(z))


def load_classifier(workdir: Optional[str] = None,
                    path: Optional[str] = None) -> ExportedClassifier:
  """The serialized classifier of `workdir` (checked against deploy.json) or at `path`."""
  import jax

  manifest = None
  if path is None:
    if workdir is None:
      raise ValueError("Pass a workdir or a classifier path.")
    manifest = read_manifest(deploy_dir(workdir))
    path = os.path.join(deploy_dir(workdir), manifest["classifier"]["file"])
  elif os.path.exists(os.path.join(os.path.dirname(path) or ".", MANIFEST)):
    manifest = read_manifest(os.path.dirname(path) or ".")
  blob = read_bytes(path, "exported classifier")
  if manifest is not None:
    check_against_manifest(manifest, "classifier", sha256(blob), path)
  try:
    exported = jax.export.deserialize(bytearray(blob))
  except Exception as e:  # flatbuffer / struct errors of a damaged file  # noqa: BLE001
    raise ArtefactError(f"{path} is not a readable jax.export artefact (corrupt or truncated?): "
                        f"{type(e).__name__}: {e}") from None
  if len(exported.in_avals) != 1:
    raise ArtefactError(f"{path} takes {len(exported.in_avals)} inputs; a ran_jax classifier "
                        "takes one (the features).")
  shape = tuple(int(d) for d in exported.in_avals[0].shape[1:])
  return ExportedClassifier(exported, path, sha256(blob), shape)



def read_features(path: str) -> dict:
  existing(path)
  try:
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  except (ValueError, OSError) as e:
    raise ArtefactError(f"{path} is not a features file written by `encode`: {e}") from None


def classify_file(classifier: ExportedClassifier, path: str, manifest: Optional[dict] = None):
  """Logits and predicted classes of the features in `path` (checked against the manifest)."""
  data = read_features(path)
  if "features" not in data:
    raise ArtefactError(f"{path} has no 'features' array (keys: {sorted(data)}).")
  if manifest is not None and "encoder_sha256" in data:
    known = {manifest[k]["sha256"] for k in ("encoder", "encoder_int8") if k in manifest}
    if str(data["encoder_sha256"]) not in known:
      raise ArtefactError(f"{path} was encoded by another encoder (sha256 "
                          f"{str(data['encoder_sha256'])[:12]}), not by this deployment's "
                          "(encoder.tflite / encoder_int8.tflite); the classifier would "
                          "answer nonsense.")
  logits = classifier(data["features"])
  return logits, np.argmax(logits, -1), data

