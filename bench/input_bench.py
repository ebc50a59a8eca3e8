"""Host input throughput on a fake ImageNet of full-size JPEGs: today's pipeline and Grain.

  python -m bench input --imagenet_fake=1024 [--workdir=DIR] [--batch=64] [--steps=16]
      [--workers=1,2] [--repeats=2] [--images_per_s_per_chip=R | v5e=R5,v6e=R6,...]
      [--out=docs/data/input_bench.json]
  python -m bench input --cores_from=docs/data/input_bench.json --images_per_s_per_chip=...

Writes ILSVRC-like JPEGs (sizes drawn around 500x375, about 110 KB each at PIL
quality 90: smooth gradients, shapes, coarse texture and pixel noise) into the
manual-download tars (`ILSVRC2012_img_train.tar` of per-synset tars,
`ILSVRC2012_img_val.tar`), prepares them with TFDS's own `imagenet2012` builder
into array_record, and loads them with `ran_jax.input_pipeline.load_dataset` and
the ImageNet config's data settings: the code path of a real ImageNet run.

Then, for 1 and 2 workers, it times the same decode (JPEG, shorter side 256,
centre crop 224, [0, 1] float32; `ran_jax.data.datasets._center_crop_decoder`):

  today_decode    `RecordSplit.get` of the training order's batches (W decode threads)
  today_pipeline  `InputPipeline.train_batches`: the above plus the prefetch thread and
                  the global arrays placed over the mesh (what the trainer receives)
  grain_ordered   Grain `MapDataset` in W worker processes reading today's order
                  (the same permutation, the same per-process slice of each global
                  batch), batched in the workers, placed over the mesh
  grain_sampler   Grain `DataLoader`: `IndexSampler` sharded by `ShardByJaxProcess`,
                  W worker processes, the same decode map, `Batch`, placed over the mesh
                  (Grain's own order)

Rates are images per wall second and images per CPU second of the whole process
tree (this process, its threads and its worker processes, from `psutil`), with the
load average around each measurement: on a shared machine the CPU-second rate is
the per-core rate. `cores_needed` turns a per-core rate into cores per chip.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import tarfile
import tempfile
import time

import numpy as np

try:  # Grain's transform base class (Grain checks operations by type)
  from grain.python import MapTransform as _MapTransform
except ImportError:  # without Grain only today's pipelines run
  _MapTransform = object

# Sizes of ILSVRC-2012 training images (width, height) and how often each is drawn:
# most are 500 wide at 4:3 or 3:2, in either orientation; a few are larger or square.
ILSVRC_SIZES = ((500, 375, 0.40), (375, 500, 0.12), (500, 333, 0.14), (333, 500, 0.05),
                (500, 400, 0.07), (500, 500, 0.05), (640, 480, 0.07), (400, 300, 0.05),
                (800, 600, 0.03), (450, 350, 0.02))
JPEG_QUALITY = 90
NOISE_STD = 20.0  # pixel noise that brings a 500x375 image to about 110 KB at quality 90
STATS_FILE = "fake_stats.json"  # written beside the tars: a workdir is prepared once
# TPU VM hosts of the 8-chip slices: TPU chips and vCPUs per host VM (chips per host: the
# Cloud TPU system architecture pages, cloud.google.com/tpu/docs/v4, v5e, v5p, v6e; vCPUs:
# Google Cloud's listing of each machine type; check them before sizing a host).
TPU_HOSTS = {
    "v4-8 (ct4p-hightpu-4t)": {"chips": 4, "vcpus": 240},
    "v5e-8 (ct5lp-hightpu-8t)": {"chips": 8, "vcpus": 224},
    "v5p-8 (ct5p-hightpu-4t)": {"chips": 4, "vcpus": 208},
    "v6e-8 (ct6e-standard-8t)": {"chips": 8, "vcpus": 180},
}
PIPELINES = ("today_decode", "today_pipeline", "grain_ordered", "grain_sampler")


# ---------------------------------------------------------------- fake ImageNet


def fake_jpeg(width: int, height: int, seed: int) -> bytes:
  """An image-like JPEG: gradients, filled shapes, coarse texture and fine noise."""
  from PIL import Image, ImageDraw, ImageFilter

  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  img = np.empty((height, width, 3), np.float32)
  for c in range(3):
    a, b, d = rng.uniform(-1, 1, 3)
    img[..., c] = (128 + 60 * np.sin(a * xx / 40 + b * yy / 50 + 6 * d)
                   + 40 * np.cos((xx * b - yy * a) / 90))
  pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(pil)
  for _ in range(int(rng.integers(8, 25))):
    x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
    box = [x0, y0, x0 + rng.uniform(10, width / 2), y0 + rng.uniform(10, height / 2)]
    fill = tuple(int(v) for v in rng.integers(0, 256, 3))
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
  arr = np.asarray(pil.filter(ImageFilter.GaussianBlur(1.0)), np.float32)
  coarse = rng.normal(128, 40, (max(1, height // 4), max(1, width // 4))).clip(0, 255)
  coarse = Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BICUBIC)
  arr = arr + 0.8 * (np.asarray(coarse, np.float32)[..., None] - 128)
  arr = arr + rng.normal(0, NOISE_STD, arr.shape)
  buf = io.BytesIO()
  Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="JPEG",
                                                              quality=JPEG_QUALITY)
  return buf.getvalue()


def image_sizes(n: int, seed: int, scale: float = 1.0) -> list[tuple[int, int]]:
  """n (width, height) drawn from ILSVRC_SIZES, each jittered by up to +-10 %."""
  rng = np.random.default_rng(seed)
  p = np.asarray([s[2] for s in ILSVRC_SIZES])
  out = []
  for k in rng.choice(len(ILSVRC_SIZES), size=n, p=p / p.sum()):
    w, h, _ = ILSVRC_SIZES[k]
    j = rng.uniform(0.9, 1.1)
    out.append((max(8, round(w * j * scale)), max(8, round(h * j * scale))))
  return out


def _add(tar, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def write_fake_imagenet(manual_dir: str, n_train: int, n_val: int = 50, classes: int = 10,
                        seed: int = 0, scale: float = 1.0) -> dict:
  """The two manual-download tars of ILSVRC-2012 with fake JPEGs; returns their statistics
  (also written to `STATS_FILE` in `manual_dir`).

  Train images go to the first `classes` synsets of TFDS's label list (one inner
  tar each), validation images are `ILSVRC2012_val_%08d.JPEG` (labelled by TFDS's
  own validation label file). `scale` < 1 makes small images for tests.
  """
  from tensorflow_datasets.datasets.imagenet2012 import imagenet_common

  with open(imagenet_common.label_names_file()) as f:
    synsets = f.read().split()[:classes]
  os.makedirs(manual_dir, exist_ok=True)
  sizes = image_sizes(n_train + n_val, seed, scale)
  nbytes = []
  with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_train.tar"), "w") as train:
    for ci, syn in enumerate(synsets):
      buf = io.BytesIO()
      with tarfile.open(fileobj=buf, mode="w") as inner:
        for i in range(ci, n_train, classes):
          data = fake_jpeg(*sizes[i], seed=seed * 1_000_003 + i)
          nbytes.append(len(data))
          _add(inner, f"{syn}_{i}.JPEG", data)
      _add(train, f"{syn}.tar", buf.getvalue())
  with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_val.tar"), "w") as val:
    for i in range(n_val):
      _add(val, f"ILSVRC2012_val_{i + 1:08d}.JPEG",
           fake_jpeg(*sizes[n_train + i], seed=seed * 1_000_003 + n_train + i))
  w, h = np.asarray(sizes[:n_train]).T
  stats = {"train_images": n_train, "val_images": n_val, "classes": classes,
          "mean_kb": float(np.mean(nbytes) / 1e3), "median_kb": float(np.median(nbytes) / 1e3),
          "median_width": float(np.median(w)), "median_height": float(np.median(h)),
          "jpeg_quality": JPEG_QUALITY}
  with open(os.path.join(manual_dir, STATS_FILE), "w") as f:
    json.dump(stats, f)
  return stats


def imagenet_data_config(manual_dir: str, data_dir: str, image_size: int = 224,
                         workers: int = 1):
  """The ImageNet config's `data` block pointed at the fake tars."""
  from ran_jax.configs import imagenet_vgg

  data = imagenet_vgg.get_config().data
  data.manual_dir, data.data_dir = manual_dir, data_dir
  data.image_size, data.decode_workers = image_size, workers
  data.train_limit = data.test_limit = 0
  return data


