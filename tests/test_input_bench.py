"""The input benchmark (bench/input_bench.py) on 16 tiny fake ImageNet JPEGs.

Every pipeline it times must decode the same images (today's and Grain's ordered
pipeline also in the same order, resumable at any step), so that its rates compare
the same work; the JSON it writes holds positive finite rates.
"""

import json
import math
import sys

import numpy as np
import pytest

from bench import input_bench as ib
from bench.__main__ import main as bench_main
from ran_jax import parallel

BATCH = 4  # 16 images: 4 steps per epoch


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
  root = tmp_path_factory.mktemp("fake_imagenet")
  stats = ib.write_fake_imagenet(str(root / "manual"), 16, n_val=3, classes=2, scale=0.2)
  src = ib.load_fake_imagenet(str(root / "manual"), str(root / "tfds"), image_size=32)
  return root, stats, src


def _np(batch):
  return {k: np.asarray(v) for k, v in batch.items()}


def _batches(name, src, workers, start, end):
  return [_np(b) for b in ib.make_pipeline(name, src, 3, BATCH, workers, start, end,
                                           parallel.make_mesh())]


def test_fake_imagenet_goes_through_tfds(fake):
  _, stats, src = fake
  assert (stats["train_images"], len(src.train), len(src.test)) == (16, 16, 3)
  assert src.input_shape == (32, 32, 3) and src.num_classes == 1000
  b = src.train.get(np.arange(16))
  assert set(b["label"].tolist()) == {0, 1}  # the first two synsets of TFDS's label list
  assert b["image"].dtype == np.float32 and 0.0 <= b["image"].min() < b["image"].max() <= 1.0
  assert len({bytes(x) for x in b["image"]}) == 16  # distinct images


def test_full_size_images_are_ilsvrc_like():
  sizes = ib.image_sizes(400, seed=0)
  w, h = np.asarray(sizes).T
  assert 450 <= np.median(w) <= 550 and 300 <= np.median(h) <= 420
  kb = [len(ib.fake_jpeg(*sizes[i], seed=i)) / 1e3 for i in range(3)]
  assert all(60 < k < 250 for k in kb), kb


def test_every_pipeline_decodes_the_same_images(fake):
  """Steps 0..5 (over an epoch boundary): today's batches, the pipeline's global arrays
  and Grain in 2 worker processes are identical; Grain's sampler decodes the same
  records to the same pixels, in its own order."""
  _, _, src = fake
  ref = _batches("today_decode", src, 1, 0, 6)
  for name, workers in (("today_decode", 2), ("today_pipeline", 2), ("grain_ordered", 2),
                        ("grain_ordered", 0)):
    got = _batches(name, src, workers, 0, 6)
    assert len(got) == 6, name
    for r, g in zip(ref, got):
      assert set(g) == {"image", "label"}, name
      np.testing.assert_array_equal(g["image"], r["image"], err_msg=name)
      np.testing.assert_array_equal(g["label"], r["label"], err_msg=name)
  # Each epoch is a permutation of the 16 records.
  labels = np.concatenate([b["label"] for b in ref[:4]])
  assert sorted(labels.tolist()) == sorted(src.train.get(np.arange(16))["label"].tolist())
  sampled = _batches("grain_sampler", src, 1, 0, 6)
  keys = np.concatenate([b["key"] for b in sampled])
  assert sorted(keys[:16].tolist()) == list(range(16))  # one epoch: every record once
  for b in sampled:
    want = src.train.get(b["key"])
    np.testing.assert_array_equal(b["image"], want["image"])
    np.testing.assert_array_equal(b["label"], want["label"])


def test_decode_stages_are_the_decoder(fake):
  """The per-step timing runs the very steps of the dataset's decoder (same pixels)."""
  _, _, src = fake
  stages = ib.decode_stages(src.train.records, 5, size=32, batch=2)
  np.testing.assert_array_equal(stages["batch"], src.train.get(np.arange(5))["image"])
  assert set(stages["ms_per_image"]) == set(ib.STAGE_RELEASES_GIL)
  assert 0 < stages["gil_held_fraction"] < 1 and stages["total_ms_per_image"] > 0


