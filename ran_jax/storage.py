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
- Prepared TFDS data (`data.data_dir=gs://...`) is read by array_record's reader through the
  google-cloud-cpp client it bundles (the same default credentials);
  `CLOUD_STORAGE_EMULATOR_ENDPOINT` points it elsewhere.

Both defaults are set when `ran_jax` is imported, unless already set in the environment.
Cloud Storage objects cannot be appended to or renamed in place: `write_text` writes an
object whole, and a file opened to append (`metrics.jsonl`) is rewritten whole. Cloud
Storage has no directories (`makedirs` is a no-op there) and no symbolic links.

The helpers below take a local path or a gs:// URL (a str or an `epath.Path`), so that a
command's file operations on its workdir are the same code on both.
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
  # The process id in the name: processes filling one directory (a sweep's --methods)
  # never write into one another's temporary file.
  tmp = target.parent / f".{target.name}.tmp{os.getpid()}"
  tmp.write_bytes(data)
  os.replace(tmp, target)


def read_text(p) -> str:
  """A whole text file (local or gs://), UTF-8, as stored (no newline translation)."""
  return path(p).read_bytes().decode("utf-8")


def read_bytes(p) -> bytes:
  """A whole file (local or gs://)."""
  return path(p).read_bytes()


def exists(p) -> bool:
  """Whether the file or directory `p` exists (gs://: an object, or objects under it)."""
  return path(p).exists()


def makedirs(p) -> None:
  """Creates the directory `p` and its parents (exist_ok). Cloud Storage has no directories
  (an object's name holds its whole path): nothing to do there, and no bucket is created."""
  if not is_remote(p):
    os.makedirs(p, exist_ok=True)


def rmtree(p) -> None:
  """Removes the directory `p` and everything under it (local or gs://); none: nothing."""
  target = path(p)
  if target.exists():
    target.rmtree()


def copytree(src, dst) -> None:
  """Copies the directory `src` to `dst` (local or gs://; each file whole). A local `dst`
  must not exist yet."""
  if not (is_remote(src) or is_remote(dst)):
    import shutil

    shutil.copytree(src, dst)
    return
  src_path, dst_path = path(src), path(dst)
  top = _without_scheme(src_path)
  for root, _, files in src_path.walk():
    # fsspec names the folders it walks without the gs:// scheme
    rel = _without_scheme(root)[len(top):].strip("/")
    for name in files:
      out = dst_path / rel / name if rel else dst_path / name
      makedirs(out.parent)
      write_bytes(out, read_bytes(src_path / rel / name if rel else src_path / name))


def _without_scheme(p) -> str:
  text = os.fspath(p)
  return (text.split("://", 1)[1] if "://" in text else text).rstrip("/")