def load_fake_imagenet(manual_dir: str, data_dir: str, image_size: int = 224, workers: int = 1):
  """The DataSource a training run builds (TFDS preparation on first call)."""
  from ran_jax import input_pipeline

  return input_pipeline.load_dataset(imagenet_data_config(manual_dir, data_dir, image_size,
                                                          workers))


# ---------------------------------------------------------------- Grain pipelines


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
  """InputPipeline's permutation of epoch `epoch` (tests check the two agree)."""
  return np.random.default_rng([seed, epoch]).permutation(n)


class OrderedKey:
  """Position k of this process's stream -> record key, in InputPipeline's order.

  Batch `step` of this process is rows [p * b, (p + 1) * b) of global batch `step`,
  exactly `InputPipeline.host_batch`; so batch `step` is a pure function of
  (seed, step) and a run resumes at any step.
  """

  def __init__(self, seed: int, n: int, global_batch: int, process_index: int,
               process_count: int):
    self.seed, self.n, self.global_batch = seed, n, global_batch
    self.local = global_batch // process_count
    self.offset = process_index * self.local
    self.steps_per_epoch = n // global_batch
    self._epoch, self._order = None, None

  def __call__(self, k: int) -> int:
    step, t = divmod(int(k), self.local)
    epoch, pos = divmod(step, self.steps_per_epoch)
    if epoch != self._epoch:
      self._epoch, self._order = epoch, epoch_order(self.seed, epoch, self.n)
    return int(self._order[pos * self.global_batch + self.offset + t])


