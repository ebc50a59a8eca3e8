"""Dataset loaders: config.data -> DataSource. Normalisation is stated here, once per dataset.

| name          | model input            | normalisation                                   |
|---------------|------------------------|-------------------------------------------------|
| digits        | 28x28x1 in [0, 1]      | value / 16, bilinear resize (no TFDS)           |
| mnist, cifar10, any TFDS image dataset | HxWxC in [0, 1] | pixel / 255            |
| imagenet2012  | 224x224x3 in [0, 1]    | resize shorter side to 256/224*S, centre crop S |
| uci_har       | 128x1x9 in [-4, 4]     | per-channel standardised with train statistics, |
|               |                        | clipped to +-4 std                              |
| spoken_digit  | 32x32x1 in [0, 1]      | log-mel dB re clip max, floor -80 dB, / 80 + 1  |

`value_range` of each DataSource is the bound its inputs live in; the RAN
decoder's scaled sigmoid produces that range.

Your own data (`ran_jax.data.own`): `data.name` may be a folder of images in class
sub-folders or an `.npz` of arrays (see that module for the layouts and checks).

Sensitive attributes (`data.attribute`, see `ran_jax.data.source`):

| name          | attribute                      | leak-free split (`attribute_split`, `order`) |
|---------------|--------------------------------|----------------------------------------------|
| uci_har       | 'subject'                      | 'time': `order` = the window's row (time)    |
| spoken_digit  | 'speaker'                      | 'recording': `order` = recording index n     |
| TFDS datasets | a scalar int / ClassLabel / bool feature ('a/b' if nested) | 'stratified'     |
| .npz          | a per-example array (ran_jax/data/own.py)                  | 'stratified'     |
"""

from __future__ import annotations

import io
import logging
import os
from typing import Callable

import numpy as np

from ran_jax.data import own, tfds_prep
from ran_jax.data.source import (ArraySplit, DataError, DataSource, RecordSplit,
                                 attach_attribute, read_records, unknown_attribute)

log = logging.getLogger("ran_jax")

IN_MEMORY_MAX_BYTES = 3 << 30  # decoded uint8 size up to which a split is held in memory
MNIST_FILES = ("train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
               "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (the canonical LeCun files)")
CIFAR10_FILES = ("cifar-10-binary.tar.gz (canonical) or cifar10_jpg.tar.gz (lossy JPEG copy: "
                 "train/<class>/*.jpg, test/<class>/*.jpg)")
IMAGENET_FILES = "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (image-net.org)"
HAR_STD_CLIP = 4.0
# What data.attribute may name for the built-in datasets (TFDS and own data: read from the data).
BUILTIN_ATTRIBUTES = {"digits": (), "uci_har": ("subject",), "spoken_digit": ("speaker",)}


def _scale_uint8(x: np.ndarray) -> np.ndarray:
  return x.astype(np.float32) / 255.0  # [0, 1]: the image datasets' normalisation


# ---------------------------------------------------------------- digits (no TFDS)


def load_digits(data_config) -> DataSource:
  """scikit-learn's bundled handwritten digits (UCI optdigits test set, 1,797 images).

  8x8 images with values 0..16, scaled to [0, 1] and bilinearly resized to
  28x28 so they run through the same LeNet-5 as MNIST. A fixed stratified split
  keeps 20% (360 images) for test. No network needed.
  """
  from scipy import ndimage
  from sklearn.datasets import load_digits as sk_digits
  from sklearn.model_selection import train_test_split

  if _attribute_name(data_config):
    raise unknown_attribute("digits", _attribute_name(data_config), BUILTIN_ATTRIBUTES["digits"])
  d = sk_digits()
  x = (d.images / 16.0).astype(np.float32)  # [N, 8, 8] in [0, 1]
  size = int(data_config.get("image_size", 28) or 8)
  if size != 8:
    x = ndimage.zoom(x, (1, size / 8, size / 8), order=1)
  x = np.clip(x, 0.0, 1.0).astype(np.float32)[..., None]
  y = d.target.astype(np.int32)
  x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
  return DataSource("digits", ArraySplit(x_tr, y_tr), ArraySplit(x_te, y_te), x.shape[1:], 10,
                    (0.0, 1.0), "scikit-learn digits, resized to %dx%d" % (size, size))


