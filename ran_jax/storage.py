"""Where a run's files live: a local directory or Cloud Storage (`gs://bucket/...`).

Every command reads and writes its `--workdir` (and a TFDS `data_dir`) through etils
`epath`; Orbax writes the checkpoints' arrays through tensorstore. On Cloud Storage:

- `epath` goes through fsspec's `gcsfs` (Cloud Storage's JSON API, Google's default
  credentials: on a TPU VM its service account), not TensorFlow's file system, which epath
  would pick whenever TensorFlow is installed (`EPATH_USE_TF=false` here). Both reach the
  same buckets; gcsfs is the one whose endpoint can be pointed at a local server
  (`STORAGE_EMULATOR_HOST`), so the path a TPU VM takes is the path the tests take, and it
  does not depend on TensorFlow, which the training loop does not otherwise need.
- gcsfs's experimental zonal / hierarchical-namespace layer is off
  (`GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`): it asks another API (Storage Control, over
  gRPC) about every bucket, warns on each path where it cannot, and is not what a
  standard regional bucket needs.
- tensorstore uses its own client (the same default credentials); `TENSORSTORE_GCS_HTTP_URL`
  points it elsewhere.

Both defaults are set when `ran_jax` is imported, unless already set in the environment.
Cloud Storage objects cannot be appended to or renamed in place: `write_text` writes an
object whole, and a file opened to append (`metrics.jsonl`) is rewritten whole.
"""

from __future__ import annotations

import os

DEFAULTS = {"EPATH_USE_TF": "false", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


def use_gcsfs() -> None:
  """epath's gs:// through gcsfs's JSON API (see the module docstring); user settings kept."""
  for k, v in DEFAULTS.items():
    os.environ.setdefault(k, v)


def is_remote(path) -> bool:
  """True for a URL-like path (gs://, s3://, ...): no local file system operations on it."""
  return "://" in os.fspath(path)


def path(p):
  """`p` as an `epath.Path` (local or gs://)."""
  from etils import epath

  return epath.Path(p)


def write_text(p, text: str) -> None:
  """Writes a whole text file (local or gs://) as `write_bytes` does, UTF-8."""
  write_bytes(p, text.encode("utf-8"))


def write_bytes(p, data: bytes) -> None:
  """Writes a whole file (local or gs://): a local file through a temporary one and a rename,
  so a reader never sees half of it; a Cloud Storage object appears whole when its upload
  completes."""
  target = path(p)
  if is_remote(p):
    target.write_bytes(data)
    return
  tmp = target.parent / f".{target.name}.tmp"
  tmp.write_bytes(data)
  os.replace(tmp, target)