class ReadDecode:
  """Record key -> {'image', 'label'} with the dataset's own decoder."""

  def __init__(self, records, decode, with_key: bool = False):
    self.records, self.decode, self.with_key = records, decode, with_key

  def __call__(self, key: int) -> dict:
    image, label = self.decode(self.records[int(key)])
    out = {"image": image, "label": np.int32(label)}
    if self.with_key:
      out["key"] = np.int64(key)
    return out


def grain_ordered(split, seed: int, global_batch: int, start_step: int, end_step: int,
                  workers: int, process_index: int = 0, process_count: int = 1):
  """Grain IterDataset of this process's batches [start_step, end_step) in today's order."""
  grain = _grain()
  local = global_batch // process_count
  key = OrderedKey(seed, len(split), global_batch, process_index, process_count)
  ds = (grain.MapDataset.range(start_step * local, end_step * local)
        .map(key).map(ReadDecode(split.records, split.decode))
        .batch(local, drop_remainder=True))  # element j: batch start_step + j, whole
  if workers > 0:
    ds.enable_shared_memory_output()  # batches come back through shared memory, uncopied
  # One thread per worker process: W workers use W cores, like W decode threads today.
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
  if workers > 0:
    # Worker w computes batches w, w + W, ...; they are read back in turn, in order.
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return it


class _KeyedRecords:
  """A Grain data source over `records` whose element is the record with its key."""

  def __init__(self, records):
    self.records = records

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, key: int):
    return int(key), self.records[int(key)]


class _DecodeKeyed(_MapTransform):
  """(key, record) -> {'image', 'label', 'key'}."""

  def __init__(self, decode):
    self.decode = decode

  def map(self, element):
    key, record = element
    image, label = self.decode(record)
    return {"image": image, "label": np.int32(label), "key": np.int64(key)}


