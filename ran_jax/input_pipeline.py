"""Datasets -> per-process batches -> global arrays over the mesh.

Sharding for multi-host: every process computes the same global permutation
and reads only its own slice of each global batch (`parallel.process_slice`),
the random-access equivalent of `tfds.split_for_jax_process`; the slices are
assembled into global arrays with `jax.make_array_from_process_local_data`.
A background thread keeps `prefetch` batches ready, so the trainer does not
wait on input (`python -m bench input` measures both rates).

Every source is random-access (`len`, `get(indices)`), so the training order is
a pure function of (seed, epoch, position): the pipeline can restart at any
step exactly, which is what checkpoint resume relies on.

Normalisation is stated once per dataset in `ran_jax/data/datasets.py` (table
in its docstring); `value_range` tells the decoder what range to produce.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator

import numpy as np

from ran_jax import parallel


# The dataset types and loaders live in ran_jax.data; re-exported here so the
# trainer and train.py keep one import.
from ran_jax.data.source import ArraySplit, DataError, DataSource, RecordSplit  # noqa: E402,F401
from ran_jax.data.datasets import DATASETS, known_datasets, loader_for  # noqa: E402,F401


def _limit(split, n: int):
  """The first n examples of a split (all when n <= 0), with their attribute and order."""
  if n and n > 0 and n < len(split):
    b = split.get(np.arange(n))
    attributes, order = getattr(split, "attributes", None), getattr(split, "order", None)
    return ArraySplit(b["image"], b["label"],
                      attributes=None if attributes is None else attributes[:n],
                      order=None if order is None else order[:n])
  return split


def check_source(src: DataSource, num_classes: int | None = None) -> None:
  """Validates labels, shapes and values on a sample of each split (all labels in memory).

  `num_classes` (config.data.num_classes) is the class count the config expects;
  a dataset with another count stops here rather than training a wrong head.
  """
  if num_classes and int(num_classes) != src.num_classes:
    raise DataError(f"Dataset {src.name} has {src.num_classes} classes but the config expects "
                    f"data.num_classes={num_classes}; fix --config.data.num_classes or the "
                    "dataset name.")
  lo, hi = src.value_range
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
    if b["image"].min() < lo - 1e-5 or b["image"].max() > hi + 1e-5:
      raise DataError(f"Dataset {src.name}: {split_name} inputs span [{b['image'].min():.4g}, "
                      f"{b['image'].max():.4g}], outside its value_range {src.value_range} that "
                      "the decoder reproduces; fix the dataset's normalisation.")
    lab = split.labels if isinstance(split, ArraySplit) else b["label"]
    if lab.min() < 0 or lab.max() >= src.num_classes:
      raise DataError(f"Dataset {src.name}: {split_name} labels span [{lab.min()}, {lab.max()}] "
                      f"but the model has {src.num_classes} classes (labels must be in [0, "
                      f"{src.num_classes - 1}]). Check the label files or data.num_classes.")
    if src.attribute_name:
      att = getattr(split, "attributes", None)
      order = getattr(split, "order", None)
      if (att is None or order is None or len(att) != len(split) or len(order) != len(split)
          or "attribute" not in b or att.min() < 0 or att.max() >= src.num_attributes):
        raise DataError(f"Dataset {src.name}: the {split_name} split lacks valid ids of attribute "
                        f"{src.attribute_name!r} (0..{src.num_attributes - 1} per example).")


def load_dataset(data_config) -> DataSource:
  """config.data -> validated DataSource; prepares TFDS data offline when needed.

  TFDS datasets are prepared into `data.data_dir` (default ~/tensorflow_datasets)
  from `data.manual_dir` on first use, then read back as array_record.
  With `data.attribute` set, every split's `get` also returns 'attribute' (int32
  ids, see `ran_jax.data.source`), and so do the pipeline's training and test
  batches (`batch['attribute']`, sharded like the labels); unset, batches hold
  exactly 'image' and 'label' (and the test batches' 'mask').
  """
  src = loader_for(data_config.name)(data_config)
  src.train = _limit(src.train, data_config.get("train_limit", 0))
  src.test = _limit(src.test, data_config.get("test_limit", 0))
  check_source(src, data_config.get("num_classes"))
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
    while t.is_alive():  # the worker finishes the item in hand, then sees `stop`
      try:
        q.get(timeout=0.1)
      except queue.Empty:
        pass
    t.join()
