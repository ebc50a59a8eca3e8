"""The library as installed: pyproject.toml, console commands, packaged configs, the notebook.

Nothing is pip-installed here: the commands run as `python -m` from a directory outside
the repository with the checkout on PYTHONPATH, which is the code path of the console
scripts (each maps to the function its module's `__main__` calls; checked below).
The quickstart notebook runs headless in a Jupyter kernel when nbclient is installed
(requirements-dev.txt).
"""

import ast
import importlib
import json
import os
import re
import subprocess
import sys
import tomllib

import numpy as np
import pytest
from absl import flags
from packaging.requirements import Requirement

import ran_jax
from ran_jax import configs
from tests.helpers import ROOT

PYPROJECT = os.path.join(ROOT, "pyproject.toml")
NOTEBOOK = os.path.join(ROOT, "examples", "quickstart.ipynb")


@pytest.fixture(scope="module")
def project():
  with open(PYPROJECT, "rb") as f:
    return tomllib.load(f)["project"]


def _outside_env():
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  return env


def _requirement_lines(name):
  """Requirement strings of a requirements file: comments (whole-line or inline) dropped."""
  with open(os.path.join(ROOT, name)) as f:
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in f]
  return [s for s in lines if s and not s.startswith(("#", "-r"))]


# ---------------------------------------------------------------- pyproject.toml


def test_metadata_has_one_source(project):
  tool = tomllib.load(open(PYPROJECT, "rb"))["tool"]["setuptools"]
  assert project["name"] == "ran-jax" and project["requires-python"] == ">=3.11"
  assert set(project["dynamic"]) == {"version", "dependencies"}
  assert tool["dynamic"]["version"] == {"attr": "ran_jax.__version__"}
  assert tool["dynamic"]["dependencies"] == {"file": ["requirements.txt"]}
  # Every requirements.txt line is a PEP 508 requirement once its comment is dropped (what
  # setuptools does with the file); the [dev] extra equals requirements-dev.txt's own pins.
  runtime = [Requirement(s) for s in _requirement_lines("requirements.txt")]
  assert {"jax", "flax", "tensorflow-cpu", "ai-edge-litert"} <= {r.name for r in runtime}
  extras = project["optional-dependencies"]
  assert extras["dev"] == _requirement_lines("requirements-dev.txt")
  assert [Requirement(s).name for s in extras["bench"]] == ["torch"]
  assert re.fullmatch(r"\d+\.\d+\.\d+", ran_jax.__version__)


def _main_block_calls(path):
  """Names called at the top level of `if __name__ == "__main__":` (or of the whole module)."""
  tree = ast.parse(open(path).read())
  body = tree.body
  for node in tree.body:
    if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
      body = node.body
  return [n.value.func.id for n in body
          if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)
          and isinstance(n.value.func, ast.Name)]


def test_console_scripts_are_the_python_m_commands(project):
  scripts = project["scripts"]
  assert set(scripts) == {"ran-train", "ran-attack", "ran-erase", "ran-sweep", "ran-search",
                          "ran-deploy", "ran-plan"}
  for script, target in scripts.items():
    module, fn = target.split(":")
    # `python -m ran_jax.<command>` runs the same function: the module's own __main__ block,
    # or a package's __main__.py that imports it from the target module.
    base = os.path.join(ROOT, "ran_jax", script[len("ran-"):])
    if os.path.isdir(base):
      path = os.path.join(base, "__main__.py")
      assert f"from {module} import {fn}\n" in open(path).read(), path
    else:
      path = base + ".py"
      assert module == "ran_jax." + script[len("ran-"):], (script, module)
    assert _main_block_calls(path) == [fn], (script, path)
  # Every target imports and is callable (a subprocess: command modules define absl flags).
  code = ("import importlib, json, sys; t = json.loads(sys.argv[1]); print(json.dumps({k: "
          "callable(getattr(importlib.import_module(v.split(':')[0]), v.split(':')[1])) "
          "for k, v in t.items()}))")
  r = subprocess.run([sys.executable, "-c", code, json.dumps(scripts)], env=_outside_env(),
                     capture_output=True, text=True, timeout=300, cwd="/")
  assert r.returncode == 0, r.stderr[-2000:]
  assert json.loads(r.stdout.strip().splitlines()[-1]) == {k: True for k in scripts}