def grain_sampler(split, seed: int, global_batch: int, workers: int, num_epochs: int = 1):
  """Grain DataLoader: IndexSampler sharded by JAX process, worker processes, Batch.

  Each element carries its record key ('key'), so that its images can be compared
  with today's decoder on the same records; the order is Grain's own.
  """
  gp = _grain().python
  decode_op = _DecodeKeyed(split.decode)
  local = global_batch // _process_count()
  sampler = gp.IndexSampler(len(split), gp.ShardByJaxProcess(drop_remainder=True), shuffle=True,
                            num_epochs=num_epochs, seed=seed)
  return gp.DataLoader(data_source=_KeyedRecords(split.records), sampler=sampler,
                       operations=[decode_op, gp.Batch(local, drop_remainder=True)],
                       worker_count=workers,
                       read_options=gp.ReadOptions(num_threads=1, prefetch_buffer_size=local))


def _grain():
  """The grain module, with absl flags marked parsed (Grain reads its flags at run time)."""
  import grain
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  return grain


def _process_count() -> int:
  import jax

  return jax.process_count()


# ---------------------------------------------------------------- measurement


class ProcessTreeClock:
  """CPU seconds of this process, its threads, and its live and finished children."""

  def __init__(self):
    import psutil

    self._p = psutil.Process()
    self._psutil = psutil

  def __call__(self) -> float:
    t = self._p.cpu_times()
    # This process at nanosecond resolution; children in clock ticks (10 ms).
    total = time.process_time() + t.children_user + t.children_system
    for child in self._p.children(recursive=True):
      with contextlib.suppress(self._psutil.Error):
        c = child.cpu_times()
        total += c.user + c.system
    return total


def timed(batches, batch_images: int, steps: int, warmup: int = 1) -> dict:
  """Images/s (wall and per CPU second) over `steps` batches after `warmup`.

  `batches` should run on past the timed batches (prefetching producers then hold
  about as much work in flight at the end as at the start, so the CPU seconds
  between the two readings are those of the timed batches).
  """
  import jax

  clock = ProcessTreeClock()
  it = iter(batches)
  w_first = time.perf_counter()
  for _ in range(warmup):
    jax.block_until_ready(next(it))
  warmup_s = time.perf_counter() - w_first
  load0, w0, c0 = os.getloadavg()[0], time.perf_counter(), clock()
  for _ in range(steps):
    jax.block_until_ready(next(it))
  wall, cpu, load1 = time.perf_counter() - w0, clock() - c0, os.getloadavg()[0]
  close = getattr(it, "close", None)
  if close is not None:
    close()
  images = steps * batch_images
  return {"images": images, "wall_s": wall, "cpu_s": cpu, "warmup_s": warmup_s,
          "images_per_s": images / wall, "images_per_cpu_s": images / cpu,
          "cores_busy": cpu / wall, "load_avg_1min": [load0, load1]}


def make_pipeline(name: str, src, seed: int, global_batch: int, workers: int, start: int,
                  end: int, mesh):
  """Batches of pipeline `name` for steps [start, end) (numpy dicts or global arrays)."""
  from ran_jax import input_pipeline

  if name in ("today_decode", "today_pipeline"):
    train = input_pipeline.RecordSplit(src.train.records, src.train.decode, workers=workers)
    pipe = input_pipeline.InputPipeline(dataclasses.replace(src, train=train), global_batch,
                                        global_batch, seed, mesh)
    if name == "today_decode":
      return (pipe.host_batch(s) for s in range(start, end))
    return pipe.train_batches(start, end)
  import jax

  if name == "grain_ordered":
    it = grain_ordered(src.train, seed, global_batch, start, end, workers,
                       jax.process_index(), jax.process_count())
  elif name == "grain_sampler":
    it = grain_sampler(src.train, seed, global_batch, workers,
                       num_epochs=math.ceil(end * global_batch / len(src.train)) + 1)
  else:
    raise ValueError(f"unknown pipeline {name!r}; one of {PIPELINES}")
  return _placed(it, mesh)


def _placed(it, mesh):
  """Global arrays of each batch of `it`; closing this generator stops Grain's workers."""
  from ran_jax import parallel

  it = iter(it)
  try:
    for b in it:
      yield parallel.to_global(b, mesh)
  finally:
    close = getattr(it, "close", None) or getattr(it, "__del__", None)
    if close is not None:
      close()


