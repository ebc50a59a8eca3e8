"""The workdir on Cloud Storage: train, checkpoint, resume, export and deploy with
`--workdir=gs://bkt/run`, against a local fake-gcs-server (tests/gcs_server.py) that this
module starts and stops. Each command runs as a user would (a subprocess) from an empty
scratch directory, which must stay empty: everything goes to the bucket.
"""

import json
import os
import subprocess
import sys

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
  r = _run(gcs, scratch, "ran_jax.train", [*ARGS, "--config.export_deployment=True"])
  assert "Could not determine bucket type" not in r.stderr   # gcsfs's JSON API only
  names = gcs.objects(prefix="run/")
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
