"""Types shared by every dataset: random-access splits and the DataSource record.

A split is anything with `__len__` and `get(indices) -> {'image': float32
[n, H, W, C], 'label': int32 [n]}`. Because every split is random access, the
training order is a pure function of (seed, epoch, position) and resume is exact.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from typing import Callable, Optional

import numpy as np


class DataError(ValueError):
  """Bad or missing data; the message says what to provide and where."""


@dataclasses.dataclass
class ArraySplit:
  """An in-memory split: images [N, H, W, C] and int labels [N].

  `transform` (if any) maps a stored batch (e.g. uint8) to float32 model input;
  it is where a dataset states its normalisation, applied per batch so that a
  uint8 dataset stays small in memory.
  """

  images: np.ndarray
  labels: np.ndarray
  transform: Optional[Callable[[np.ndarray], np.ndarray]] = None

  def __len__(self) -> int:
    return len(self.labels)

  def get(self, indices) -> dict:
    x = self.images[indices]
    if self.transform is not None:
      x = self.transform(x)
    return {"image": np.asarray(x, np.float32), "label": self.labels[indices].astype(np.int32)}

def read_records(ds, indices) -> list:
  """Records `indices` of a data source, batched where the source supports it."""
  idx = [int(i) for i in indices]
  try:
    return ds.__getitems__(idx)
  except TypeError:  # tfds.testing.mock_data's source lacks a working __getitems__
    return [ds[i] for i in idx]


class RecordSplit:
  """A lazily read split: `records` is random access (e.g. `tfds.data_source`).

  Each `get` reads only the requested records and maps each one with
  `decode(record) -> (image [H, W, C] float32, label)`, in a small thread pool
  (JPEG decoding and resizing in PIL release the GIL). Used for datasets too big
  to hold in memory, such as ImageNet.
  """

  def __init__(self, records, decode: Callable, workers: int = 4):
    self.records = records
    self.decode = decode
    self.workers = max(1, int(workers))
    self._pool = None

  def __len__(self) -> int:
    return len(self.records)

  def get(self, indices) -> dict:
    recs = read_records(self.records, np.asarray(indices).reshape(-1))
    if self.workers > 1 and len(recs) > 1:
      if self._pool is None:
        self._pool = concurrent.futures.ThreadPoolExecutor(self.workers)
      out = list(self._pool.map(self.decode, recs))
    else:
      out = [self.decode(r) for r in recs]
    return {"image": np.stack([o[0] for o in out]).astype(np.float32),
            "label": np.asarray([o[1] for o in out], np.int32)}


@dataclasses.dataclass
class DataSource:
  name: str
  train: object  # random-access split: __len__ and get(indices) -> {'image', 'label'}
  test: object
  input_shape: tuple
  num_classes: int
  value_range: tuple = (0.0, 1.0)  # bounds of the model input; the decoder's output range
  description: str = ""
