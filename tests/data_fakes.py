"""Tiny generated files in the layouts the data builders read (no network, no shared data)."""

import io
import os
import tarfile

import numpy as np

HAR_CHANNELS = ("body_acc_x", "body_acc_y", "body_acc_z", "body_gyro_x", "body_gyro_y",
                "body_gyro_z", "total_acc_x", "total_acc_y", "total_acc_z")


def har_windows(n, seed):
  """Windows whose class sets a sine frequency: learnable, bounded, [n, 128, 9]."""
  rng = np.random.default_rng(seed)
  y = np.arange(n) % 6
  t = np.arange(128) / 50.0
  x = np.sin(2 * np.pi * (1 + y)[:, None, None] * t[None, :, None] + rng.uniform(0, 6, (n, 1, 9)))
  x = x * 0.5 + rng.normal(0, 0.05, (n, 128, 9))
  return x.astype(np.float32), y, (np.arange(n) % 3 + 1)


def write_har_official(root, n_train=24, n_test=12, label_offset=1):
  """The official "UCI HAR Dataset" text layout (labels 1..6)."""
  base = os.path.join(root, "UCI HAR Dataset")
  for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
    x, y, s = har_windows(n, seed)
    sig = os.path.join(base, split, "Inertial Signals")
    os.makedirs(sig, exist_ok=True)
    for c, name in enumerate(HAR_CHANNELS):
      np.savetxt(os.path.join(sig, f"{name}_{split}.txt"), x[:, :, c], fmt="%.6e")
    np.savetxt(os.path.join(base, split, f"y_{split}.txt"), y + label_offset, fmt="%d")
    np.savetxt(os.path.join(base, split, f"subject_{split}.txt"), s, fmt="%d")
  return root


def write_har_npz(root, n_train=24, n_test=12):
  xs, ys, ss = zip(*(har_windows(n, seed) for n, seed in ((n_train, 0), (n_test, 1))))
  os.makedirs(root, exist_ok=True)
  np.savez(os.path.join(root, "har_windows.npz"), x_train=xs[0], y_train=ys[0].astype(np.int8),
           subject_train=ss[0].astype(np.int8), x_test=xs[1], y_test=ys[1].astype(np.int8),
           subject_test=ss[1].astype(np.int8))
  return root


def jpeg_bytes(h, w, seed, channels=3):
  from PIL import Image

  rng = np.random.default_rng(seed)
  arr = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(arr if channels == 3 else arr[..., 0]).save(buf, format="JPEG")
  return buf.getvalue()


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def write_cifar10_jpg(root, per_class_train=2, per_class_test=1):
  from ran_jax.data.cifar10_jpg import CLASS_NAMES

  os.makedirs(root, exist_ok=True)
  with tarfile.open(os.path.join(root, "cifar10_jpg.tar.gz"), "w:gz") as tar:
    for split, n in (("train", per_class_train), ("test", per_class_test)):
      for ci, cls in enumerate(CLASS_NAMES):
        for i in range(n):
          _add(tar, f"{split}/{cls}/{i:04d}.jpg", jpeg_bytes(32, 32, 100 * ci + i))
  return root


def write_imagenet(root, synsets=("n01440764", "n01443537"), per_class=2, n_val=3):
  """ILSVRC2012_img_train.tar (a tar of per-synset tars) and ILSVRC2012_img_val.tar."""
  os.makedirs(root, exist_ok=True)
  with tarfile.open(os.path.join(root, "ILSVRC2012_img_train.tar"), "w") as train:
    for si, syn in enumerate(synsets):
      buf = io.BytesIO()
      with tarfile.open(fileobj=buf, mode="w") as inner:
        for i in range(per_class):
          _add(inner, f"{syn}_{i}.JPEG", jpeg_bytes(40 + 8 * i, 56, 10 * si + i))
      _add(train, f"{syn}.tar", buf.getvalue())
  with tarfile.open(os.path.join(root, "ILSVRC2012_img_val.tar"), "w") as val:
    for i in range(1, n_val + 1):
      _add(val, f"ILSVRC2012_val_{i:08d}.JPEG", jpeg_bytes(48, 36 + 4 * i, 1000 + i))
  return root


def write_fsdd(root, speakers=("jackson", "theo"), numbers=(0, 5, 6)):
  """recordings/<digit>_<speaker>_<n>.wav, 8 kHz int16 tones (n < 5: test)."""
  from scipy.io import wavfile

  rec = os.path.join(root, "recordings")
  os.makedirs(rec, exist_ok=True)
  t = np.arange(4000) / 8000.0
  for d in range(10):
    for spk in speakers:
      for n in numbers:
        x = 8000 * np.sin(2 * np.pi * (300 + 150 * d) * t) * np.hanning(len(t))
        wavfile.write(os.path.join(rec, f"{d}_{spk}_{n}.wav"), 8000, x.astype(np.int16))
  return root


def write_png(path, h, w, seed, mode="L"):
  from PIL import Image

  rng = np.random.default_rng(seed)
  shape = (h, w) if mode == "L" else (h, w, 3)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
  return path


def write_image_folder(root, classes=("cat", "dog"), per_class=(3, 2), size=(12, 10),
                       splits=True, mode="L"):
  """root/train/<class>/*.png and root/test/<class>/*.png (or root/<class>/* if not splits)."""
  for ci, c in enumerate(classes):
    for split, n in (zip(("train", "test"), per_class) if splits else [("", sum(per_class))]):
      for i in range(n):
        write_png(os.path.join(root, split, c, f"{i:03d}.png"), *size, seed=100 * ci + i,
                  mode=mode)
  return root