def test_grain_ordered_resumes_at_any_step(fake):
  _, _, src = fake
  full = _batches("grain_ordered", src, 1, 0, 7)
  resumed = _batches("grain_ordered", src, 1, 5, 7)
  for r, g in zip(full[5:], resumed):
    np.testing.assert_array_equal(g["image"], r["image"])


def test_ordered_key_slices_each_global_batch_by_process():
  n, gb = 24, 8
  order = ib.epoch_order(5, 1, n)
  for p in range(2):
    key = ib.OrderedKey(5, n, gb, p, 2)
    step = 4  # epoch 1, position 1
    got = [key(step * 4 + t) for t in range(4)]
    assert got == order[8 + 4 * p:8 + 4 * (p + 1)].tolist()


def test_run_bench_writes_rates(fake, tmp_path):
  root, _, _ = fake
  out = tmp_path / "input_bench.json"
  report = ib.run_bench(n_train=16, workdir=str(root), batch=BATCH, steps=2, workers=(1,),
                        image_size=64, images_per_s_per_chip={"*": 100.0}, out=str(out))
  data = json.loads(out.read_text())
  assert data["per_core"] == report["per_core"]
  assert {r["pipeline"] for r in data["results"]} == set(ib.PIPELINES)
  for r in data["results"]:
    for k in ("images_per_s", "images_per_cpu_s", "cpu_s", "wall_s"):
      assert math.isfinite(r[k]) and r[k] > 0, (r["pipeline"], k, r[k])
    assert r["images"] == 2 * BATCH and len(r["load_avg_1min"]) == 2
  assert data["dataset"]["train_images"] == 16
  assert data["decode_stages_one_thread"]["total_ms_per_image"] > 0
  assert all(math.isfinite(x) for x in data["load_avg_1min_start_end"])
  for name in ib.PIPELINES:
    one = data["per_core"][name]["by_workers"]["1"]
    assert one["images_per_cpu_s"] == [r["images_per_cpu_s"] for r in data["results"]
                                       if r["pipeline"] == name]
    assert one["ratio_to_today_pipeline"] > 0
  assert data["per_core"]["today_pipeline"]["by_workers"]["1"]["ratio_to_today_pipeline"] == 1
  rate = data["per_core"]["today_pipeline"]["images_per_cpu_s_min"]
  v5e = data["cores_needed"]["hosts"]["v5e-8 (ct5lp-hightpu-8t)"]
  assert v5e["cores_per_host"] == pytest.approx(8 * 100.0 / rate) and v5e["vcpus"] == 224


def test_cores_needed():
  c = ib.cores_needed(images_per_s_per_chip=300.0, chips_per_host=8, per_core_rate=150.0)
  assert c["cores_per_chip"] == pytest.approx(2.0)
  assert c["cores_per_host"] == pytest.approx(16.0)
  assert c["cores_per_host_1p5x"] == pytest.approx(24.0)
  with pytest.raises(ValueError, match="positive"):
    ib.cores_needed(300.0, 8, 0.0)


def test_cores_from_a_report_per_generation(tmp_path):
  src = tmp_path / "bench.json"
  src.write_text(json.dumps({"per_core": {"today_pipeline": {"images_per_cpu_s_min": 200.0}}}))
  argv = sys.argv
  sys.argv = ["bench", "input", f"--cores_from={src}", "--images_per_s_per_chip=v5e=300,v6e=6000"]
  try:
    with pytest.raises(SystemExit) as e:
      bench_main()
  finally:
    sys.argv = argv
  assert e.value.code == 0
  hosts = json.loads(src.read_text())["cores_needed"]["hosts"]
  assert set(hosts) == {"v5e-8 (ct5lp-hightpu-8t)", "v6e-8 (ct6e-standard-8t)"}
  v5e, v6e = hosts["v5e-8 (ct5lp-hightpu-8t)"], hosts["v6e-8 (ct6e-standard-8t)"]
  assert v5e["cores_per_host_1p5x"] == pytest.approx(1.5 * 8 * 300 / 200) and v5e["covers_1p5x"]
  assert v6e["cores_per_host_1p5x"] == pytest.approx(360.0) and not v6e["covers_1p5x"]  # > 180
  assert ib.parse_chip_rates("262") == {"*": 262.0}