# ---------------------------------------------------------------- TFDS images


def _resize_uint8(x: np.ndarray, size: int) -> np.ndarray:
  """[N, H, W, C] uint8 -> [N, size, size, C] uint8 (bilinear, PIL)."""
  from PIL import Image

  out = np.empty((len(x), size, size, x.shape[-1]), np.uint8)
  for i, im in enumerate(x):
    pil = Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im)
    out[i] = np.asarray(pil.resize((size, size), Image.BILINEAR)).reshape(size, size, -1)
  return out


def _field(record, path: str):
  """record['a/b'] read as record['a']['b'] (nested TFDS features)."""
  for part in path.split("/"):
    record = record[part]
  return record


def _read_all(ds, keys, chunk: int = 4096) -> dict:
  """{key: array over every record} for the (possibly nested, 'a/b') feature `keys`."""
  cols = {k: [] for k in keys}
  for s in range(0, len(ds), chunk):
    recs = read_records(ds, range(s, min(s + chunk, len(ds))))
    for k in keys:
      cols[k].append(np.stack([np.asarray(_field(r, k)) for r in recs]))
  return {k: np.concatenate(v) for k, v in cols.items()}


def scalar_features(features, skip=()) -> list[str]:
  """Names ('a' or 'a/b' when nested) of a TFDS dataset's scalar integer or bool features:
  what `data.attribute` may name."""
  from tensorflow_datasets import features as tfds_features

  out = []

  def walk(fd, prefix):
    for key, f in fd.items():
      path = prefix + key
      if isinstance(f, tfds_features.FeaturesDict):
        walk(f, path + "/")
      elif (path not in skip and tuple(getattr(f, "shape", (None,))) == ()
            and np.dtype(f.np_dtype).kind in "biu"):
        out.append(path)

  walk(features, "")
  return sorted(out)


def _attribute_name(data_config) -> str:
  return str(data_config.get("attribute", "") or "")


def _center_crop_decoder(size: int, channels: int, image_key="image", label_key="label"):
  """Raw JPEG/PNG bytes -> [size, size, C] in [0, 1]: resize shorter side, centre crop."""
  from PIL import Image

  def decode(rec):
    with Image.open(io.BytesIO(rec[image_key])) as im:
      resize_to = int(round(size * 256 / 224))
      im.draft("RGB" if channels == 3 else "L", (resize_to, resize_to))  # fast JPEG downscale
      im = im.convert("RGB" if channels == 3 else "L")
      w, h = im.size
      s = resize_to / min(w, h)
      im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
      w, h = im.size
      left, top = (w - size) // 2, (h - size) // 2
      arr = np.asarray(im.crop((left, top, left + size, top + size)), np.uint8)
    return _scale_uint8(arr.reshape(size, size, channels)), int(rec[label_key])

  return decode