# Which of the decoder's steps release the GIL (Pillow's C decoder and resampler, numpy's
# casts and copies run without it); the rest holds it and bounds how many threads of one
# process can decode at once.
STAGE_RELEASES_GIL = {"open": False, "decode": True, "resize": True, "crop_to_array": False,
                      "scale": True, "stack": True}


def decode_stages(records, n: int, size: int = 224, batch: int = 64) -> dict:
  """Thread CPU milliseconds per image of each step of the ImageNet decoder (one thread),
  images stacked `batch` at a time as `RecordSplit.get` does.

  The same steps as `ran_jax.data.datasets._center_crop_decoder` (tests compare the
  output), timed apart; `gil_held_fraction` is the share of the steps that hold the GIL,
  so 1 / gil_held_fraction bounds the cores that one process's threads can keep busy.
  """
  from PIL import Image

  t = dict.fromkeys(STAGE_RELEASES_GIL, 0.0)
  clock, images = time.thread_time, []
  resize_to = int(round(size * 256 / 224))
  for i in range(n):
    rec = records[i]
    t0 = clock()
    im = Image.open(io.BytesIO(rec["image"]))
    im.draft("RGB", (resize_to, resize_to))
    t1 = clock()
    im = im.convert("RGB")
    t2 = clock()
    w, h = im.size
    s = resize_to / min(w, h)
    im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
    t3 = clock()
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    arr = np.asarray(im.crop((left, top, left + size, top + size)), np.uint8)
    t4 = clock()
    images.append(arr.astype(np.float32) / 255.0)
    t5 = clock()
    for k, a, b in (("open", t0, t1), ("decode", t1, t2), ("resize", t2, t3),
                    ("crop_to_array", t3, t4), ("scale", t4, t5)):
      t[k] += b - a
  t0 = clock()
  stacked = [np.stack(images[i:i + batch]) for i in range(0, n, batch)]
  t["stack"] += clock() - t0
  total = sum(t.values())
  held = sum(v for k, v in t.items() if not STAGE_RELEASES_GIL[k])
  return {"images": n, "ms_per_image": {k: 1e3 * v / n for k, v in t.items()},
          "total_ms_per_image": 1e3 * total / n, "gil_held_fraction": held / total,
          "releases_gil": STAGE_RELEASES_GIL, "batch": np.concatenate(stacked)}


def cores_needed(images_per_s_per_chip: float, chips_per_host: int,
                 per_core_rate: float) -> dict:
  """Host cores that decoding needs: per chip, per host (and with a 1.5x margin)."""
  if per_core_rate <= 0 or not math.isfinite(per_core_rate):
    raise ValueError(f"per-core rate must be positive and finite, got {per_core_rate}")
  per_chip = images_per_s_per_chip / per_core_rate
  return {"cores_per_chip": per_chip, "cores_per_host": per_chip * chips_per_host,
          "cores_per_host_1p5x": 1.5 * per_chip * chips_per_host}


def parse_chip_rates(text: str) -> dict:
  """'262' (every host) or 'v5e=262,v6e=1220' -> {'*': 262.0} or {'v5e': 262.0, ...}."""
  out = {}
  for part in filter(None, (p.strip() for p in str(text).split(","))):
    gen, _, rate = part.rpartition("=")
    out[gen or "*"] = float(rate)
  return out


def host_plan(per_core_rate: float, images_per_s_per_chip: dict) -> dict:
  """Cores each TPU host needs for its chips' images/s (by generation, 'v5e': ..., or '*'),
  and whether its vCPUs cover 1.5x that (the input target)."""
  out = {}
  for host, spec in TPU_HOSTS.items():
    gen = host.split("-")[0]
    rate = images_per_s_per_chip.get(gen, images_per_s_per_chip.get("*"))
    if rate is None:
      continue
    c = cores_needed(rate, spec["chips"], per_core_rate)
    c.update(images_per_s_per_chip=rate, chips=spec["chips"], vcpus=spec["vcpus"],
             covers_1p5x=c["cores_per_host_1p5x"] <= spec["vcpus"],
             vcpus_over_1p5x_need=spec["vcpus"] / c["cores_per_host_1p5x"])
    out[host] = c
  return out


