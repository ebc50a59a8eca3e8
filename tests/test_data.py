"""Offline data tests: TFDS mocks for catalog datasets, generated files for the builders
and manual paths, and real MNIST from ../shared/data/mnist when it is there."""

import gzip
import os

import chex
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import common
from ran_jax import input_pipeline as ip
from ran_jax.config_lib import ConfigError, validate_config
from ran_jax.data import tfds_prep
from ran_jax.data.source import ArraySplit, DataError, DataSource
from tests import data_fakes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_MNIST = os.path.join(ROOT, "..", "shared", "data", "mnist")


def data_config(tmp_path, name, manual_dir=None, **kw):
  c = common.get_base_config().data
  c.name = name
  c.data_dir = str(tmp_path / "tfds")
  c.manual_dir = str(manual_dir) if manual_dir else None
  c.image_size = kw.pop("image_size", 0)
  for k, v in kw.items():
    c[k] = v
  return c


def check_batch(src, split="train", n=4):
  b = getattr(src, split).get(np.arange(n))
  chex.assert_shape(b["image"], (n, *src.input_shape))
  chex.assert_type(b["image"], np.float32)
  assert b["label"].dtype == np.int32
  lo, hi = src.value_range
  assert lo <= b["image"].min() and b["image"].max() <= hi
  assert 0 <= b["label"].min() and b["label"].max() < src.num_classes
  return b


# ---------------------------------------------------------------- catalog datasets (mocked)


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3)),
                                        ("fashion_mnist", (28, 28, 1))])
def test_catalog_datasets_mocked(tmp_path, name, shape):
  with tfds.testing.mock_data(num_examples=24):
    src = ip.load_dataset(data_config(tmp_path, name, num_classes=10))
  assert src.input_shape == shape and src.num_classes == 10
  assert len(src.train) == 24 and len(src.test) == 24
  check_batch(src)


def test_image_size_resizes(tmp_path):
  with tfds.testing.mock_data(num_examples=8):
    src = ip.load_dataset(data_config(tmp_path, "mnist", image_size=32))
  assert src.input_shape == (32, 32, 1)
  check_batch(src)


# ---------------------------------------------------------------- errors


def test_unknown_dataset_name(tmp_path):
  with pytest.raises(DataError, match="Unknown dataset 'no_such_set'.*mnist"):
    ip.load_dataset(data_config(tmp_path, "no_such_set"))
  cfg = common.get_base_config()
  cfg.data.name = "no_such_set"
  with pytest.raises(ConfigError, match="data.name='no_such_set'"):
    validate_config(cfg)
  cfg.data.name = "fashion_mnist"  # any TFDS catalog name is accepted
  validate_config(cfg)


def test_missing_manual_files_are_listed(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "train-images-idx3-ubyte.gz").write_bytes(b"x")
  with pytest.raises(DataError, match="missing in --config.data.manual_dir.*t10k-labels"):
    ip.load_dataset(data_config(tmp_path, "mnist", manual))


