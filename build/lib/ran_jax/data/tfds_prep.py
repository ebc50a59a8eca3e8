"""Offline TFDS preparation and TF-free reading.

Preparation goes through TFDS's own mechanisms: `tfds.builder(...)` with a
`data_dir`, and `download_and_prepare(download_config=DownloadConfig(manual_dir=...))`.
For a catalog dataset with registered checksums (mnist, cifar10, ...) TFDS looks
for each URL's file name in `manual_dir`, verifies its size and sha256, and never
touches the network. Datasets are written as array_record so that reading them
back (`tfds.data_source`) is random access and needs no TensorFlow; only
preparing a catalog dataset needs TensorFlow (tensorflow-cpu, input side only).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
import tempfile
from typing import Optional

from ran_jax.data.source import DataError

log = logging.getLogger("ran_jax")

ARRAY_RECORD = "array_record"


def default_data_dir(data_dir: Optional[str]) -> str:
  return os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))


def _tfds():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  return tfds


def is_tfds_name(name: str) -> bool:
  """Whether `name` (optionally 'name/config:version') is a registered TFDS builder."""
  tfds = _tfds()
  base = name.split("/")[0].split(":")[0]
  try:
    tfds.builder_cls(base)
    return True
  except Exception:  # noqa: BLE001 - DatasetNotFoundError and friends
    return False


def has_tensorflow() -> bool:
  """Whether TensorFlow can be imported (checked without importing it)."""
  if "tensorflow" in sys.modules:
    return sys.modules["tensorflow"] is not None
  return importlib.util.find_spec("tensorflow") is not None


def get_builder(name_or_cls, data_dir: Optional[str], **kwargs):
  """A TFDS builder writing array_record into `data_dir` (a name or a builder class)."""
  tfds = _tfds()
  data_dir = default_data_dir(data_dir)
  if isinstance(name_or_cls, str):
    try:
      return tfds.builder(name_or_cls, data_dir=data_dir, file_format=ARRAY_RECORD, **kwargs)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise DataError(f"Unknown TFDS dataset {name_or_cls!r}: {str(e).splitlines()[0]} "
                      "Name one from https://www.tensorflow.org/datasets/catalog.") from None
  return name_or_cls(data_dir=data_dir, file_format=ARRAY_RECORD, **kwargs)


def expected_manual_files(builder) -> list[str]:
  """File names TFDS will look for in manual_dir (from its registered checksums)."""
  try:
    infos = builder.url_infos or {}
  except Exception:  # noqa: BLE001 - builders without checksums
    infos = {}
  return sorted({i.filename for i in infos.values() if i.filename})


def prepare(builder, manual_dir: Optional[str], *, what: str = "", check_files: bool = True,
            max_examples_per_split: Optional[int] = None):
  """Prepares `builder` into its data_dir unless already there; errors become DataError.

  `what` describes the manual files (shown when something is missing). When
  `manual_dir` is given, files TFDS expects there are checked first, so that a
  missing file stops with a message instead of a download attempt on an
  air-gapped machine. `max_examples_per_split` (tests) writes only the first N
  examples of each split; the files are still checksummed in full.
  """
  tfds = _tfds()
  name = builder.info.full_name
  if builder.is_prepared():
    return builder
  if manual_dir:
    manual_dir = os.path.expanduser(manual_dir)
    if not os.path.isdir(manual_dir):
      raise DataError(f"{name}: --config.data.manual_dir={manual_dir} is not a directory. "
                      f"Provide {what or 'the raw files'} there.")
    if check_files:
      missing = [f for f in expected_manual_files(builder)
                 if not os.path.exists(os.path.join(manual_dir, f))]
      if missing:
        raise DataError(f"{name}: missing in --config.data.manual_dir={manual_dir}: "
                        f"{', '.join(missing)}. Provide {what or 'these files'} there "
                        "(TFDS verifies their checksums).")
  log.info("Preparing %s into %s (manual_dir=%s)", name, builder.data_dir, manual_dir)
  if not has_tensorflow():
    if not getattr(builder, "PREPARES_WITHOUT_TF", False):
      raise DataError(f"{name} is not prepared in {builder.data_dir} and preparing it needs "
                      "TensorFlow: pip install tensorflow-cpu (see requirements.txt), or point "
                      "--config.data.data_dir at an already prepared copy.")
  tfds.disable_progress_bar()  # per-example bars would flood the training log
  # Extracted archives go to a scratch folder removed afterwards: data_dir keeps only
  # the prepared array_record files (MNIST would otherwise leave 53 MB of raw IDX).
  root = os.fspath(builder.data_dir_root)
  os.makedirs(root, exist_ok=True)
  scratch = tempfile.mkdtemp(prefix=".ran_jax_downloads-", dir=root)
  try:
    dl_config = tfds.download.DownloadConfig(manual_dir=manual_dir,
                                             max_examples_per_split=max_examples_per_split)
    builder.download_and_prepare(download_dir=scratch, download_config=dl_config,
                                 file_format=ARRAY_RECORD)
  except tfds.core.download.download_manager.NonMatchingChecksumError as e:
    raise DataError(f"{name}: a file has the wrong checksum (corrupt or not the canonical "
                    f"file). Replace it in --config.data.manual_dir={manual_dir}.\n{e}") from None
  except DataError:
    raise
  except Exception as e:  # noqa: BLE001 - TFDS raises many types; say what to provide
    hint = (f"Provide {what} in --config.data.manual_dir" if what else
            "Provide the raw files with --config.data.manual_dir or a prepared "
            "--config.data.data_dir")
    if not manual_dir:
      hint += " (no manual_dir was given, so TFDS tried to download, which needs network)"
    raise DataError(f"Could not prepare {name} into {builder.data_dir}: "
                    f"{type(e).__name__}: {e}\n{hint}.") from e
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  return builder


def data_source(builder, split: str, decoders=None):
  """A random-access reader of a prepared split (array_record, no TensorFlow)."""
  if builder.info.splits and split not in builder.info.splits:
    raise DataError(f"{builder.info.full_name} has no split {split!r}; it has "
                    f"{sorted(builder.info.splits)}.")
  try:
    return builder.as_data_source(split=split, decoders=decoders)
  except Exception as e:  # noqa: BLE001 - e.g. prepared as tfrecord: no random access
    raise DataError(f"Cannot open {builder.info.full_name}[{split}] in {builder.data_dir} for "
                    f"random access ({type(e).__name__}: {e}). It must be prepared as "
                    "array_record: prepare it again into an empty --config.data.data_dir.") from e