def tfds_image_source(name: str, builder, data_config, *, test_split=None,
                      description="") -> DataSource:
  """Any prepared TFDS image-classification dataset -> DataSource ([0, 1] images).

  Fixed-shape datasets whose decoded size fits `IN_MEMORY_MAX_BYTES` are read into
  memory once (uint8); others stay on disk and are decoded per batch.
  """
  info = builder.info
  feats = info.features
  keys = info.supervised_keys or ("image", "label")
  if isinstance(keys[0], dict) or keys[0] not in feats or keys[1] not in feats:
    raise DataError(f"{info.full_name} is not an image-classification dataset "
                    f"(supervised keys {info.supervised_keys}).")
  image_key, label_key = keys
  image_feat, label_feat = feats[image_key], feats[label_key]
  shape = tuple(image_feat.shape)
  if len(shape) != 3:
    raise DataError(f"{info.full_name}: feature {image_key!r} has shape {shape}; RAN needs "
                    "images [H, W, C].")
  num_classes = getattr(label_feat, "num_classes", None)
  if not num_classes:
    raise DataError(f"{info.full_name}: label feature {label_key!r} is not a ClassLabel.")
  available = scalar_features(feats, skip=(image_key, label_key))
  attribute = _attribute_name(data_config)
  if attribute and attribute not in available:
    raise unknown_attribute(info.full_name, attribute, available)
  known = set(info.splits) or {"train", "test"}  # no split metadata (e.g. mocked): try these
  test_split = test_split or next((s for s in ("test", "validation") if s in known), None)
  if test_split is None or "train" not in known:
    raise DataError(f"{info.full_name} needs a 'train' and a 'test' (or 'validation') split; "
                    f"it has {sorted(info.splits)}.")
  size = int(data_config.get("image_size") or 0) or None
  channels = shape[-1] or 3
  fixed = all(d is not None for d in shape)
  out_hw = (size, size) if size else tuple(shape[:2])
  if None in out_hw:
    raise DataError(f"{info.full_name} has images of varying size {shape}; set "
                    "--config.data.image_size (e.g. 224).")
  n_bytes = len(tfds_prep.data_source(builder, "train")) * int(np.prod(out_hw)) * channels
  splits, raw = {}, {}
  if fixed and n_bytes <= IN_MEMORY_MAX_BYTES:
    for split in ("train", test_split):
      ds = tfds_prep.data_source(builder, split)
      cols = _read_all(ds, (image_key, label_key) + ((attribute,) if attribute else ()))
      x, y = cols[image_key], cols[label_key].astype(np.int64)
      if size and x.shape[1:3] != (size, size):
        x = _resize_uint8(x, size)
      splits[split] = ArraySplit(x, y, transform=_scale_uint8)
      raw[split] = cols.get(attribute)
  else:
    from tensorflow_datasets import decode as tfds_decode

    for split in ("train", test_split):
      ds = tfds_prep.data_source(builder, split, decoders={image_key: tfds_decode.SkipDecoding()})
      splits[split] = RecordSplit(ds, _center_crop_decoder(out_hw[0], channels, image_key,
                                                           label_key),
                                  workers=int(data_config.get("decode_workers", 4) or 4))
      raw[split] = _read_all(ds, (attribute,))[attribute] if attribute else None
  src = DataSource(name, splits["train"], splits[test_split], (*out_hw, channels),
                   int(num_classes), (0.0, 1.0),
                   description or f"TFDS {info.full_name} ({test_split} split as test)",
                   available_attributes=tuple(available))
  if attribute:
    attach_attribute(src, attribute, {"train": raw["train"], "test": raw[test_split]},
                     {"train": np.arange(len(src.train)), "test": np.arange(len(src.test))},
                     "stratified")
  return src


def load_mnist(data_config) -> DataSource:
  b = tfds_prep.get_builder("mnist", data_config.data_dir)
  tfds_prep.prepare(b, data_config.manual_dir, what=MNIST_FILES)
  return tfds_image_source("mnist", b, data_config)


def load_cifar10(data_config) -> DataSource:
  """CIFAR-10: the canonical TFDS `cifar10`, or the lossy JPEG copy (`cifar10_jpg`)."""
  from ran_jax.data import cifar10_jpg

  manual = data_config.manual_dir
  canonical = tfds_prep.get_builder("cifar10", data_config.data_dir)
  jpg = tfds_prep.get_builder(cifar10_jpg.Cifar10Jpg, data_config.data_dir)
  if canonical.is_prepared():
    b = canonical
  elif manual and os.path.exists(os.path.join(os.path.expanduser(manual),
                                              "cifar-10-binary.tar.gz")):
    b = tfds_prep.prepare(canonical, manual, what=CIFAR10_FILES)
  elif jpg.is_prepared() or (manual and cifar10_jpg.available(os.path.expanduser(manual))):
    log.warning("CIFAR-10 from the LOSSY JPEG copy (cifar10_jpg), not the original pixels.")
    b = tfds_prep.prepare(jpg, manual, what=CIFAR10_FILES)
  elif manual:
    raise DataError(f"cifar10: --config.data.manual_dir={manual} holds neither file: provide "
                    f"{CIFAR10_FILES}.")
  else:
    b = tfds_prep.prepare(canonical, None, what=CIFAR10_FILES)
  return tfds_image_source("cifar10", b, data_config,
                           description=f"TFDS {b.info.full_name}" +
                           (" (lossy JPEG copy)" if b is jpg else ""))