def add_cores_needed(report: dict, images_per_s_per_chip: dict, source: str = "") -> dict:
  """Adds 'cores_needed' to a report, at the slowest measured rate of today's pipeline;
  `source` says where the chips' images/s come from."""
  rate = report["per_core"]["today_pipeline"]["images_per_cpu_s_min"]
  report["cores_needed"] = {
      "per_core_rate": rate,
      "per_core_rate_is": "today_pipeline, slowest of its measurements (images per CPU-s)",
      "images_per_s_per_chip": images_per_s_per_chip, "images_per_s_per_chip_source": source,
      "hosts": host_plan(rate, images_per_s_per_chip)}
  return report


# ---------------------------------------------------------------- the command


def run_bench(*, n_train: int, workdir: str, batch: int = 64, steps: int = 8,
              workers=(1, 2), pipelines=PIPELINES, repeats: int = 1, n_val: int = 50,
              seed: int = 0, scale: float = 1.0, image_size: int = 224,
              images_per_s_per_chip: dict | None = None, out: str | None = None) -> dict:
  """Writes and prepares the fake ImageNet (once per workdir), times each pipeline.

  Every (pipeline, workers) is timed `repeats` times, the pipelines taking turns, so
  that a change of load on a shared machine falls on all of them alike.
  """
  import jax

  from ran_jax import parallel

  manual, data_dir = os.path.join(workdir, "manual"), os.path.join(workdir, "tfds")
  stats_path = os.path.join(manual, STATS_FILE)
  if not os.path.exists(stats_path):
    write_fake_imagenet(manual, n_train, n_val, seed=seed, scale=scale)
  with open(stats_path) as f:
    stats = json.load(f)
  if stats["train_images"] != n_train:
    raise ValueError(f"{workdir} holds a fake ImageNet of {stats['train_images']} training "
                     f"images, not {n_train}: use another --workdir.")
  src = load_fake_imagenet(manual, data_dir, image_size)
  mesh = parallel.make_mesh()
  if len(src.train) // batch < 1:
    raise ValueError(f"batch {batch} exceeds the {len(src.train)} training images")
  load_start, results = os.getloadavg(), []
  for rep in range(repeats):
    for w in workers:
      for name in pipelines:
        # The same steps for every pipeline: steps 0.. of the training order (later
        # epochs when they exceed one; images are then decoded again, not cached).
        # Warm-up fills the prefetch buffers (a few batches per worker); production
        # goes on past the timed steps so as much is in flight at the end as at the start.
        warmup = 2 * w + 2
        end = warmup + steps + 2 * w + 2
        r = timed(make_pipeline(name, src, seed, batch, w, 0, end, mesh), batch, steps, warmup)
        r.update(pipeline=name, workers=w, repeat=rep)
        results.append(r)
        print(f"{name:15s} workers {w}: {r['images_per_s']:7.1f} images/s wall, "
              f"{r['images_per_cpu_s']:7.1f} images per CPU-s ({r['cores_busy']:.2f} cores "
              f"busy, load {r['load_avg_1min'][0]:.1f}->{r['load_avg_1min'][1]:.1f})",
              flush=True)
  per_core = summarise(results)
  stages = decode_stages(src.train.records, min(len(src.train), 4 * batch), image_size, batch)
  stages.pop("batch")
  report = {
      "what": "images per CPU-second (= per core) of decoding fake ILSVRC-size JPEGs "
              "(shorter side 256, centre crop 224, [0,1] float32), per pipeline and worker "
              "count; CPU seconds of the whole process tree",
      "command": (f"python -m bench input --imagenet_fake={n_train} --batch={batch} "
                  f"--steps={steps} --workers={','.join(map(str, workers))} "
                  f"--repeats={repeats}"),
      "dataset": stats, "image_size": image_size, "batch": batch, "steps": steps,
      "repeats": repeats, "cpu_count": os.cpu_count(), "cpu_model": _cpu_model(),
      "load_avg_1min_start_end": [load_start[0], os.getloadavg()[0]],
      "platform": jax.devices()[0].platform, "grain_version": _grain_version(),
      "per_core": per_core, "decode_stages_one_thread": stages, "results": results,
      "tpu_hosts": TPU_HOSTS,
  }
  if images_per_s_per_chip and "today_pipeline" in per_core:
    add_cores_needed(report, images_per_s_per_chip)
  if out:
    _write(report, out)
  return report


