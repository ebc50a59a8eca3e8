"""TFDS builder `cifar10_jpg`: CIFAR-10 from a JPEG copy (LOSSY, not the original pixels).

For machines without the canonical `cifar-10-binary.tar.gz`. manual_dir holds
`cifar10_jpg.tar.gz` (members `[<prefix>/]train/<class>/<n>.jpg` and
`.../test/<class>/<n>.jpg`) or the extracted `train/` and `test/` folders. The
JPEG bytes are stored as they are (quality-75, 4:2:0 re-encodes of CIFAR-10),
so accuracies differ slightly from the original; the original sample order is lost.
"""

from __future__ import annotations

import io
import os
import tarfile

import tensorflow_datasets as tfds

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck")  # alphabetical = CIFAR-10 index order
ARCHIVE = "cifar10_jpg.tar.gz"
MANUAL_INSTRUCTIONS = f"""
Put {ARCHIVE} (train/<class>/*.jpg and test/<class>/*.jpg) or the extracted
train/ and test/ folders in manual_dir.
"""


def available(manual_dir: str) -> bool:
  return (os.path.exists(os.path.join(manual_dir, ARCHIVE))
          or os.path.isdir(os.path.join(manual_dir, "train", CLASS_NAMES[0])))


def _split_and_class(path: str):
  parts = path.replace("\\", "/").split("/")
  if len(parts) < 3 or not parts[-1].lower().endswith((".jpg", ".jpeg")):
    return None
  split, cls = parts[-3], parts[-2]
  if split not in ("train", "test") or cls not in CLASS_NAMES:
    return None
  return split, cls


class Cifar10Jpg(tfds.core.GeneratorBasedBuilder):
  """CIFAR-10 as lossy JPEG files."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_INSTRUCTIONS
  PREPARES_WITHOUT_TF = False

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(32, 32, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(names=CLASS_NAMES),
            "id": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
    )

  def _split_generators(self, dl_manager):
    manual = os.fspath(dl_manager.manual_dir)
    if not available(manual):
      raise FileNotFoundError(f"No CIFAR-10 JPEG copy in {manual}." + MANUAL_INSTRUCTIONS)
    return {s: self._generate_examples(manual, s) for s in ("train", "test")}

  def _files(self, manual, split):
    archive = os.path.join(manual, ARCHIVE)
    if os.path.exists(archive):
      with tarfile.open(archive) as tf_:
        for m in tf_:
          sc = _split_and_class(m.name) if m.isfile() else None
          if sc and sc[0] == split:
            yield m.name, sc[1], tf_.extractfile(m).read()
    else:
      for cls in CLASS_NAMES:
        d = os.path.join(manual, split, cls)
        for f in sorted(os.listdir(d)):
          if f.lower().endswith((".jpg", ".jpeg")):
            with open(os.path.join(d, f), "rb") as fh:
              yield f"{split}/{cls}/{f}", cls, fh.read()

  def _generate_examples(self, manual, split):
    for name, cls, data in self._files(manual, split):
      key = "/".join(name.split("/")[-3:])
      yield key, {"image": io.BytesIO(data), "label": cls, "id": key}


