"""`ran-plan --launch`: the gcloud commands that run a config on a Cloud TPU slice.

Each printed command is parsed as the shell would (shlex), and each command sent to the
workers (`--command=...`) again, so a quoting slip fails here, not on a rented slice.
"""

import shlex
import subprocess
import sys

import pytest

from ran_jax import launch
from tests.helpers import ROOT, subprocess_env


def _job(**kw):
  base = dict(config="imagenet_vgg", topology="v5e-16", bucket="gs://bkt/ran", project="proj-1",
              zone="us-west4-a", name="ran-vgg")
  return launch.Launch(**{**base, **kw})


def _steps(job, dataset="imagenet2012"):
  out = []
  for title, command in launch.commands(job, dataset):
    argv = shlex.split(command)
    remote = [a.split("=", 1)[1] for a in argv if a.startswith("--command=")]
    worker = [a.split("=", 1)[1] for a in argv if a.startswith("--worker=")]
    out.append((title, argv, shlex.split(remote[0]) if remote else None,
                worker[0] if worker else None))
  return out


def _flag(argv, name):
  return next(a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}="))


def test_a_multi_host_v5e_slice_from_the_bucket():
  steps = _steps(_job())
  titles = [t for t, *_ in steps]
  create = steps[1][1]
  assert create[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"] and create[5] == "ran-vgg"
  assert _flag(create, "accelerator-type") == "v5litepod-16"
  assert _flag(create, "version") == "v2-alpha-tpuv5-lite" and "--spot" in create
  assert (_flag(create, "project"), _flag(create, "zone")) == ("proj-1", "us-west4-a")
  assert "16 chips on 4 hosts" in titles[1]
  # the wheel and the pins go to the bucket; every worker installs them from there
  assert steps[0][1][-1] == "gs://bkt/ran/dist/"
  install = steps[2]
  assert install[3] == "all"
  assert "gs://bkt/ran/dist/ran_jax-" + ran_version() + "-py3-none-any.whl" in install[2]
  assert "jax[tpu]==0.10.2" in install[2] and "requirements.txt" in install[2]
  prepare = steps[3]
  assert prepare[3] == "0"              # once, on one worker
  assert prepare[2][1:4] == ["-m", "ran_jax.launch", "prepare"]
  assert prepare[2][4:] == ["imagenet_vgg", "gs://bkt/ran/tfds", "imagenet_tars"]
  start = steps[4]
  assert start[3] == "all"             # one command, the same on every host
  assert start[2][:2] == ["nohup", "~/ran/bin/ran-train"]
  assert "--config=imagenet_vgg" in start[2]
  assert "--workdir=gs://bkt/ran/runs/imagenet_vgg" in start[2]
  assert "--config.data.data_dir=gs://bkt/ran/tfds" in start[2]
  # after a preemption: the slice deleted, then the same create, install and start steps
  assert steps[-1][1][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "delete"]
  assert "gs://bkt/ran/runs/imagenet_vgg" in titles[-1] and "same start command" in titles[-1]


def ran_version():
  import ran_jax

  return ran_jax.__version__


def test_v4_counts_tensorcores_and_a_queued_resource_waits_for_capacity():
  steps = _steps(_job(topology="v4-16", queued=True, spot=False, config="cifar10_alexnet",
                      run="alex1"), "cifar10")
  create = steps[1][1]
  assert create[3:6] == ["queued-resources", "create", "ran-vgg-queue"]
  assert _flag(create, "node-id") == "ran-vgg"
  assert _flag(create, "accelerator-type") == "v4-16"       # 8 chips, 16 TensorCores
  assert _flag(create, "runtime-version") == "tpu-ubuntu2204-base" and "--spot" not in create
  assert steps[2][1][3:5] == ["queued-resources", "describe"]
  assert steps[4][2][4:] == ["cifar10_alexnet", "gs://bkt/ran/tfds"]   # downloads itself
  assert "--workdir=gs://bkt/ran/runs/alex1" in steps[5][2]
  assert steps[-1][1][3:5] == ["queued-resources", "delete"]


@pytest.mark.parametrize("change,match", [
    ({"bucket": "/mnt/shared/runs"}, "--bucket must be a Cloud Storage path"),
    ({"bucket": ""}, "--bucket must be"),
    ({"project": ""}, "--project is required"),
    ({"zone": "US West"}, "--zone is required"),
    ({"name": "Ran_VGG"}, "--tpu_name"),
])
def test_bad_values_are_named(change, match):
  with pytest.raises(launch.LaunchError, match=match):
    launch.commands(_job(**change), "imagenet2012")


def test_the_config_and_its_overrides_as_given():
  got = launch.config_argument(["--config=imagenet_vgg:smoke", "--topology=v5e-8",
                                "--config.ran.lam=0.3", "--config.batch_size", "512"])
  assert shlex.split(got) == ["imagenet_vgg:smoke", "--config.ran.lam=0.3",
                              "--config.batch_size=512"]
  assert launch.config_argument(["--config", "configs/cifar10_alexnet.py"]) == "cifar10_alexnet"
  with pytest.raises(launch.LaunchError, match="needs a packaged config"):
    launch.config_argument(["--config=/home/me/my_config.py"])
  with pytest.raises(launch.LaunchError, match="needs --config"):
    launch.config_argument(["--topology=v5e-8"])


def _plan(*args):
  return subprocess.run([sys.executable, "-m", "ran_jax.plan", *args], capture_output=True,
                        text=True, cwd="/tmp", env=subprocess_env({"PYTHONPATH": ROOT}),
                        timeout=300)


def test_the_command_prints_the_steps_and_compiles_nothing():
  r = _plan("--config=imagenet_vgg", "--config.ran.lam=0.3", "--topology=v6e-16", "--launch",
            "--bucket=gs://bkt", "--project=proj-1", "--zone=us-east5-b")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "compiling" not in r.stderr
  lines = [line for line in r.stdout.splitlines() if line.startswith("gcloud")]
  assert any("--accelerator-type=v6e-16 --version=v2-alpha-tpuv6e --spot" in line
             for line in lines)
  start = [shlex.split(line) for line in lines if "ran-train" in line][0]
  remote = shlex.split(_flag(start, "command"))
  assert remote[2:4] == ["--config=imagenet_vgg", "--config.ran.lam=0.3"]
  r = _plan("--config=imagenet_vgg", "--topology=v6e-16,v5e-8", "--launch", "--bucket=gs://bkt",
            "--project=p1", "--zone=z1-a")
  assert r.returncode == 2 and "error: --launch takes one --topology" in r.stderr
  r = _plan("--config=imagenet_vgg", "--topology=v6e-16", "--launch", "--project=p1",
            "--zone=z1-a")
  assert r.returncode == 2 and "error: --bucket must be a Cloud Storage path" in r.stderr


def test_prepare_reads_the_configs_data_into_the_data_dir(tmp_path, capsys):
  launch.prepare("digits_lenet", str(tmp_path / "tfds"))
  assert capsys.readouterr().out.startswith("digits prepared in ")


def test_the_guide_shows_what_the_command_prints():
  """docs/cloud_tpu.md's listing: its step titles and its full commands are the output's."""
  import os

  with open(os.path.join(ROOT, "docs", "cloud_tpu.md")) as f:
    doc = f.read()
  block = doc.split("```text\n# 1. package")[1].split("```")[0]
  block = "# 1. package" + block
  out = launch.script(launch.Launch("imagenet_vgg", "v5e-16", "gs://my-ran-bucket", "my-project",
                                    "us-west4-a"), "imagenet2012")
  for line in block.splitlines():
    if line.startswith("# "):
      assert any(o.startswith(line) for o in out.splitlines()), line
    elif "..." not in line:
      assert line in out.splitlines(), line
