"""Your own data: `data.name` names a folder of images or an `.npz` of arrays.

**Image folder** (`--config.data.name=/path/to/folder`). Either
  * `folder/train/<class>/*` and `folder/test/<class>/*`: the two splits as given; or
  * `folder/<class>/*`: one pool, split per class by a fixed rule: the class's files
    sorted by name, every 5th one (positions 4, 9, 14, ...) is test (20 %).
Class names are the sub-folder names, sorted; class i is the i-th name. Files: PNG, JPEG,
BMP, GIF, TIFF, WebP (8-bit); hidden files (`.*`) are skipped, any other file stops
with an error naming it, as do an empty class folder, an unreadable image and a test
class missing from train. Pixels are scaled by 1/255 into [0, 1]. Channels: 1 when every
image is grayscale, else RGB (alpha dropped). Size: every image is resized (bilinear,
aspect not kept) to `data.image_size` x `data.image_size` when that is > 0; with
`data.image_size=0` all images must already have one size. Image folders carry no
attribute (use an .npz for that).

**Arrays** (`--config.data.name=/path/to/data.npz`, loaded without pickles):
  * `x` [N, H, W, C] (or [N, H, W]: C = 1) and `y` [N]: one pool, split per class by
    the folder rule above (every 5th example of a class, in stored order, is test); or
  * `x_train`, `y_train`, `x_test`, `y_test`: the two splits as given.
  * Labels: integers >= 0 (`num_classes` = largest + 1) or strings (sorted names).
  * Values: uint8 are scaled by 1/255 into [0, 1]. Floats are used as stored and
    must be finite and lie in [0, 1], or in `value_range` = [lo, hi] if the file
    holds that array (the decoder reproduces inputs in that range). Standardised
    data (e.g. z-scores) therefore needs its bounds in `value_range`, and values
    clipped to them. `data.image_size` is not applied: arrays keep their shape.
  * Attribute (`data.attribute=NAME`): an array `NAME` [N] (one pool) or `NAME_train`
    and `NAME_test`, one value per example (integers or strings); every other
    per-example 1-D array is listed as available.
"""

from __future__ import annotations

import os

import numpy as np

from ran_jax.data.source import ArraySplit, DataError, DataSource, attach_attribute
from ran_jax.data.source import unknown_attribute

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
TEST_EVERY = 5  # in one pool, every 5th example of a class (positions 4, 9, ...) is test
RESERVED_NPZ = ("x", "y", "x_train", "y_train", "x_test", "y_test", "value_range")


def is_own_data(name) -> bool:
  """Whether `data.name` names a user's folder or .npz (rather than a dataset name)."""
  if not isinstance(name, str) or not name:
    return False
  path = os.path.expanduser(name)
  return os.path.isdir(path) or (name.endswith(".npz") and os.path.isfile(path))


def data_identity(name):
  """`data.name` as runs compare it: own data by its resolved path (`tiny.npz`, `./tiny.npz`
  and `/abs/tiny.npz` are one dataset), any other name as given."""
  if is_own_data(name):
    return os.path.realpath(os.path.expanduser(name))
  return name


def load_own(data_config) -> DataSource:
  path = os.path.expanduser(data_config.name)
  if path.endswith(".npz"):
    if not os.path.isfile(path):
      raise DataError(f"data.name={data_config.name!r}: no such .npz file.")
    return load_npz(path, data_config)
  return load_image_folder(path, data_config)


def _split_pool(labels: np.ndarray) -> np.ndarray:
  """Boolean test mask of a pool: per class, every TEST_EVERY-th example in stored order."""
  test = np.zeros(len(labels), bool)
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    test[idx[TEST_EVERY - 1::TEST_EVERY]] = True
  return test


# ---------------------------------------------------------------- image folders


