"""The workdir on Cloud Storage: train, checkpoint, resume, export and deploy with
`--workdir=gs://bkt/run`, then attack, erase, sweep and search on gs://, against a local
fake-gcs-server (tests/gcs_server.py) that this module starts and stops. Each command runs
as a user would (a subprocess) from an empty scratch directory, which must stay empty:
everything goes to the bucket.
"""

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import gcs_server
from tests.helpers import subprocess_env

pytestmark = pytest.mark.slow

RUN = "gs://bkt/run"
ARGS = ["--config=digits_lenet:smoke", f"--workdir={RUN}"]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  with gcs_server.running(str(tmp_path_factory.mktemp("gcs") / "server.log")) as server:
    yield server


def _run(gcs, scratch, module, args, timeout=600):
  env = subprocess_env(gcs.env())
  env.pop("EPATH_USE_TF", None)   # the production default (ran_jax.storage) is under test
  env.update(HOME=str(scratch), TMPDIR=str(scratch / "tmp"))
  os.makedirs(scratch / "tmp", exist_ok=True)
  r = subprocess.run([sys.executable, "-m", module, *args], cwd=scratch, env=env,
                     capture_output=True, text=True, timeout=timeout)
  assert r.returncode == 0, r.stderr[-4000:]
  return r


def _records(gcs):
  return [json.loads(line) for line in gcs.read("run/metrics.jsonl").decode().splitlines()]


def test_train_resume_deploy_on_cloud_storage(gcs, tmp_path):
  scratch = tmp_path / "scratch"
  scratch.mkdir()
  r = _run(gcs, scratch, "ran_jax.train", [*ARGS, "--config.export_deployment=True",
                                           "--config.profile_steps=2-3"])
  assert "Could not determine bucket type" not in r.stderr   # gcsfs's JSON API only
  names = gcs.objects(prefix="run/")
  # the profile, taken in a local temporary directory (removed: TMPDIR is checked empty
  # below), lands in the bucket where TensorBoard's profile plugin looks
  assert any(n.startswith("run/profile/plugins/profile/steps_2-3/") and
             n.endswith(".xplane.pb") for n in names), sorted(names)
  for want in ("run/config.json", "run/final_metrics.json", "run/metrics.jsonl",
               "run/export/model.json", "run/deploy/deploy.json", "run/deploy/encoder.tflite",
               "run/deploy/classifier.jaxexport", "run/checkpoints/6/commit_success.txt"):
    assert want in names, (want, sorted(names))
  assert any(n.startswith("run/tensorboard/events.out.tfevents") for n in names)
  assert json.loads(gcs.read("run/final_metrics.json"))["step"] == 6
  first = _records(gcs)
  assert [r["step"] for r in first if r["kind"] == "test"] == [3, 6]

  # A rerun with more epochs resumes from the bucket's checkpoint and continues the metrics.
  r = _run(gcs, scratch, "ran_jax.train", [*ARGS, "--config.num_epochs=3", "--config.max_steps=9"])
  assert f"Resumed from {RUN}/checkpoints at step 6" in r.stderr
  assert json.loads(gcs.read("run/final_metrics.json"))["step"] == 9
  both = _records(gcs)
  assert both[:len(first)] == first   # the first run's records kept: not overwritten
  assert [r["step"] for r in both if r["kind"] == "test"] == [3, 6, 9]
  assert "run/checkpoints/9/commit_success.txt" in gcs.objects(prefix="run/")

  # The deployment read back from the bucket: the phone's encoder and the server's classifier.
  x, feats = scratch / "x.npy", scratch / "features.npz"
  _run(gcs, scratch, "ran_jax.deploy", ["export", f"--workdir={RUN}"])
  _run(gcs, scratch, "ran_jax.deploy", ["sample", f"--workdir={RUN}", f"--out={x}", "--n=8"])
  _run(gcs, scratch, "ran_jax.deploy", ["encode", f"--workdir={RUN}", f"--inputs={x}",
                                        f"--out={feats}"])
  r = _run(gcs, scratch, "ran_jax.deploy", ["classify", f"--workdir={RUN}",
                                            f"--features={feats}",
                                            f"--labels={scratch / 'x_labels.npy'}"])
  assert "accuracy" in (r.stdout + r.stderr).lower()
  manifest = json.loads(gcs.read("run/deploy/deploy.json"))
  assert manifest["step"] == 9   # the export of the resumed run, written to the bucket
  # Nothing of the run was written locally: only what the user asked for (the sample and its
  # features) and the per-user caches and settings under HOME (dot folders: TensorFlow's,
  # the release secret of ran_jax.deploy.client) are there.
  left = sorted(p.name for p in scratch.iterdir() if p.name != "tmp" and p.name[0] != ".")
  assert left == ["features.npz", "x.npy", "x_labels.npy"], left
  assert os.listdir(scratch / "tmp") == []
  run_files = {"metrics.jsonl", "model.json", "deploy.json", "commit_success.txt",
               "final_metrics.json", "encoder.tflite", "_CHECKPOINT_METADATA"}
  local = [os.path.join(d, f) for d, _, fs in os.walk(scratch) for f in fs if f in run_files]
  assert local == [], local