def load_imagenet2012(data_config) -> DataSource:
  b = tfds_prep.get_builder("imagenet2012", data_config.data_dir)
  if not b.is_prepared():
    manual = data_config.manual_dir
    if not manual:
      raise DataError("imagenet2012 is not prepared in --config.data.data_dir and TFDS cannot "
                      f"download it: provide {IMAGENET_FILES} in --config.data.manual_dir.")
    missing = [f for f in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
               if not os.path.exists(os.path.join(os.path.expanduser(manual), f))]
    if missing:
      raise DataError(f"imagenet2012: missing in --config.data.manual_dir={manual}: "
                      f"{', '.join(missing)}. Provide {IMAGENET_FILES}.")
    tfds_prep.prepare(b, manual, what=IMAGENET_FILES, check_files=False)
  if not data_config.get("image_size"):
    raise DataError("imagenet2012 images vary in size: set --config.data.image_size (224).")
  return tfds_image_source("imagenet2012", b, data_config, test_split="validation",
                           description="ImageNet ILSVRC2012 (validation split as test)")


# ---------------------------------------------------------------- UCI HAR


def load_uci_har(data_config) -> DataSource:
  """UCI HAR windows as [128, 1, 9] (time, 1, channels): LeNet uses 1-D kernels on it."""
  from ran_jax.data import uci_har

  manual = os.path.expanduser(data_config.manual_dir) if data_config.manual_dir else None
  builders = {c: tfds_prep.get_builder(uci_har.UciHar, data_config.data_dir, config=c)
              for c in ("official", "hapt")}
  prepared = [c for c, b in builders.items() if b.is_prepared()]
  sources = uci_har.available_sources(manual) if manual and os.path.isdir(manual) else []
  choice = next((c for c in ("official", "hapt") if c in sources or c in prepared), None)
  if choice is None:
    raise DataError("uci_har: nothing prepared in --config.data.data_dir and no source in "
                    f"--config.data.manual_dir={data_config.manual_dir}."
                    + uci_har.MANUAL_INSTRUCTIONS)
  attribute = _attribute_name(data_config)
  if attribute and attribute not in BUILTIN_ATTRIBUTES["uci_har"]:
    raise unknown_attribute("uci_har", attribute, BUILTIN_ATTRIBUTES["uci_har"])
  b = tfds_prep.prepare(builders[choice], manual, what=f"the {choice} UCI HAR files",
                        check_files=False)
  arrays, cols = {}, {}
  for split in ("train", "test"):
    cols[split] = _read_all(tfds_prep.data_source(b, split), ("signal", "label", "subject",
                                                                "index"))
    arrays[split] = (cols[split]["signal"].astype(np.float32),
                     cols[split]["label"].astype(np.int64))
  # Normalisation: per-channel mean/std of the training windows, clipped to +-4 std.
  flat = arrays["train"][0].reshape(-1, arrays["train"][0].shape[-1])
  mean, std = flat.mean(0), flat.std(0) + 1e-6

  def norm(x):
    z = np.clip((x - mean) / std, -HAR_STD_CLIP, HAR_STD_CLIP)
    return z[:, :, None, :].astype(np.float32)  # [N, 128, 1, 9]

  tr, te = (ArraySplit(norm(arrays[s][0]), arrays[s][1]) for s in ("train", "test"))
  src = DataSource("uci_har", tr, te, (uci_har.WINDOW, 1, len(uci_har.CHANNELS)),
                   len(uci_har.CLASS_NAMES), (-HAR_STD_CLIP, HAR_STD_CLIP),
                   f"UCI HAR ({b.info.full_name}), 9 inertial channels x 128 steps",
                   available_attributes=BUILTIN_ATTRIBUTES["uci_har"])
  if attribute:
    attach_attribute(src, attribute, {s: cols[s][attribute] for s in cols},
                     {s: cols[s]["index"] for s in cols}, "time")
  return src


# ---------------------------------------------------------------- spoken digits