@pytest.mark.parametrize("module, expected", [
    ("ran_jax.train", ["--config", "--workdir", "digits_lenet", "mnist_lenet_private",
                       "--config.<section>.<field>"]),
    ("ran_jax.deploy", ["--workdir", "--release_policy", "--release_secret", "--int8"]),
])
def test_help_names_the_flags(module, expected, tmp_path):
  r = subprocess.run([sys.executable, "-m", module, "--help"], env=_outside_env(),
                     capture_output=True, text=True, timeout=120, cwd=tmp_path)
  assert r.returncode == 0, r.stderr[-2000:]
  missing = [e for e in expected if e not in r.stdout]
  assert not missing, (missing, r.stdout[-3000:])


# ---------------------------------------------------------------- packaged configs


def test_packaged_configs_resolve_by_name(tmp_path, monkeypatch):
  names = configs.names()
  root = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs"))
                if f.endswith(".py") and f not in ("__init__.py", "common.py"))
  assert names == root and "digits_lenet" in names  # an alias for every packaged config
  for name in names:
    alias = importlib.import_module(f"configs.{name}")
    assert alias.get_config is importlib.import_module(f"ran_jax.configs.{name}").get_config
  assert importlib.import_module("configs.common").finish is configs.common.finish

  monkeypatch.chdir(tmp_path)   # no configs/ here: names resolve to the packaged files
  packaged = os.path.join(configs.PACKAGE_DIR, "digits_lenet.py")
  for spec in ("digits_lenet", "digits_lenet.py", "configs/digits_lenet.py"):
    assert configs.resolve(spec + ":smoke") == packaged + ":smoke"
  assert configs.get_config("digits_lenet:smoke").to_dict() == \
      configs.get_config("configs/digits_lenet.py:smoke").to_dict()
  assert configs.get_config("digits_lenet").num_epochs == 30
  with pytest.raises(ValueError, match="no packaged config of that name; packaged configs: .*"
                     "digits_lenet"):
    configs.resolve("digits_lenett")
  # A file that exists always wins, with its ':arg'.
  mine = tmp_path / "digits_lenet.py"
  mine.write_text("from ran_jax.configs import digits_lenet\n\n"
                  "def get_config(arg=None):\n"
                  "  c = digits_lenet.get_config(arg)\n  c.num_epochs = 3\n  return c\n")
  assert configs.resolve("digits_lenet.py:smoke") == "digits_lenet.py:smoke"
  assert configs.get_config(str(mine)).num_epochs == 3


def test_config_flag_takes_names_and_overrides(monkeypatch):
  fv = flags.FlagValues()
  configs.define_config_flag("config", flag_values=fv)
  argv = ["prog", "--config=digits_lenet:smoke", "--config.ran.lam=0.3"]
  monkeypatch.setattr(sys, "argv", argv)   # ml_collections reads the overrides from sys.argv
  fv(argv)
  assert fv.config.ran.lam == 0.3 and fv.config.max_steps == 6
  fv2 = flags.FlagValues()
  configs.define_config_flag("config", flag_values=fv2)
  monkeypatch.setattr(sys, "argv", ["prog", "--config=nope"])
  with pytest.raises(flags.IllegalFlagValueError, match="no config file 'nope'"):
    fv2(["prog", "--config=nope"])


# ---------------------------------------------------------------- the quickstart notebook


def test_notebook_is_committed_without_outputs():
  nb = json.load(open(NOTEBOOK))
  code = [c for c in nb["cells"] if c["cell_type"] == "code"]
  assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  """The notebook, headless: trains, attacks, exports and runs the encoder in LiteRT."""
  # Pinned in requirements(-dev).txt: a missing or broken install fails, never skips.
  import ai_edge_litert.interpreter  # noqa: F401
  import ipykernel  # noqa: F401
  import nbclient
  import nbformat

  wd = tmp_path / "wd"
  for k, v in _outside_env().items():
    monkeypatch.setenv(k, v)
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.setenv("RAN_QUICKSTART_WORKDIR", str(wd))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()

  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  assert any("image/png" in o.get("data", {}) for o in outputs)   # the reconstructions
  text = nb.cells[-2].outputs[-1]["text"]                        # the summary cell's JSON
  s = json.loads(text[text.index("{"):])
  assert s["ran_jax_version"] == ran_jax.__version__
  assert json.load(open(wd / "config.json"))["ran_jax_version"] == ran_jax.__version__
  assert s["accuracy_jax"] > 0.8
  assert s["max_abs_diff_tflite_vs_jax"] < 1e-4
  assert abs(s["accuracy_litert_plus_exported_classifier"] - s["accuracy_jax"]) <= 1 / 360
  # The default encoder (no release noise) leaks: an attacker beats the label-only level.
  assert np.isfinite(s["worst_mse_sum"]) and s["worst_mse_sum"] < s["label_only_mse_sum"]