def _assert_nothing_local(scratch):
  """Only the per-user dot folders under HOME (caches, settings) in the scratch directory,
  and nothing in its TMPDIR: the command wrote everything to the bucket."""
  left = sorted(p.name for p in scratch.iterdir() if p.name != "tmp" and p.name[0] != ".")
  assert left == [], left
  assert os.listdir(scratch / "tmp") == []


def _scratch(tmp_path):
  scratch = tmp_path / "scratch"
  scratch.mkdir()
  return scratch


def _ensure_run(gcs, scratch):
  """gs://bkt/run trained (by the training test above, or here when run alone)."""
  if "run/export/model.json" not in gcs.objects(prefix="run/export/"):
    _run(gcs, scratch, "ran_jax.train", ARGS)


def test_attack_on_cloud_storage(gcs, tmp_path):
  """ran-attack on the bucket's run: the report into gs://bkt/run/eval."""
  scratch = _scratch(tmp_path)
  _ensure_run(gcs, scratch)
  r = _run(gcs, scratch, "ran_jax.attack", [
      f"--workdir={RUN}", "--attackers=ridge", "--attack_max_epochs=1",
      "--attack_train_limit=48", "--test_limit=32", "--noprogress"])
  assert f"wrote {RUN}/eval/result.json" in r.stdout
  names = gcs.objects(prefix="run/eval/")
  assert set(names) == {"run/eval/result.json", "run/eval/artifacts.npz"}, sorted(names)
  result = json.loads(gcs.read("run/eval/result.json"))
  assert set(result["attackers"]) >= {"ridge", "own_decoder"}
  assert result["worst"]["attacker"] in result["attackers"]
  art = np.load(io.BytesIO(gcs.read("run/eval/artifacts.npz")))
  assert len(art.files) > 0
  _assert_nothing_local(scratch)


def test_erase_on_cloud_storage(gcs, tmp_path):
  """ran-erase on a bucket's run with an attribute (a tiny .npz, read locally): the eraser
  and its report into gs://.../export, read back by the next command that loads the run."""
  from tests.test_erasure import who_arrays

  arrays = who_arrays()
  data = tmp_path / "who.npz"
  np.savez(data, **arrays)
  scratch = _scratch(tmp_path)
  wd = "gs://bkt/erase"
  _run(gcs, scratch, "ran_jax.train", [
      "--config=digits_lenet:smoke", f"--workdir={wd}", f"--config.data.name={data}",
      "--config.data.attribute=who", "--config.data.train_limit=0",
      "--config.data.test_limit=0", "--config.model.bottleneck_dim=16",
      "--config.model.feature_noise=0.1"])
  r = _run(gcs, scratch, "ran_jax.erase", [f"--workdir={wd}", "--classifier_epochs=1"])
  assert "erased who (within class)" in r.stdout
  names = gcs.objects(prefix="erase/")
  assert {"erase/export/eraser.npz", "erase/export/eraser.json"} <= set(names), sorted(names)
  assert not any(n.startswith("erase/deploy/") for n in names)   # none: none exported again
  report = json.loads(gcs.read("erase/export/eraser.json"))
  assert report["attribute"] == "who" and report["deployed"] is None
  assert report["split"]["eraser_examples"] == 48
  with np.load(io.BytesIO(gcs.read("erase/export/eraser.npz"))) as f:
    assert int(f["rank"]) == report["rank"]
  _assert_nothing_local(scratch)


def test_sweep_on_cloud_storage(gcs, tmp_path):
  """ran-sweep into gs://bkt/sweep: a RAN point and a Noisy one, results.csv, the figures."""
  scratch = _scratch(tmp_path)
  wd = "gs://bkt/sweep"
  r = _run(gcs, scratch, "ran_jax.sweep", [
      "--config=digits_lenet:smoke", f"--workdir={wd}", "--lams=0.5", "--noise_factors=0.4",
      "--methods=ran,noisy", "--attackers=ridge", "--attack_max_epochs=1",
      "--attack_train_limit=48", "--test_limit=32", "--noprogress"])
  assert f"wrote {wd}/results.csv" in r.stdout
  names = gcs.objects(prefix="sweep/")
  for want in ("sweep/sweep.json", "sweep/results.csv", "sweep/pareto.png",
               "sweep/reconstructions.png", "sweep/features3d.png",
               "sweep/runs/ran_lam0.5/export/model.json",
               "sweep/points/ran_lam0.5/result.json", "sweep/points/ran_lam0.5/artifacts.npz",
               "sweep/points/noisy_f0.4/result.json"):
    assert want in names, (want, sorted(names))
  rows = list(csv.DictReader(io.StringIO(gcs.read("sweep/results.csv").decode())))
  assert [(r["method"], r["setting"]) for r in rows] == [("ran", "lam=0.5"),
                                                         ("noisy", "factor=0.4")]
  assert json.loads(gcs.read("sweep/sweep.json"))["lams"] == [0.5]
  _assert_nothing_local(scratch)


