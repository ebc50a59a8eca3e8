"""TFDS builder `uci_har`: UCI Human Activity Recognition Using Smartphones.

Each example is one 2.56 s window: 128 steps x 9 inertial channels in the UCI
'Inertial Signals' order (body_acc xyz [g], body_gyro xyz [rad/s], total_acc
xyz [g]), one of 6 activities, the volunteer id (`subject`) and the window's row
in its source file (`index`: both sources list a volunteer's windows in time
order, consecutive windows overlapping by 50 %; TFDS shuffles the stored order,
so the row is kept to split attribute attackers in time without leaks). Two builder configs, one
per source of the same layout, so that prepared copies never get mixed up:

* `uci_har/official`: the official "UCI HAR Dataset" (7,352 train / 2,947 test
  windows). manual_dir holds the folder `UCI HAR Dataset/` (or is that folder),
  or the archive `UCI HAR Dataset.zip`.
* `uci_har/hapt`: `har_windows.npz` (7,415 / 2,996 windows), a close
  re-derivation of the same windows from the HAPT raw signals of the same 30
  volunteers (same filters, windowing and test subjects; not byte-identical).
"""

from __future__ import annotations

import os
import zipfile

import numpy as np
import tensorflow_datasets as tfds

CLASS_NAMES = ("WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING",
               "LAYING")
CHANNELS = ("body_acc_x", "body_acc_y", "body_acc_z", "body_gyro_x", "body_gyro_y",
            "body_gyro_z", "total_acc_x", "total_acc_y", "total_acc_z")
WINDOW = 128
OFFICIAL_DIR = "UCI HAR Dataset"
OFFICIAL_ZIP = "UCI HAR Dataset.zip"
HAPT_NPZ = "har_windows.npz"

MANUAL_INSTRUCTIONS = f"""
Put one of these in manual_dir:
  * the official "{OFFICIAL_DIR}" folder (train/Inertial Signals/*.txt, train/y_train.txt,
    train/subject_train.txt, same for test), or manual_dir may be that folder itself,
    or the archive "{OFFICIAL_ZIP}" (https://archive.ics.uci.edu/dataset/240);
  * or "{HAPT_NPZ}" (x_train [N,128,9], y_train 0..5, subject_train, same for test).
"""


def find_official(manual_dir: str):
  """The official folder inside (or equal to) manual_dir, else None."""
  for d in (os.path.join(manual_dir, OFFICIAL_DIR), manual_dir):
    if os.path.isdir(os.path.join(d, "train", "Inertial Signals")):
      return d
  return None


def available_sources(manual_dir: str) -> list[str]:
  """Builder configs that manual_dir can prepare, best first."""
  out = []
  if find_official(manual_dir) or os.path.exists(os.path.join(manual_dir, OFFICIAL_ZIP)):
    out.append("official")
  if os.path.exists(os.path.join(manual_dir, HAPT_NPZ)):
    out.append("hapt")
  return out


def read_official_split(root: str, split: str):
  """(x [N, 128, 9] float32, y [N] 0..5, subject [N]) from the official text files."""
  sig = os.path.join(root, split, "Inertial Signals")
  chans = []
  for c in CHANNELS:
    path = os.path.join(sig, f"{c}_{split}.txt")
    if not os.path.exists(path):
      raise FileNotFoundError(f"missing {path}")
    chans.append(np.loadtxt(path, dtype=np.float32, ndmin=2))
  x = np.stack(chans, axis=-1)  # [N, 128, 9]
  y = np.loadtxt(os.path.join(root, split, f"y_{split}.txt"), dtype=np.int64, ndmin=1) - 1
  s = np.loadtxt(os.path.join(root, split, f"subject_{split}.txt"), dtype=np.int64, ndmin=1)
  return x, y, s


def read_hapt_split(path: str, split: str):
  with np.load(path, allow_pickle=False) as d:
    return (d[f"x_{split}"].astype(np.float32), d[f"y_{split}"].astype(np.int64),
            d[f"subject_{split}"].astype(np.int64))


class UciHar(tfds.core.GeneratorBasedBuilder):
  """UCI HAR inertial windows (9 x 128, 6 activities)."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.1.0": "Adds `index`, the window's row in its source file (time order).",
                   "1.0.0": "signal, label, subject."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_INSTRUCTIONS
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="official", description="Official UCI HAR Dataset files."),
      tfds.core.BuilderConfig(name="hapt", description="har_windows.npz, re-derived from HAPT."),
  ]
  PREPARES_WITHOUT_TF = True  # numpy features only

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "signal": tfds.features.Tensor(shape=(WINDOW, len(CHANNELS)), dtype=np.float32),
            "label": tfds.features.ClassLabel(names=CLASS_NAMES),
            "subject": tfds.features.Scalar(dtype=np.int32),
            "index": tfds.features.Scalar(dtype=np.int32),
        }),
        supervised_keys=("signal", "label"),
        homepage="https://archive.ics.uci.edu/dataset/240",
    )

  def _split_generators(self, dl_manager):
    manual = os.fspath(dl_manager.manual_dir)
    if self.builder_config.name == "official":
      root = find_official(manual)
      if root is None:
        zpath = os.path.join(manual, OFFICIAL_ZIP)
        if not os.path.exists(zpath):
          raise FileNotFoundError(f"No '{OFFICIAL_DIR}' folder or '{OFFICIAL_ZIP}' in {manual}."
                                  + MANUAL_INSTRUCTIONS)
        out = os.path.join(os.fspath(dl_manager.download_dir), "uci_har_extracted")
        with zipfile.ZipFile(zpath) as z:
          z.extractall(out)
        root = find_official(out)
        if root is None:
          raise FileNotFoundError(f"{zpath} does not hold '{OFFICIAL_DIR}/train/Inertial Signals'.")
      read = lambda split: read_official_split(root, split)  # noqa: E731
    else:
      path = os.path.join(manual, HAPT_NPZ)
      if not os.path.exists(path):
        raise FileNotFoundError(f"No {HAPT_NPZ} in {manual}." + MANUAL_INSTRUCTIONS)
      read = lambda split: read_hapt_split(path, split)  # noqa: E731
    return {s: self._generate_examples(read(s)) for s in ("train", "test")}

  def _generate_examples(self, arrays):
    x, y, s = arrays
    if x.ndim != 3 or x.shape[1:] != (WINDOW, len(CHANNELS)):
      raise ValueError(f"HAR windows must be [N, {WINDOW}, {len(CHANNELS)}], got {x.shape}.")
    if len(y) != len(x) or len(s) != len(x):
      raise ValueError(f"{len(x)} windows but {len(y)} labels and {len(s)} subject ids.")
    if y.min() < 0 or y.max() >= len(CLASS_NAMES):
      raise ValueError(f"HAR labels must be activities 1..6 (0..5 in the npz); got "
                       f"[{y.min()}, {y.max()}].")
    for i in range(len(x)):
      yield i, {"signal": x[i], "label": int(y[i]), "subject": int(s[i]), "index": i}