def load_spoken_digit(data_config) -> DataSource:
  """FSDD (`spoken_digit`) as log-mel images; recordings 0-4 of each speaker/digit are test."""
  from ran_jax.data import spoken_digit as sd

  manual = data_config.manual_dir
  attribute = _attribute_name(data_config)
  if attribute and attribute not in BUILTIN_ATTRIBUTES["spoken_digit"]:
    raise unknown_attribute("spoken_digit", attribute, BUILTIN_ATTRIBUTES["spoken_digit"])
  b = tfds_prep.get_builder("spoken_digit", data_config.data_dir)
  if not b.is_prepared():
    if not manual or not sd.available(os.path.expanduser(manual)):
      raise DataError("spoken_digit is not prepared in --config.data.data_dir; provide the "
                      f"recordings in --config.data.manual_dir={manual}." + sd.MANUAL_INSTRUCTIONS)
    local = tfds_prep.get_builder(sd.SpokenDigitLocal, data_config.data_dir)
    tfds_prep.prepare(local, os.path.expanduser(manual), what="the FSDD recordings",
                      check_files=False)
    b = tfds_prep.get_builder("spoken_digit", data_config.data_dir)  # re-read the written info
  ds = tfds_prep.data_source(b, "train")
  size = int(data_config.get("image_size") or 32)
  xs, ys, names = [], [], []
  for s in range(0, len(ds), 1024):
    for r in read_records(ds, range(s, min(s + 1024, len(ds)))):
      xs.append(sd.log_mel(r["audio"], size=size))
      ys.append(int(r["label"]))
      fname = r["audio/filename"]
      names.append(fname.decode() if isinstance(fname, bytes) else fname)
  x = np.stack(xs)[..., None]  # [N, size, size, 1] in [0, 1]
  y = np.asarray(ys, np.int64)
  parsed = [sd.parse_file_name(f) for f in names]  # (digit, speaker, recording index)
  test = np.asarray([n < sd.TEST_RECORDINGS for _, _, n in parsed])
  src = DataSource("spoken_digit", ArraySplit(x[~test], y[~test]), ArraySplit(x[test], y[test]),
                   (size, size, 1), 10, (0.0, 1.0),
                   "Free Spoken Digit Dataset as log-mel (stand-in for UbiSound)",
                   available_attributes=BUILTIN_ATTRIBUTES["spoken_digit"])
  if attribute:
    speaker = np.asarray([p[1] for p in parsed])
    rec = np.asarray([p[2] for p in parsed], np.int64)
    attach_attribute(src, attribute, {"train": speaker[~test], "test": speaker[test]},
                     {"train": rec[~test], "test": rec[test]}, "recording")
  return src


# ---------------------------------------------------------------- registry

DATASETS: dict[str, Callable[..., DataSource]] = {
    "digits": load_digits,
    "mnist": load_mnist,
    "cifar10": load_cifar10,
    "imagenet2012": load_imagenet2012,
    "uci_har": load_uci_har,
    "spoken_digit": load_spoken_digit,
}
ANY_TFDS = "<any TFDS image-classification name>"
OWN_DATA = "<a folder of class sub-folders of images, or an .npz path>"


def load_generic_tfds(data_config) -> DataSource:
  b = tfds_prep.get_builder(data_config.name, data_config.data_dir)
  tfds_prep.prepare(b, data_config.manual_dir)
  return tfds_image_source(data_config.name, b, data_config)


class KnownDatasets(frozenset):
  """Built-in names; membership also accepts any registered TFDS dataset name."""

  def __contains__(self, name) -> bool:
    if frozenset.__contains__(self, name):
      return True
    if own.is_own_data(name):
      return True
    return isinstance(name, str) and bool(name) and tfds_prep.is_tfds_name(name)


def known_datasets() -> KnownDatasets:
  return KnownDatasets(list(DATASETS) + [ANY_TFDS, OWN_DATA])


def loader_for(name: str) -> Callable[..., DataSource]:
  if name in DATASETS:
    return DATASETS[name]
  if own.is_own_data(name):
    return own.load_own
  if isinstance(name, str) and name.endswith(".npz"):
    raise DataError(f"data.name={name!r}: no such .npz file.")
  if isinstance(name, str) and name and tfds_prep.is_tfds_name(name):
    return load_generic_tfds
  raise DataError(f"Unknown dataset {name!r}; allowed: {sorted(DATASETS)}, any TFDS "
                  "image-classification dataset name (https://www.tensorflow.org/datasets/catalog),"
                  " a folder of images in class sub-folders or an .npz file (the documentation's "
                  "how-to page 'Train on your own data').")