def test_checksum_mismatch(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
    (manual / f).write_bytes(gzip.compress(b"not mnist"))
  with pytest.raises(DataError, match="wrong checksum"):
    ip.load_dataset(data_config(tmp_path, "mnist", manual))


def test_labels_outside_class_count():
  x = np.zeros((4, 8, 8, 1), np.float32)
  bad = DataSource("t", ArraySplit(x, np.array([0, 1, 2, 10])), ArraySplit(x, np.zeros(4, int)),
                   (8, 8, 1), 10)
  with pytest.raises(DataError, match=r"labels span \[0, 10\].*10 classes"):
    ip.check_source(bad)
  ok = DataSource("t", ArraySplit(x, np.zeros(4, int)), ArraySplit(x, np.zeros(4, int)),
                  (8, 8, 1), 10)
  ip.check_source(ok)
  with pytest.raises(DataError, match="data.num_classes=1000"):
    ip.check_source(ok, num_classes=1000)


def test_values_outside_range_are_rejected():
  x = np.full((4, 8, 8, 1), 2.0, np.float32)
  src = DataSource("t", ArraySplit(x, np.zeros(4, int)), ArraySplit(x, np.zeros(4, int)),
                   (8, 8, 1), 10, (0.0, 1.0))
  with pytest.raises(DataError, match="outside its value_range"):
    ip.check_source(src)


def test_input_shape_that_does_not_fit_the_encoder(tmp_path):
  from ran_jax.models import ShapeError, build_encoder_spec

  src = ip.load_dataset(data_config(tmp_path, "uci_har", data_fakes.write_har_npz(tmp_path / "m")))
  with pytest.raises(ShapeError, match="vgg16"):
    build_encoder_spec("vgg16", src.input_shape)


def test_har_missing_source_says_what_to_provide(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="(?s)UCI HAR Dataset.*har_windows.npz"):
    ip.load_dataset(data_config(tmp_path, "uci_har", tmp_path / "empty"))


def test_har_bad_labels_stop_preparation(tmp_path):
  manual = data_fakes.write_har_official(tmp_path / "m", label_offset=3)  # labels up to 8
  with pytest.raises(DataError, match="activities 1..6"):
    ip.load_dataset(data_config(tmp_path, "uci_har", manual))


# ---------------------------------------------------------------- builders from local files


@pytest.mark.parametrize("layout", ["official", "hapt"])
def test_uci_har_builder(tmp_path, layout):
  write = data_fakes.write_har_official if layout == "official" else data_fakes.write_har_npz
  manual = write(tmp_path / "m")
  src = ip.load_dataset(data_config(tmp_path, "uci_har", manual, num_classes=6))
  assert src.input_shape == (128, 1, 9) and src.num_classes == 6
  assert (len(src.train), len(src.test)) == (24, 12)
  assert layout in src.description
  b = check_batch(src, "test", n=12)
  # Normalisation: train channels standardised (clip at 4 std barely touches sines).
  full = src.train.get(np.arange(len(src.train)))["image"]
  np.testing.assert_allclose(full.mean(axis=(0, 1, 2)), 0, atol=1e-3)
  np.testing.assert_allclose(full.std(axis=(0, 1, 2)), 1, atol=0.05)
  np.testing.assert_array_equal(np.bincount(b["label"], minlength=6), [2] * 6)  # TFDS reorders
  # A second load reads the prepared copy, without manual_dir.
  again = ip.load_dataset(data_config(tmp_path, "uci_har"))
  np.testing.assert_array_equal(again.test.get(np.arange(12))["image"],
                                src.test.get(np.arange(12))["image"])


def test_uci_har_official_zip(tmp_path):
  import shutil

  data_fakes.write_har_official(tmp_path / "src")
  (tmp_path / "m").mkdir()
  shutil.make_archive(str(tmp_path / "m" / "UCI HAR Dataset"), "zip", tmp_path / "src")
  src = ip.load_dataset(data_config(tmp_path, "uci_har", tmp_path / "m"))
  assert (len(src.train), len(src.test)) == (24, 12)


def test_cifar10_from_jpeg_copy(tmp_path):
  manual = data_fakes.write_cifar10_jpg(tmp_path / "m")
  src = ip.load_dataset(data_config(tmp_path, "cifar10", manual, num_classes=10))
  assert "lossy JPEG" in src.description
  assert (len(src.train), len(src.test)) == (20, 10) and src.input_shape == (32, 32, 3)
  b = src.test.get(np.arange(10))
  assert sorted(b["label"].tolist()) == list(range(10))


def test_imagenet_fake_tree(tmp_path):
  """The manual-download tars' layout, prepared by TFDS's imagenet2012 builder (smoke config)."""
  from ran_jax.models import build_encoder_spec

  cfg = __import__("configs.imagenet_vgg", fromlist=["x"]).get_config("smoke")
  cfg.data.manual_dir = str(data_fakes.write_imagenet(tmp_path / "m"))
  cfg.data.data_dir = str(tmp_path / "tfds")
  cfg.data.train_limit = cfg.data.test_limit = 0
  src = ip.load_dataset(cfg.data)
  assert src.num_classes == 1000
  build_encoder_spec(cfg.model.encoder, src.input_shape, cfg.model.widths)
  assert isinstance(src.train, ip.RecordSplit)  # decoded per batch, not held in memory
  assert (len(src.train), len(src.test)) == (4, 3) and src.input_shape == (32, 32, 3)
  b = check_batch(src, n=4)
  assert set(b["label"].tolist()) == {0, 1}  # n01440764, n01443537: the first two synsets
  labels = sorted(src.test.get(np.arange(3))["label"].tolist())
  names = tfds.builder("imagenet2012", data_dir=str(tmp_path / "tfds")).info.features["label"]
  assert sorted(names.int2str(i) for i in labels) == sorted(["n01751748", "n09193705",
                                                             "n02105855"])


def test_imagenet_without_tars(tmp_path):
  (tmp_path / "m").mkdir()
  with pytest.raises(DataError, match="ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar"):
    ip.load_dataset(data_config(tmp_path, "imagenet2012", tmp_path / "m", image_size=32))


def test_spoken_digit_log_mel(tmp_path):
  manual = data_fakes.write_fsdd(tmp_path / "m")
  src = ip.load_dataset(data_config(tmp_path, "spoken_digit", manual, image_size=32,
                                    num_classes=10))
  assert (len(src.train), len(src.test)) == (40, 20)  # recordings 0-4 are test
  assert src.input_shape == (32, 32, 1)
  b = check_batch(src, "test", n=20)
  assert b["image"].max() == pytest.approx(1.0) and b["image"].min() == pytest.approx(0.0)
  # The tone's pitch moves the energy up the mel axis as the digit grows.
  rows = np.arange(32)[::-1]
  peak = {int(lab): float((im[..., 0].mean(1) * rows).sum() / im[..., 0].mean(1).sum())
          for im, lab in zip(b["image"], b["label"])}
  assert peak[9] > peak[0]
  # Prepared in TFDS's own `spoken_digit` layout: the catalog reader opens it.
  ds = tfds.data_source("spoken_digit", split="train", data_dir=str(tmp_path / "tfds"))
  assert len(ds) == 60


def test_har_prepares_and_reads_without_importing_tensorflow(tmp_path):
  """The package's own builder and all reading never import TensorFlow."""
  import subprocess
  import sys

  manual = data_fakes.write_har_npz(tmp_path / "m")
  code = f"""
import sys
sys.path.insert(0, {ROOT!r})
from configs import common
from ran_jax import input_pipeline as ip
c = common.get_base_config().data
c.name, c.manual_dir, c.data_dir = 'uci_har', {str(manual)!r}, {str(tmp_path / 'tfds')!r}
src = ip.load_dataset(c)
src.train.get([0, 1])
print('OK', len(src.train), len(src.test), 'tensorflow' in sys.modules)
"""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                     timeout=300)
  assert r.returncode == 0 and "OK 24 12 False" in r.stdout, (r.stdout, r.stderr[-3000:])


