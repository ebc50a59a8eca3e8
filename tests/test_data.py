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
  # The speaker from the file name; `order` keeps the recording index n.
  src = ip.load_dataset(data_config(tmp_path, "spoken_digit", None, image_size=32,
                                    attribute="speaker"))
  assert src.attribute_values == ("jackson", "theo") and src.attribute_split == "recording"
  assert set(src.test.order.tolist()) == {0} and set(src.train.order.tolist()) == {5, 6}
  np.testing.assert_array_equal(np.bincount(src.train.get(np.arange(40))["attribute"]), [20, 20])


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


# ---------------------------------------------------------------- sensitive attributes


def test_har_subject_attribute_and_time_order(tmp_path):
  manual = data_fakes.write_har_npz(tmp_path / "m", n_train=24, n_test=12)
  plain = ip.load_dataset(data_config(tmp_path, "uci_har", manual))
  src = ip.load_dataset(data_config(tmp_path, "uci_har", manual, attribute="subject"))
  assert (src.attribute_name, src.num_attributes, src.attribute_split) == ("subject", 3, "time")
  assert src.attribute_values == (1, 2, 3)  # fake subjects: row % 3 + 1
  assert plain.attribute_name == "" and set(plain.train.get([0, 1])) == {"image", "label"}
  for split in ("train", "test"):
    sp = getattr(src, split)
    b = sp.get(np.arange(len(sp)))
    assert b["attribute"].dtype == np.int32
    # `order` is the window's row in the source file: labels row % 6, subjects row % 3 + 1.
    np.testing.assert_array_equal(b["label"], sp.order % 6)
    np.testing.assert_array_equal(np.asarray(src.attribute_values)[b["attribute"]],
                                  sp.order % 3 + 1)
    np.testing.assert_array_equal(b["image"], getattr(plain, split).get(np.arange(len(sp)))[
        "image"])  # the attribute changes nothing else
  limited = ip.load_dataset(data_config(tmp_path, "uci_har", manual, attribute="subject",
                                        train_limit=10))
  np.testing.assert_array_equal(limited.train.get(np.arange(10))["attribute"],
                                src.train.get(np.arange(10))["attribute"])
  np.testing.assert_array_equal(limited.train.order, src.train.order[:10])


def test_unknown_attribute_names_the_available_ones(tmp_path):
  manual = data_fakes.write_har_npz(tmp_path / "m")
  with pytest.raises(DataError, match=r"no attribute 'speaker'.*available: \['subject'\]"):
    ip.load_dataset(data_config(tmp_path, "uci_har", manual, attribute="speaker"))
  cfg = common.get_base_config()
  cfg.data.name, cfg.data.attribute = "uci_har", "speaker"
  with pytest.raises(ConfigError, match=r"data.attribute='speaker'.*available: \['subject'\]"):
    validate_config(cfg)
  cfg.data.name, cfg.data.attribute = "digits", "subject"
  with pytest.raises(ConfigError, match="available: none"):
    validate_config(cfg)


def test_tfds_feature_as_attribute(tmp_path):
  with tfds.testing.mock_data(num_examples=12):
    src = ip.load_dataset(data_config(tmp_path, "smallnorb", image_size=24,
                                      attribute="label_lighting"))
    with pytest.raises(DataError, match=r"no attribute 'colour'.*'instance', 'label_azimuth'"):
      ip.load_dataset(data_config(tmp_path, "smallnorb", image_size=24, attribute="colour"))
  assert src.attribute_split == "stratified" and 2 <= src.num_attributes <= 6
  b = src.test.get(np.arange(12))
  assert b["attribute"].max() < src.num_attributes and b["image"].shape == (12, 24, 24, 1)


def test_pipeline_batches_carry_the_attribute(tmp_path):
  from ran_jax import parallel

  manual = data_fakes.write_har_npz(tmp_path / "m")
  mesh = parallel.make_mesh()
  src = ip.load_dataset(data_config(tmp_path, "uci_har", manual, attribute="subject"))
  plain = ip.load_dataset(data_config(tmp_path, "uci_har", manual))
  with_a = next(ip.InputPipeline(src, 8, 8, seed=3, mesh=mesh).train_batches(0, 1))
  without = next(ip.InputPipeline(plain, 8, 8, seed=3, mesh=mesh).train_batches(0, 1))
  assert set(without) == {"image", "label"} and set(with_a) == {"image", "label", "attribute"}
  np.testing.assert_array_equal(np.asarray(with_a["image"]), np.asarray(without["image"]))
  assert with_a["attribute"].sharding.spec[0] == parallel.DATA_AXIS
  ev = next(ip.InputPipeline(src, 8, 8, seed=3, mesh=mesh).eval_batches())
  assert set(ev) == {"image", "label", "attribute", "mask"}


# ---------------------------------------------------------------- own data


def test_image_folder_splits_and_pool(tmp_path):
  root = data_fakes.write_image_folder(tmp_path / "imgs")
  src = ip.load_dataset(data_config(tmp_path, str(root), image_size=0))
  assert src.input_shape == (12, 10, 1) and src.num_classes == 2
  assert (len(src.train), len(src.test)) == (6, 4)
  b = check_batch(src, "test", n=4)
  np.testing.assert_array_equal(b["label"], [0, 0, 1, 1])  # classes sorted: cat, dog
  from PIL import Image
  raw = np.asarray(Image.open(root / "test" / "dog" / "001.png"), np.float32) / 255
  np.testing.assert_allclose(b["image"][3, ..., 0], raw)  # pixels / 255, no other change
  pool = data_fakes.write_image_folder(tmp_path / "pool", per_class=(8, 2), splits=False,
                                       mode="RGB")
  src = ip.load_dataset(data_config(tmp_path, str(pool), image_size=8))
  assert src.input_shape == (8, 8, 3) and (len(src.train), len(src.test)) == (16, 4)
  cfg = common.get_base_config()
  cfg.data.name = str(pool)
  validate_config(cfg)


