"""Datasets -> per-process batches -> global arrays over the mesh.

Every source is random-access (`len`, `get(indices)`), so the training order is
a pure function of (seed, epoch, position): the pipeline can restart at any
step exactly, which is what checkpoint resume relies on.

Normalisation is stated once per dataset in its loader: images are float32 in
[0, 1] (pixel / max); `value_range` tells the decoder what range to produce.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Callable, Iterator

import numpy as np

from ran_jax import parallel


class DataError(ValueError):
  """Bad or missing data; the message says what to provide and where."""


@dataclasses.dataclass
class ArraySplit:
  """An in-memory split: images [N, H, W, C] float32 and int labels [N]."""

  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)

  def get(self, indices) -> dict:
    return {"image": self.images[indices], "label": self.labels[indices].astype(np.int32)}


@dataclasses.dataclass
class DataSource:
  name: str
  train: object  # random-access split: __len__ and get(indices) -> {'image', 'label'}
  test: object
  input_shape: tuple
  num_classes: int
  value_range: tuple = (0.0, 1.0)
  description: str = ""


# ---------------------------------------------------------------- datasets


def _load_digits(data_config) -> DataSource:
  """scikit-learn's bundled handwritten digits (UCI optdigits test set, 1,797 images).

  8x8 images with values 0..16, scaled to [0, 1] and bilinearly resized to
  28x28 so they run through the same LeNet-5 as MNIST. A fixed stratified split
  keeps 20% (360 images) for test. No network needed.
  """
  from scipy import ndimage
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  d = load_digits()
  x = (d.images / 16.0).astype(np.float32)  # [N, 8, 8] in [0, 1]
  size = int(data_config.get("image_size", 28) or 8)
  if size != 8:
    x = ndimage.zoom(x, (1, size / 8, size / 8), order=1)
  x = np.clip(x, 0.0, 1.0).astype(np.float32)[..., None]
  y = d.target.astype(np.int32)
  x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
  return DataSource("digits", ArraySplit(x_tr, y_tr), ArraySplit(x_te, y_te), x.shape[1:], 10,
                    (0.0, 1.0), "scikit-learn digits, resized to %dx%d" % (size, size))


DATASETS: dict[str, Callable] = {
    "digits": _load_digits,
}


def known_datasets() -> set:
  return set(DATASETS)


def _limit(split, n: int):
  if n and n > 0 and n < len(split):
    return ArraySplit(*(lambda b: (b["image"], b["label"]))(split.get(np.arange(n))))
  return split


def check_source(src: DataSource) -> None:
  """Validates labels, shapes and values on a sample of each split."""
  for split_name in ("train", "test"):
    split = getattr(src, split_name)
    if len(split) == 0:
      raise DataError(f"Dataset {src.name}: the {split_name} split is empty.")
    idx = np.unique(np.linspace(0, len(split) - 1, num=min(len(split), 512)).astype(int))
    b = split.get(idx)
    if tuple(b["image"].shape[1:]) != tuple(src.input_shape):
      raise DataError(f"Dataset {src.name}: {split_name} images have shape {b['image'].shape[1:]}, "
                      f"expected {src.input_shape}.")
    if not np.all(np.isfinite(b["image"])):
      raise DataError(f"Dataset {src.name}: {split_name} images contain NaN or Inf.")
    lab = b["label"]
    if lab.min() < 0 or lab.max() >= src.num_classes:
      raise DataError(f"Dataset {src.name}: {split_name} labels span [{lab.min()}, {lab.max()}] "
                      f"but the model has {src.num_classes} classes (labels must be in [0, "
                      f"{src.num_classes - 1}]).")


def load_dataset(data_config) -> DataSource:
  name = data_config.name
  if name not in DATASETS:
    raise DataError(f"Unknown dataset {name!r}; allowed: {sorted(DATASETS)}.")
  src = DATASETS[name](data_config)
  src.train = _limit(src.train, data_config.get("train_limit", 0))
  src.test = _limit(src.test, data_config.get("test_limit", 0))
  check_source(src)
  return src


# ---------------------------------------------------------------- batching


class InputPipeline:
  """Deterministic, resumable batches of a DataSource, placed over the mesh."""

  def __init__(self, source: DataSource, global_batch: int, eval_batch: int, seed: int, mesh,
               prefetch: int = 2):
    self.source = source
    self.global_batch = global_batch
    self.eval_batch = eval_batch
    self.seed = seed
    self.mesh = mesh
    self.prefetch = prefetch
    self.steps_per_epoch = len(source.train) // global_batch
    if self.steps_per_epoch == 0:
      raise DataError(f"batch_size={global_batch} is larger than the {len(source.train)} training "
                      f"examples of {source.name}; lower batch_size.")

  def epoch_order(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(len(self.source.train))

  def host_batch(self, step: int) -> dict:
    """This process's slice of the global batch number `step` (numpy)."""
    epoch, pos = divmod(step, self.steps_per_epoch)
    order = self.epoch_order(epoch)
    idx = order[pos * self.global_batch:(pos + 1) * self.global_batch]
    idx = idx[parallel.process_slice(self.global_batch)]
    return self.source.train.get(idx)

  def train_batches(self, start_step: int, end_step: int) -> Iterator[dict]:
    """Global batches for steps [start_step, end_step), prefetched in a thread."""

    def produce(step):
      return parallel.to_global(self.host_batch(step), self.mesh)

    yield from _prefetch((produce(s) for s in range(start_step, end_step)), self.prefetch)

  def eval_batches(self, split: str = "test") -> Iterator[dict]:
    """Whole split in order; the last batch is padded and masked."""
    data = getattr(self.source, split)
    n = len(data)
    sl = parallel.process_slice(self.eval_batch)
    for start in range(0, n, self.eval_batch):
      idx = np.arange(start, start + self.eval_batch)
      mask = idx < n
      b = data.get(np.minimum(idx, n - 1))
      b["mask"] = mask
      yield parallel.to_global({k: v[sl] for k, v in b.items()}, self.mesh)


def _prefetch(it: Iterator, size: int) -> Iterator:
  """Runs `it` in a background thread, `size` items ahead; re-raises its errors."""
  if size <= 0:
    yield from it
    return
  q: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()
  sentinel = object()

  def worker():
    try:
      for item in it:
        while not stop.is_set():
          try:
            q.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if stop.is_set():
          return
      q.put(sentinel)
    except BaseException as e:  # noqa: BLE001 - handed to the consumer
      q.put(e)

  t = threading.Thread(target=worker, daemon=True)
  t.start()
  try:
    while True:
      item = q.get()
      if item is sentinel:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
