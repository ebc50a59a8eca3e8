"""The files of a deployment and its manifest: what the conversion writes and both sides read.

`WORKDIR/deploy/` holds `encoder.tflite` (and `encoder_int8.tflite`) for the phone,
`classifier.jaxexport` for the server and `deploy.json`, the manifest: shapes, noise
scale, versions and the sha256 of every file, so that an artefact of another model is
refused by name.
"""

from __future__ import annotations

import hashlib
import json
import os

from ran_jax import storage

DEPLOY_DIR = "deploy"
MANIFEST = "deploy.json"
ENCODER_FILE = "encoder.tflite"
ENCODER_INT8_FILE = "encoder_int8.tflite"
CLASSIFIER_FILE = "classifier.jaxexport"
FORMAT = 1
BATCH = 1                              # the phone encodes one example per request


class ArtefactError(ValueError):
  """A deployment artefact that is missing, corrupt, or not the one this model expects."""


def sha256(blob: bytes) -> str:
  return hashlib.sha256(blob).hexdigest()


def deploy_dir(workdir: str) -> str:
  return os.path.join(workdir, DEPLOY_DIR)


def read_bytes(path: str, what: str) -> bytes:
  """An artefact's bytes (local or gs://)."""
  if not storage.path(path).exists():
    raise FileNotFoundError(f"No {what} at {path}; create it with "
                            "`python -m ran_jax.deploy export --workdir=DIR`.")
  return storage.path(path).read_bytes()


def write_bytes(path: str, blob: bytes) -> None:
  """Writes an artefact whole (local or gs://)."""
  storage.write_bytes(path, blob)


def existing(path: str) -> str:
  if not os.path.exists(path):
    raise FileNotFoundError(f"No such file: {path}")
  return path


def read_manifest(directory: str) -> dict:
  path = os.path.join(directory, MANIFEST)
  if not storage.path(path).exists():
    raise FileNotFoundError(f"No deployment manifest {path}; create it with "
                            "`python -m ran_jax.deploy export --workdir=<the workdir>`.")
  try:
    manifest = json.loads(storage.path(path).read_text())
  except json.JSONDecodeError as e:
    raise ArtefactError(f"{path} is not valid JSON ({e}); re-run the export.") from None
  if manifest.get("format") != FORMAT:
    raise ArtefactError(f"{path} has format {manifest.get('format')!r}, this code reads "
                        f"{FORMAT}; re-run the export.")
  return manifest


def check_against_manifest(manifest: dict, key: str, sha: str, path: str) -> None:
  """Refuses a file whose sha256 is not the manifest's entry `key`'s."""
  entry = manifest.get(key)
  if entry is None:
    hint = " --int8" if key == "encoder_int8" else ""
    raise FileNotFoundError(f"The manifest has no {key}; run `python -m ran_jax.deploy export "
                            f"--workdir=DIR{hint}`.")
  if entry["sha256"] != sha:
    raise ArtefactError(f"{path} is not the {key} this manifest was exported with (sha256 "
                        f"{sha[:12]}, expected {entry['sha256'][:12]}): a file of another model "
                        "or another export; re-run the export.")