# ---------------------------------------------------------------- pipeline


def test_pipeline_is_deterministic_and_resumable(tmp_path):
  from ran_jax import parallel

  src = ip.load_dataset(data_config(tmp_path, "uci_har", data_fakes.write_har_npz(tmp_path / "m")))
  mesh = parallel.make_mesh()
  p1 = ip.InputPipeline(src, 8, 8, seed=3, mesh=mesh)
  p2 = ip.InputPipeline(src, 8, 8, seed=3, mesh=mesh)
  full = [np.asarray(b["label"]) for b in p1.train_batches(0, 6)]
  resumed = [np.asarray(b["label"]) for b in p2.train_batches(4, 6)]
  np.testing.assert_array_equal(full[4], resumed[0])
  np.testing.assert_array_equal(full[5], resumed[1])
  other = ip.InputPipeline(src, 8, 8, seed=4, mesh=mesh)
  assert not np.array_equal(p1.epoch_order(0), other.epoch_order(0))
  b = next(p1.train_batches(0, 1))
  assert b["image"].sharding.spec[0] == parallel.DATA_AXIS


@pytest.mark.parametrize("config_name", ["mnist_lenet", "cifar10_alexnet", "har_lenet",
                                         "ubisound_lenet"])
def test_task_configs_load_and_fit_their_encoder(tmp_path, config_name):
  """Each task config's smoke variant: its data loads and its input fits its encoder."""
  import importlib

  from ran_jax.models import build_encoder_spec

  cfg = importlib.import_module(f"configs.{config_name}").get_config("smoke")
  validate_config(cfg, num_devices=4)
  cfg.data.data_dir = str(tmp_path / "tfds")
  manual = {"har_lenet": data_fakes.write_har_npz,
            "ubisound_lenet": data_fakes.write_fsdd}.get(config_name)
  if manual:
    cfg.data.manual_dir = str(manual(tmp_path / "m"))
    cfg.data.test_limit = min(cfg.data.test_limit, 3)
    src = ip.load_dataset(cfg.data)
  else:
    with tfds.testing.mock_data(num_examples=64):
      src = ip.load_dataset(cfg.data)
  build_encoder_spec(cfg.model.encoder, src.input_shape, cfg.model.widths)
  check_batch(src, n=min(4, len(src.train)))


# ---------------------------------------------------------------- real MNIST


@pytest.mark.skipif(not os.path.isdir(SHARED_MNIST),
                    reason=f"real MNIST IDX files not found at {SHARED_MNIST}")
def test_real_mnist_prepares_from_shared_idx_files(tmp_path):
  """TFDS checksums the four canonical files in full, then writes (here) 300 examples/split."""
  b = tfds_prep.get_builder("mnist", str(tmp_path / "tfds"))
  tfds_prep.prepare(b, SHARED_MNIST, max_examples_per_split=300)
  c = data_config(tmp_path, "mnist", num_classes=10, image_size=28)
  src = ip.load_dataset(c)  # already prepared: read back without manual_dir
  assert (len(src.train), len(src.test)) == (300, 300)
  x = src.train.get(np.arange(300))
  assert 0.10 < x["image"].mean() < 0.16  # MNIST pixel mean 0.1307
  assert len(np.unique(x["label"])) == 10
