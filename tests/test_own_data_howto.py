"""Own data as a new user meets it: the how-to page's commands run as written, a missing path is
named as missing, one file under two spellings is one dataset on resume, and a command
without --config lists the packaged configs."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from ran_jax import checkpointing, configs
from ran_jax.config_lib import ConfigError, validate_config
from ran_jax.data import own
from ran_jax.program import InputSpec
from tests.helpers import ROOT, subprocess_env

PAGE = os.path.join(ROOT, "docs", "howto", "own_data.md")


def _page_commands():
  with open(PAGE) as f:
    blocks = re.findall(r"^```bash\n(.*?)^```", f.read(), re.M | re.S)
  return [line for b in blocks for line in b.splitlines() if line and not line.startswith("#")]


def test_page_is_in_the_navigation_and_on_the_home_page():
  import yaml

  with open(os.path.join(ROOT, "mkdocs.yml")) as f:
    nav = yaml.safe_load(f)["nav"]
  howto = next(item["How-to guides"] for item in nav if "How-to guides" in item)
  assert {"Train on your own data": "howto/own_data.md"} in howto
  with open(os.path.join(ROOT, "docs", "index.md")) as f:
    start_here = f.read().split("## Start here", 1)[1].split("\n## ", 1)[0]
  assert "(howto/own_data.md)" in start_here
  train = [c for c in _page_commands() if c.startswith("ran-train")]
  assert [re.search(r"--config.data.name=(\S+)", c).group(1) for c in train] == [
      "my_data.npz", "my_images"]


@pytest.mark.parametrize("name, what", [("tiny.npz", "file"), ("./imgs", "folder"),
                                        ("data/my_imgs/", "folder")])
def test_a_missing_path_is_named_as_missing(tmp_path, monkeypatch, name, what):
  monkeypatch.chdir(tmp_path)
  c = configs.get_config("digits_lenet:smoke")
  c.data.name = name
  with pytest.raises(ConfigError) as e:
    validate_config(c)
  path = os.path.abspath(name)
  assert f"data.name={name!r}: no such {what}: {path}" in str(e.value)
  assert "unknown dataset" not in str(e.value)
  c.data.name = "mnistt"   # a name, not a path: still the list of datasets
  with pytest.raises(ConfigError, match="unknown dataset; allowed"):
    validate_config(c)


def test_one_file_under_two_spellings_is_one_data_config(tmp_path, monkeypatch):
  """The resume check compares the fingerprints' digests: tiny.npz, ./tiny.npz and the
  absolute path give one digest; another file gives another."""
  monkeypatch.chdir(tmp_path)
  (tmp_path / "sub").mkdir()
  rng = np.random.default_rng(0)
  for f in ("tiny.npz", "other.npz"):
    np.savez(f, x=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8), y=np.arange(20) % 2)
  spec = InputSpec(input_shape=(8, 8, 1), num_classes=2, value_range=(0.0, 1.0))

  def digest(name):
    c = configs.get_config("digits_lenet:smoke")
    c.data.name = name
    return checkpointing.model_fingerprint(c, spec)["digest"]

  same = {digest(n) for n in ("tiny.npz", "./tiny.npz", str(tmp_path / "tiny.npz"),
                              "sub/../tiny.npz")}
  assert len(same) == 1 and digest("other.npz") not in same
  assert own.data_identity("tiny.npz") == os.path.realpath(tmp_path / "tiny.npz")
  assert own.data_identity("digits") == "digits"     # a dataset name is kept as given


def test_train_without_config_lists_the_packaged_configs(tmp_path):
  r = subprocess.run([sys.executable, "-m", "ran_jax.train", "--workdir=x"], cwd=tmp_path,
                     env=subprocess_env({"PYTHONPATH": ROOT}), capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == 2
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: --config is required: a packaged config, one of ")
  assert all(name in last for name in configs.names())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_page_commands_run_as_written(tmp_path):
  """The page's commands in order (each data maker, then its ran-train on the smoke config),
  then a resume spelled ./my_data.npz."""
  env = subprocess_env({"PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"})
  bin_dir = os.path.dirname(sys.executable)
  env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
  commands = [c for c in _page_commands() if c.startswith(("python -c", "ran-train"))]
  commands = [c.replace("--config=digits_lenet ", "--config=digits_lenet:smoke ") for c in commands]
  makers = [c for c in commands if c.startswith("python")]
  trains = [c for c in commands if c.startswith("ran-train")]
  assert len(makers) == 2 and len(trains) == 2
  for c in makers + trains + [trains[0].replace("=my_data.npz", "=./my_data.npz")]:
    c = c.replace("python -c", f"{sys.executable} -c", 1)
    if c.startswith("ran-train"):
      c = c.replace("ran-train", f"{sys.executable} -m ran_jax.train", 1)
    r = subprocess.run(["bash", "-c", c], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, (c, r.stderr[-4000:])
  assert len(os.listdir(tmp_path / "my_images")) == 10
  for run in ("my_npz", "my_images"):
    assert (tmp_path / "runs" / run / "final_metrics.json").exists()
  assert "Resumed from" in r.stderr and "Nothing to train" in r.stderr   # the same data


def test_any_other_format_snippet_writes_a_loadable_npz(tmp_path, monkeypatch):
  """The page's CSV example, run as written on a CSV of that layout, gives the data it says."""
  from ran_jax import input_pipeline

  with open(PAGE) as f:
    section = f.read().split("## Any other format", 1)[1].split("\n## ", 1)[0]
  snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  rng = np.random.default_rng(0)
  labels, pixels = np.arange(30) % 3, rng.integers(0, 256, (30, 784))
  monkeypatch.chdir(tmp_path)
  np.savetxt("my_data.csv", np.column_stack([labels, pixels]), fmt="%d", delimiter=",",
             header="label," + ",".join(f"p{i}" for i in range(784)), comments="")
  exec(compile(snippet, "own_data.md", "exec"), {})
  c = configs.get_config("digits_lenet:smoke").data
  c.name = "my_data.npz"
  src = input_pipeline.load_dataset(c)
  assert src.input_shape == (28, 28, 1) and src.num_classes == 3
  assert len(src.train) + len(src.test) == 30
  first = src.train.get(np.arange(1))
  row = 0   # the pool's first example is training data (every 5th of a class is test)
  np.testing.assert_allclose(first["image"][0, ..., 0], pixels[row].reshape(28, 28) / 255,
                             atol=1e-6)
  assert int(first["label"][0]) == labels[row]