def _class_files(root: str) -> dict[str, list[str]]:
  """{class: sorted image paths} of root/<class>/*, checked."""
  classes = sorted(d for d in os.listdir(root)
                   if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
  stray = sorted(f for f in os.listdir(root)
                 if not f.startswith(".") and os.path.isfile(os.path.join(root, f)))
  if stray:
    raise DataError(f"{root}: files outside class sub-folders: {stray[:5]}; put each image in "
                    "<class>/ (the documentation's how-to page 'Train on your own data').")
  if not classes:
    raise DataError(f"{root}: no class sub-folders; expected {root}/<class>/*.png|jpg.")
  out = {}
  for c in classes:
    d = os.path.join(root, c)
    names = sorted(f for f in os.listdir(d) if not f.startswith("."))
    bad = [f for f in names if not f.lower().endswith(IMAGE_SUFFIXES)
           or not os.path.isfile(os.path.join(d, f))]
    if bad:
      raise DataError(f"{d}: not image files: {bad[:5]}; allowed suffixes {IMAGE_SUFFIXES}.")
    if not names:
      raise DataError(f"{d}: class folder {c!r} holds no images.")
    out[c] = [os.path.join(d, f) for f in names]
  return out


def _read_images(paths: list[str], size: int):
  """uint8 images, each [h, w, 3] or [h, w, 1] (grayscale), resized if size > 0."""
  from PIL import Image, UnidentifiedImageError

  out = []
  for p in paths:
    try:
      with Image.open(p) as im:
        im.load()
        gray = im.mode in ("1", "L", "LA", "I", "I;16", "F")
        im = im.convert("L" if gray else "RGB")
        if size:
          im = im.resize((size, size), Image.BILINEAR)
        arr = np.asarray(im, np.uint8)
    except (UnidentifiedImageError, OSError) as e:
      raise DataError(f"{p}: cannot be read as an image ({e}).") from None
    out.append(arr[..., None] if arr.ndim == 2 else arr)
  return out


def load_image_folder(root: str, data_config) -> DataSource:
  if str(data_config.get("attribute", "") or ""):
    raise unknown_attribute(root, data_config.attribute, ())
  size = int(data_config.get("image_size") or 0)
  if os.path.isdir(os.path.join(root, "train")):
    if not os.path.isdir(os.path.join(root, "test")):
      raise DataError(f"{root} has train/ but no test/; add test/<class>/ or put the class "
                      "folders directly in the folder (then every 5th image is test).")
    tr, te = _class_files(os.path.join(root, "train")), _class_files(os.path.join(root, "test"))
    extra = sorted(set(te) - set(tr))
    if extra:
      raise DataError(f"{root}/test has classes missing from train: {extra}.")
    classes = sorted(tr)
    files = {s: [(f, classes.index(c)) for c in sorted(d) for f in d[c]]
             for s, d in (("train", tr), ("test", te))}
  else:
    pool = _class_files(root)
    classes = sorted(pool)
    items = [(f, i) for i, c in enumerate(classes) for f in pool[c]]
    test = _split_pool(np.asarray([i for _, i in items]))
    files = {"train": [it for it, t in zip(items, test) if not t],
             "test": [it for it, t in zip(items, test) if t]}
  if len(classes) < 2:
    raise DataError(f"{root}: {len(classes)} class folder(s); classification needs >= 2.")
  images = {s: _read_images([f for f, _ in files[s]], size) for s in files}
  shapes = {im.shape[:2] for s in images for im in images[s]}
  if len(shapes) > 1:
    raise DataError(f"{root}: images have {len(shapes)} different sizes (e.g. "
                    f"{sorted(shapes)[:3]}); set --config.data.image_size=S to resize them all "
                    "to S x S.")
  rgb = any(im.shape[-1] == 3 for s in images for im in images[s])
  arrays = {}
  for s in files:
    x = np.stack([np.repeat(im, 3, -1) if rgb and im.shape[-1] == 1 else im
                  for im in images[s]])
    arrays[s] = ArraySplit(x, np.asarray([c for _, c in files[s]], np.int64),
                           transform=lambda v: v.astype(np.float32) / 255.0)
  return DataSource(os.path.basename(os.path.normpath(root)), arrays["train"], arrays["test"],
                    tuple(arrays["train"].images.shape[1:]), len(classes), (0.0, 1.0),
                    f"image folder {root} ({len(classes)} classes: {classes[:10]})")


# ---------------------------------------------------------------- .npz arrays


def _labels(y: np.ndarray, where: str) -> np.ndarray:
  if y.dtype.kind in "US":
    return y
  if y.dtype.kind == "b":
    return y.astype(np.int64)
  if y.dtype.kind == "f":
    if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
      raise DataError(f"{where}: labels must be integers (or strings); got non-integer floats.")
    y = y.astype(np.int64)
  if y.dtype.kind not in "iu":
    raise DataError(f"{where}: labels must be integers or strings, got dtype {y.dtype}.")
  if len(y) and y.min() < 0:
    raise DataError(f"{where}: labels must be >= 0 (got {y.min()}).")
  return y.astype(np.int64)


def _images(x: np.ndarray, where: str) -> np.ndarray:
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4:
    raise DataError(f"{where}: expected [N, H, W, C] (or [N, H, W]) examples, got shape "
                    f"{x.shape}.")
  if x.dtype.kind not in "uif":
    raise DataError(f"{where}: values must be uint8 or numbers, got dtype {x.dtype}.")
  if x.dtype.kind in "ui" and x.dtype != np.uint8:
    x = x.astype(np.float32)  # other integers: used as stored values, like floats
  if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
    raise DataError(f"{where}: {int((~np.isfinite(x)).sum())} values are NaN or Inf.")
  return x


def load_npz(path: str, data_config) -> DataSource:
  try:
    with np.load(path, allow_pickle=False) as d:
      arrays = {k: d[k] for k in d.files}
  except ValueError as e:
    raise DataError(f"{path}: cannot be read without pickles ({e}); store plain arrays.") from None
  except OSError as e:
    raise DataError(f"{path}: not a readable .npz ({e}).") from None
  keys = set(arrays)
  if {"x", "y"} <= keys:
    mode = "pool"
  elif {"x_train", "y_train", "x_test", "y_test"} <= keys:
    mode = "splits"
  else:
    raise DataError(f"{path}: needs arrays x and y, or x_train, y_train, x_test and y_test; "
                    f"it has {sorted(keys)}.")
  if mode == "pool":
    x, y = _images(arrays["x"], f"{path}: x"), arrays["y"]
    if y.ndim != 1 or len(y) != len(x):
      raise DataError(f"{path}: y has shape {y.shape} but x holds {len(x)} examples; y must be "
                      f"[{len(x)}].")
    n = {"": len(x)}
  else:
    x = {s: _images(arrays[f"x_{s}"], f"{path}: x_{s}") for s in ("train", "test")}
    for s in ("train", "test"):
      yy = arrays[f"y_{s}"]
      if yy.ndim != 1 or len(yy) != len(x[s]):
        raise DataError(f"{path}: y_{s} has shape {yy.shape} but x_{s} holds {len(x[s])} "
                        f"examples; y_{s} must be [{len(x[s])}].")
    if x["train"].dtype != x["test"].dtype:
      raise DataError(f"{path}: x_train is {x['train'].dtype} but x_test {x['test'].dtype}; "
                      "store both with one dtype (and one scale).")
    if x["train"].shape[1:] != x["test"].shape[1:]:
      raise DataError(f"{path}: x_train examples are {x['train'].shape[1:]} but x_test "
                      f"examples {x['test'].shape[1:]}; they must match.")
    n = {"_train": len(x["train"]), "_test": len(x["test"])}
  if any(v == 0 for v in n.values()):
    raise DataError(f"{path}: empty arrays ({n}).")

  # Labels: one mapping over both splits.
  ys = {"pool": [arrays["y"]]} if mode == "pool" else {"splits": [arrays["y_train"],
                                                                  arrays["y_test"]]}
  ylist = [_labels(v, f"{path}: y") for v in ys[mode]]
  if ylist[0].dtype.kind in "US":
    names, inv = np.unique(np.concatenate(ylist), return_inverse=True)
    ylist = np.split(inv.astype(np.int64), [len(ylist[0])])[:len(ylist)]
    num_classes = len(names)
  else:
    num_classes = int(max(v.max() for v in ylist)) + 1
  if num_classes < 2:
    raise DataError(f"{path}: {num_classes} class(es); classification needs >= 2.")

  # Values and their range.
  allx = [x] if mode == "pool" else [x["train"], x["test"]]
  if allx[0].dtype == np.uint8:
    value_range, transform = (0.0, 1.0), (lambda v: v.astype(np.float32) / 255.0)
  else:
    if "value_range" in arrays:
      vr = np.asarray(arrays["value_range"], np.float64).reshape(-1)
      if len(vr) != 2 or not np.all(np.isfinite(vr)) or vr[0] >= vr[1]:
        raise DataError(f"{path}: value_range must be [lo, hi] with lo < hi, got {vr}.")
      value_range = (float(vr[0]), float(vr[1]))
    else:
      value_range = (0.0, 1.0)
    lo = min(float(v.min()) for v in allx)
    hi = max(float(v.max()) for v in allx)
    if lo < value_range[0] or hi > value_range[1]:
      raise DataError(f"{path}: x spans [{lo:.4g}, {hi:.4g}], outside {list(value_range)}; "
                      "scale it into [0, 1] or store value_range=[lo, hi] in the .npz (and clip "
                      "to it).")
    transform = None

  # Attribute column.
  attribute = str(data_config.get("attribute", "") or "")
  if mode == "pool":
    available = sorted(k for k, v in arrays.items()
                       if k not in RESERVED_NPZ and v.ndim == 1 and len(v) == n[""])
  else:
    bases = {k[:-len("_train")] for k in keys if k.endswith("_train")} - {"x", "y"}
    available = sorted(b for b in bases if all(
        f"{b}_{s}" in arrays and arrays[f"{b}_{s}"].ndim == 1
        and len(arrays[f"{b}_{s}"]) == n[f"_{s}"] for s in ("train", "test")))
  if attribute and attribute not in available:
    raise unknown_attribute(path, attribute, available)

  if mode == "pool":
    test = _split_pool(ylist[0])
    xs = {"train": x[~test], "test": x[test]}
    yd = {"train": ylist[0][~test], "test": ylist[0][test]}
    raw = ({"train": arrays[attribute][~test], "test": arrays[attribute][test]}
           if attribute else None)
    order = {"train": np.flatnonzero(~test), "test": np.flatnonzero(test)}
  else:
    xs, yd = x, {"train": ylist[0], "test": ylist[1]}
    raw = ({s: arrays[f"{attribute}_{s}"] for s in ("train", "test")} if attribute else None)
    order = {s: np.arange(len(xs[s])) for s in ("train", "test")}
  src = DataSource(os.path.splitext(os.path.basename(path))[0],
                   ArraySplit(xs["train"], yd["train"], transform),
                   ArraySplit(xs["test"], yd["test"], transform),
                   tuple(int(d) for d in xs["train"].shape[1:]), num_classes, value_range,
                   f"arrays {path}", available_attributes=tuple(available))
  if attribute:
    attach_attribute(src, attribute, raw, order, "stratified")
  return src
