"""Types shared by every dataset: random-access splits and the DataSource record.

A split is anything with `__len__` and `get(indices) -> {'image': float32
[n, H, W, C], 'label': int32 [n]}`. Because every split is random access, the
training order is a pure function of (seed, epoch, position) and resume is exact.

Sensitive attribute (`data.attribute`, e.g. the HAR subject or the FSDD speaker).
When a source carries one, each split also holds, for every example,

  attributes  int [N]: the attribute id in 0..num_attributes-1 (the same mapping in
              both splits; `DataSource.attribute_values[id]` is the original value),
              and `get` returns it as the extra key 'attribute' (int32 [n]);
  order       int [N]: what a leak-free attacker split needs (`DataSource.attribute_split`):
              'time'      (HAR) the window's row in its original file, i.e. time order
                          within a subject (consecutive windows overlap by 50 %);
              'recording' (FSDD) the recording index n of `<digit>_<speaker>_<n>.wav`;
              'stratified' (other data) the row index, no structure assumed.

Without an attribute `get` returns exactly {'image', 'label'} as before.
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
  attributes: Optional[np.ndarray] = None  # [N] attribute ids (see the module docstring)
  order: Optional[np.ndarray] = None       # [N] what a leak-free attribute split needs

  def __len__(self) -> int:
    return len(self.labels)

  def get(self, indices) -> dict:
    x = self.images[indices]
    if self.transform is not None:
      x = self.transform(x)
    out = {"image": np.asarray(x, np.float32), "label": self.labels[indices].astype(np.int32)}
    if self.attributes is not None:
      out["attribute"] = self.attributes[indices].astype(np.int32)
    return out

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

  def __init__(self, records, decode: Callable, workers: int = 4, attributes=None, order=None):
    self.records = records
    self.decode = decode
    self.workers = max(1, int(workers))
    self._pool = None
    self.attributes = attributes  # [N] attribute ids, read once up front (or None)
    self.order = order

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
    batch = {"image": np.stack([o[0] for o in out]).astype(np.float32),
             "label": np.asarray([o[1] for o in out], np.int32)}
    if self.attributes is not None:
      batch["attribute"] = self.attributes[np.asarray(indices).reshape(-1)].astype(np.int32)
    return batch


ATTRIBUTE_SPLITS = ("time", "recording", "stratified")


@dataclasses.dataclass
class DataSource:
  name: str
  train: object  # random-access split: __len__ and get(indices) -> {'image', 'label'}
  test: object
  input_shape: tuple
  num_classes: int
  value_range: tuple = (0.0, 1.0)  # bounds of the model input; the decoder's output range
  description: str = ""
  # The sensitive attribute (data.attribute); '' and 0 when none is loaded.
  attribute_name: str = ""
  num_attributes: int = 0
  attribute_values: tuple = ()   # original value of each attribute id
  attribute_split: str = ""      # how splits' `order` makes attacker splits leak-free
  available_attributes: tuple = ()  # what data.attribute may name for this dataset


def encode_attribute(values_by_split: dict, name: str, dataset: str):
  """{'train': raw values [N], 'test': [M]} -> ({split: ids}, values): one sorted mapping
  of the values present in any split, so that an id means the same in both."""
  raw = {k: np.asarray(v).reshape(-1) for k, v in values_by_split.items()}
  if any(v.dtype.kind == "f" and not np.all(np.isfinite(v)) for v in raw.values()):
    raise DataError(f"Dataset {dataset}: attribute {name!r} has NaN or Inf values.")
  allv = np.concatenate(list(raw.values()))
  if allv.dtype.kind == "O":
    allv = allv.astype(str)
  values, inv = np.unique(allv, return_inverse=True)
  if len(values) < 2:
    raise DataError(f"Dataset {dataset}: attribute {name!r} takes {len(values)} value(s); an "
                    "attribute needs at least 2.")
  out, start = {}, 0
  for k, v in raw.items():
    out[k] = inv[start:start + len(v)].astype(np.int32)
    start += len(v)
  to_py = (lambda v: v.decode() if isinstance(v, bytes) else v.item()
           if hasattr(v, "item") else v)
  return out, tuple(to_py(v) for v in values)


def attach_attribute(src: DataSource, name: str, raw: dict, order: dict, rule: str) -> DataSource:
  """Sets `src`'s attribute `name` from raw per-split values ({'train': [N], 'test': [M]})
  and per-split `order` arrays; `rule` is one of ATTRIBUTE_SPLITS."""
  if rule not in ATTRIBUTE_SPLITS:
    raise ValueError(f"attribute split rule {rule!r} not in {ATTRIBUTE_SPLITS}")
  ids, values = encode_attribute(raw, name, src.name)
  for split in ("train", "test"):
    sp = getattr(src, split)
    if len(ids[split]) != len(sp) or len(order[split]) != len(sp):
      raise DataError(f"Dataset {src.name}: {split} has {len(sp)} examples but "
                      f"{len(ids[split])} values of attribute {name!r}.")
    sp.attributes, sp.order = ids[split], np.asarray(order[split], np.int64)
  src.attribute_name, src.num_attributes, src.attribute_values = name, len(values), values
  src.attribute_split = rule
  return src


def unknown_attribute(dataset: str, name: str, available) -> DataError:
  avail = sorted(available)
  return DataError(f"Dataset {dataset} has no attribute {name!r} (data.attribute); "
                   + (f"available: {avail}." if avail else "it carries none."))