def test_search_on_cloud_storage(gcs, tmp_path):
  """ran-search into gs://bkt/search: the state, the report and its figure, and
  chosen/export a copy of the chosen run's export (no symbolic links on Cloud Storage)."""
  scratch = _scratch(tmp_path)
  wd = "gs://bkt/search"
  r = _run(gcs, scratch, "ran_jax.search", [
      "--config=digits_lenet:smoke", f"--workdir={wd}", "--max_trainings=1",
      "--max_accuracy_drop=1", "--fast_attackers=ridge", "--fast_max_epochs=1",
      "--attackers=ridge", "--attack_max_epochs=1", "--test_limit=32", "--noprogress"])
  assert "chosen model.feature_noise=1" in r.stdout
  names = gcs.objects(prefix="search/")
  for want in ("search/search_state.json", "search/report.md", "search/front.png",
               "search/chosen/config.json", "search/chosen/export/model.json",
               "search/runs/reference/export/model.json",
               "search/points/reference/result.json", "search/confirm/reference/result.json"):
    assert want in names, (want, sorted(names))
  state = json.loads(gcs.read("search/search_state.json"))
  assert state["status"] == "done" and len(state["candidates"]) == 1
  run = state["chosen"]["run"]
  exported = {n[len(f"search/{run}/export/"):]: size for n, size in names.items()
              if n.startswith(f"search/{run}/export/")}
  copied = {n[len("search/chosen/export/"):]: size for n, size in names.items()
            if n.startswith("search/chosen/export/")}
  assert copied == exported and "model.json" in copied
  assert json.loads(gcs.read("search/chosen/config.json"))["model"]["feature_noise"] == 1.0
  assert "## Chosen: `model.feature_noise=1`" in gcs.read("search/report.md").decode()
  _assert_nothing_local(scratch)


SHARED_MNIST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                            "shared", "data", "mnist")


@pytest.mark.skipif(not os.path.isdir(SHARED_MNIST),
                    reason=f"real MNIST IDX files not found at {SHARED_MNIST}")
def test_prepared_tfds_data_is_read_from_cloud_storage(gcs, tmp_path):
  """`--config.data.data_dir=gs://bkt/tfds`: MNIST prepared into the bucket as the launch's
  preparation step does (`python -m ran_jax.launch prepare`; here 50 examples a split), and
  read back by the training's loader through array_record's own Cloud Storage client: the
  same arrays as from a local copy, nothing left in the scratch directory."""
  code = f"""
import json, os, sys
import numpy as np
from ran_jax import configs, input_pipeline
from ran_jax import launch
local = {str(tmp_path / "tfds")!r}
for where in (local, "gs://bkt/tfds"):   # what the launch's preparation step runs
  launch.prepare("mnist_lenet", where, {SHARED_MNIST!r}, max_examples_per_split=50)
out = {{}}
for where in (local, "gs://bkt/tfds"):
  c = configs.get_config("mnist_lenet").data
  c.data_dir = where
  src = input_pipeline.load_dataset(c)
  x = src.train.get(np.arange(len(src.train)))
  out[where] = [len(src.train), len(src.test), float(x["image"].sum()), x["label"].tolist()]
print(json.dumps(out))
"""
  scratch = tmp_path / "scratch"
  scratch.mkdir()
  env = subprocess_env(gcs.env())
  env.pop("EPATH_USE_TF", None)
  env.update(HOME=str(scratch))
  r = subprocess.run([sys.executable, "-c", code], cwd=scratch, env=env, capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-4000:]
  got = json.loads(r.stdout.strip().splitlines()[-1])
  local, remote = got[str(tmp_path / "tfds")], got["gs://bkt/tfds"]
  assert remote == local and remote[:2] == [50, 50]
  assert any(n.endswith(".array_record-00000-of-00001") for n in gcs.objects(prefix="tfds/"))
  assert [p.name for p in scratch.iterdir() if not p.name.startswith(".")] == []