@pytest.mark.parametrize("problem,match", [
    ("non_image", r"not image files: \['notes.txt'\]"),
    ("empty_class", "class folder 'dog' holds no images"),
    ("sizes", "2 different sizes.*data.image_size"),
    ("corrupt", "cannot be read as an image"),
    ("no_test", "has train/ but no test/"),
    ("extra_test_class", r"test has classes missing from train: \['emu'\]"),
    ("one_class", "1 class folder"),
])
def test_malformed_image_folders(tmp_path, problem, match):
  root = data_fakes.write_image_folder(tmp_path / "imgs")
  if problem == "non_image":
    (root / "train" / "cat" / "notes.txt").write_text("x")
  elif problem == "empty_class":
    for f in (root / "train" / "dog").iterdir():
      f.unlink()
  elif problem == "sizes":
    data_fakes.write_png(str(root / "train" / "cat" / "big.png"), 20, 20, 0)
  elif problem == "corrupt":
    (root / "test" / "cat" / "bad.png").write_bytes(b"not a png")
  elif problem == "no_test":
    import shutil
    shutil.rmtree(root / "test")
  elif problem == "extra_test_class":
    data_fakes.write_png(str(root / "test" / "emu" / "0.png"), 12, 10, 0)
  elif problem == "one_class":
    import shutil
    shutil.rmtree(root / "train" / "dog")
    shutil.rmtree(root / "test" / "dog")
  with pytest.raises(DataError, match=match):
    ip.load_dataset(data_config(tmp_path, str(root), image_size=0))


def _npz(path, **arrays):
  np.savez(path, **arrays)
  return str(path)


def test_npz_pool_and_splits_with_attribute(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (20, 6, 6), dtype=np.uint8)
  y = np.arange(20) % 2
  who = np.array(["ann", "bob", "cy", "dan"] * 5)
  path = _npz(tmp_path / "d.npz", x=x, y=y, person=who)
  src = ip.load_dataset(data_config(tmp_path, path, attribute="person"))
  assert src.input_shape == (6, 6, 1) and src.num_classes == 2 and src.value_range == (0, 1)
  assert (len(src.train), len(src.test)) == (16, 4)  # every 5th per class is test
  assert src.attribute_values == ("ann", "bob", "cy", "dan")
  b = src.test.get(np.arange(4))
  np.testing.assert_array_equal(b["image"][..., 0], x[src.test.order].astype(np.float32) / 255)
  np.testing.assert_array_equal(np.asarray(src.attribute_values)[b["attribute"]],
                                who[src.test.order])
  with pytest.raises(DataError, match=r"no attribute 'age'.*available: \['person'\]"):
    ip.load_dataset(data_config(tmp_path, path, attribute="age"))
  xf = rng.uniform(-2, 2, (10, 4, 4, 2)).astype(np.float32)
  path = _npz(tmp_path / "s.npz", x_train=xf, y_train=np.arange(10) % 3, x_test=xf[:4],
              y_test=np.arange(4) % 3, value_range=np.array([-2.0, 2.0]),
              site_train=np.arange(10) % 2, site_test=np.arange(4) % 2)
  src = ip.load_dataset(data_config(tmp_path, path, attribute="site"))
  assert src.value_range == (-2.0, 2.0) and src.num_classes == 3 and src.num_attributes == 2
  np.testing.assert_array_equal(src.train.get(np.arange(10))["image"], xf)


@pytest.mark.parametrize("arrays,match", [
    (dict(images=np.zeros((4, 3, 3))), "needs arrays x and y"),
    (dict(x=np.zeros((4, 3)), y=np.zeros(4, int)), r"expected \[N, H, W, C\]"),
    (dict(x=np.zeros((4, 3, 3)), y=np.zeros(5, int)), r"y has shape \(5,\).*4 examples"),
    (dict(x=np.full((4, 3, 3), np.nan), y=np.arange(4) % 2), "NaN or Inf"),
    (dict(x=np.full((4, 3, 3), 3.0), y=np.arange(4) % 2), r"outside \[0.0, 1.0\].*value_range"),
    (dict(x=np.zeros((4, 3, 3)), y=np.array([0, 1, -1, 0])), "labels must be >= 0"),
    (dict(x=np.zeros((4, 3, 3)), y=np.array([0.5, 1, 0, 1])), "labels must be integers"),
    (dict(x=np.zeros((4, 3, 3)), y=np.zeros(4, int)), "1 class"),
    (dict(x_train=np.zeros((4, 3, 3)), y_train=np.arange(4) % 2, x_test=np.zeros((2, 4, 4)),
          y_test=np.arange(2)), "x_train examples are"),
])
def test_malformed_npz(tmp_path, arrays, match):
  path = _npz(tmp_path / "bad.npz", **arrays)
  with pytest.raises(DataError, match=match):
    ip.load_dataset(data_config(tmp_path, path))


def test_missing_npz_path_is_named(tmp_path):
  missing = str(tmp_path / "nope.npz")
  with pytest.raises(DataError, match="no such .npz file"):
    ip.load_dataset(data_config(tmp_path, missing))
  cfg = common.get_base_config()
  cfg.data.name = missing
  with pytest.raises(ConfigError, match="data.name=.*nope.npz"):
    validate_config(cfg)