def _write(report: dict, out: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    json.dump(report, f, indent=1)


def summarise(results: list[dict]) -> dict:
  """Per pipeline: the median, min and max images per CPU-second over workers and repeats,
  the same per worker count, and each pipeline's ratio to `today_pipeline` at equal workers."""
  out = {}
  for name in dict.fromkeys(r["pipeline"] for r in results):
    mine = [r for r in results if r["pipeline"] == name]
    rates = [r["images_per_cpu_s"] for r in mine]
    entry = {"images_per_cpu_s_median": float(np.median(rates)),
             "images_per_cpu_s_min": min(rates), "images_per_cpu_s_max": max(rates),
             "by_workers": {}}
    for w in sorted({r["workers"] for r in mine}):
      rw = [r["images_per_cpu_s"] for r in mine if r["workers"] == w]
      wall = [r["images_per_s"] for r in mine if r["workers"] == w]
      base = [r["images_per_cpu_s"] for r in results
              if r["pipeline"] == "today_pipeline" and r["workers"] == w]
      entry["by_workers"][str(w)] = {
          "images_per_cpu_s_median": float(np.median(rw)), "images_per_cpu_s": rw,
          "images_per_s_wall": wall,
          "ratio_to_today_pipeline": (float(np.median(rw) / np.median(base)) if base
                                      else None)}
    out[name] = entry
  return out


def _cpu_model() -> str:
  with contextlib.suppress(OSError):
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  return ""


def _grain_version() -> str | None:
  try:
    import grain

    return grain.__version__
  except ImportError:
    return None


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m bench input", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--imagenet_fake", type=int, default=None, help="training JPEGs to write")
  p.add_argument("--cores_from", default=None,
                 help="a JSON this command wrote: add --images_per_s_per_chip's cores to it "
                      "(rewritten in place, or to --out) without measuring again")
  p.add_argument("--workdir", default=None, help="keeps the fake tars and TFDS data (reused)")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--steps", type=int, default=8, help="batches timed per pipeline")
  p.add_argument("--workers", default="1,2", help="comma-separated worker counts")
  p.add_argument("--pipelines", default=",".join(PIPELINES))
  p.add_argument("--repeats", type=int, default=1, help="times each pipeline is timed")
  p.add_argument("--images_per_s_per_chip", type=parse_chip_rates, default=None,
                 help="what one chip consumes (e.g. ran-plan's roofline), one number or per "
                      "generation ('v5e=262,v6e=1220'): adds the cores each TPU host needs")
  p.add_argument("--rates_source", default="",
                 help="with --cores_from: where the chips' images/s come from (kept in the JSON)")
  p.add_argument("--out", default=None, help="JSON file for the results")
  a = p.parse_args(argv)
  if a.cores_from:
    if not a.images_per_s_per_chip:
      p.error("--cores_from needs --images_per_s_per_chip")
    with open(a.cores_from) as f:
      report = add_cores_needed(json.load(f), a.images_per_s_per_chip, a.rates_source)
    _write(report, a.out or a.cores_from)
    print(json.dumps(report["cores_needed"], indent=1))
    return 0
  if a.imagenet_fake is None:
    p.error("--imagenet_fake (training JPEGs to write) or --cores_from is required")
  workers = tuple(int(w) for w in a.workers.split(","))
  pipelines = tuple(a.pipelines.split(","))
  with (contextlib.nullcontext(a.workdir) if a.workdir
        else tempfile.TemporaryDirectory(prefix="ran_input_bench-")) as workdir:
    run_bench(n_train=a.imagenet_fake, workdir=workdir, batch=a.batch, steps=a.steps,
              workers=workers, pipelines=pipelines, repeats=a.repeats,
              images_per_s_per_chip=a.images_per_s_per_chip, out=a.out)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
