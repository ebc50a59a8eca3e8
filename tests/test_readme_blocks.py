"""The README as a new user follows it: command 1 installs the package, and the blocks after
it (the Quickstart's commands, the Python API) run as written from a directory outside the
repository against the installed package; every command answers `--version`.

The end-to-end test needs the package installed into the running Python's environment (README
command 1 or 2, as .ci/run does: `pip install -r requirements-dev.txt -e .`): its console
scripts beside `sys.executable`, and `import ran_jax` from outside the checkout. It runs the
blocks on the seconds-long smoke config (`digits_lenet:smoke`, with the deployment export the
full config has), the only change to what the README shows.
"""

import os
import re
import subprocess
import sys
import tomllib

import pytest

import ran_jax
from tests.helpers import ROOT, subprocess_env

BIN = os.path.dirname(sys.executable)


def _readme():
  with open(os.path.join(ROOT, "README.md")) as f:
    return f.read()


def readme_block(heading: str, lang: str) -> str:
  """The first ```lang fenced block under the README's `## heading`."""
  text = _readme()
  m = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
  assert m, f"README has no section '## {heading}'"
  block = re.search(rf"^```{lang}\n(.*?)^```", m.group(1), re.M | re.S)
  assert block, f"README section '{heading}' has no ```{lang} block"
  return block.group(1)


def _scripts():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)["project"]["scripts"]


def _smoke(text: str) -> str:
  """The README's block on the smoke config (the only substitution the tests make)."""
  out = text.replace("--config=digits_lenet ",
                     "--config=digits_lenet:smoke --config.export_deployment=True ")
  out = out.replace('get_config("digits_lenet")', 'get_config("digits_lenet:smoke")')
  assert out != text, "the README's blocks no longer name digits_lenet"
  return out


def test_command_1_installs_what_the_blocks_after_it_use():
  first = readme_block("Two commands on a fresh machine", "bash")
  command_1 = next(line for line in first.splitlines() if line and not line.startswith("#"))
  steps = [s.strip() for s in command_1.split("&&")]
  assert "pip install -r requirements.txt ." in steps      # the pins, then the package itself
  assert steps[-1] == "ran-train --config=digits_lenet --workdir=runs/digits"
  # The shell that ran command 1 has the installed commands on PATH (the venv is active).
  assert steps.index("source .venv/bin/activate") < steps.index("pip install -r requirements.txt .")
  used = set(re.findall(r"^(ran-[a-z]+) ", readme_block("Quickstart", "bash"), re.M))
  assert used and used <= set(_scripts()), used


def test_requirements_comment_names_a_readme_section():
  with open(os.path.join(ROOT, "requirements.txt")) as f:
    comments = [line for line in f if line.startswith("#")]
  named = re.findall(r'README(?: section)? "([^"]+)"', "".join(comments))
  sections = re.findall(r"^## (.+)$", _readme(), re.M)
  assert named and [n for n in named if n not in sections] == [], (named, sections)


def test_every_command_prints_its_version(tmp_path):
  procs = {}
  for script in _scripts():
    procs[script] = subprocess.Popen(
        _python_m(script) + ["--version"], cwd=tmp_path, text=True,
        env=subprocess_env({"PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  for script, p in procs.items():
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, (script, err[-2000:])
    assert out.strip().splitlines()[-1] == f"{script} (ran_jax) {ran_jax.__version__}", out


def _python_m(script: str) -> list:
  module = _scripts()[script].split(":")[0]
  return [sys.executable, "-m", module.rsplit(".", 1)[0] if module.endswith(".cli") else module]


def test_help_fits_an_installed_package(tmp_path):
  """Every command's --help: plain text (no markdown marks), and commands and documentation
  pages by name, never files of the repository a pip install does not have."""
  env = subprocess_env({"PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"})
  procs = {s: subprocess.Popen(_python_m(s) + ["--help"], cwd=tmp_path, text=True, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
           for s in _scripts()}
  for script, p in procs.items():
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0 and "flags:" in out, (script, err[-2000:])
    # absl heads the flags with the main module's name: under `python -m` its path (a console
    # script shows its own name there, e.g. 'ran-train:').
    out = "\n".join(line for line in out.splitlines() if not re.fullmatch(r"/\S+\.py:", line))
    bad = re.findall(r"`|\*\*|docs/\S+|python train\.py|configs/\w+\.py|ran_jax/[\w/]+\.py", out)
    assert bad == [], (script, bad)


def test_a_missing_run_points_to_the_installed_command(tmp_path):
  from ran_jax import export

  with pytest.raises(FileNotFoundError, match=r"train to the end first with `ran-train "
                     r"--config=\.\.\. --workdir="):
    export.load_trained(str(tmp_path))


def _installed_env():
  missing = [s for s in _scripts() if not os.path.exists(os.path.join(BIN, s))]
  if missing:
    pytest.fail(f"{missing} not installed beside {sys.executable}: install the package first "
                "(README command 1 or 2: pip install -r requirements.txt . / pip install -e .)")
  env = subprocess_env({"TF_CPP_MIN_LOG_LEVEL": "2"})
  env.pop("PYTHONPATH", None)   # the installed package, not the checkout
  env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
  return env


def _run_raw(cmd, cwd, env):
  """A subprocess whose output keeps its carriage returns (text=True would turn them into
  newlines, hiding a progress bar drawn into a log)."""
  r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, timeout=600)
  return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(errors="replace"),
                                     r.stderr.decode(errors="replace"))


def _assert_clean_training_log(stderr: str):
  lines = stderr.split("\n")
  epoch = [line for line in lines if re.search(r"epoch 2/2 \(step 6/6\) \| test accuracy "
                                               r"[\d.]+ .*\| ETA \d\d:\d\d:\d\d$", line)]
  done = [line for line in lines if "done: step 6, test accuracy" in line]
  assert len(epoch) == 1 and len(done) == 1, stderr[-4000:]
  assert "\r" not in epoch[0] + done[0] and "ran-train:" not in stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_readme_blocks_run_outside_the_repository(tmp_path):
  """The Quickstart's commands, then the Python API block, as a user pastes them."""
  env = _installed_env()
  where = subprocess.run([sys.executable, "-c", "import ran_jax; print(ran_jax.__file__)"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
  assert where.returncode == 0, where.stderr[-2000:]   # importable outside the checkout

  quickstart = _smoke(readme_block("Quickstart", "bash"))
  r = _run_raw(["bash", "-e", "-o", "pipefail", "-c", quickstart], tmp_path, env)
  assert r.returncode == 0, (quickstart, r.stdout[-3000:], r.stderr[-5000:])
  for f in ("runs/digits/final_metrics.json", "runs/digits/deploy/encoder.tflite",
            "runs/digits/eval/result.json", "x.npy", "x_labels.npy", "features.npz"):
    assert (tmp_path / f).exists(), f
  assert re.search(r"accuracy", r.stdout), r.stdout[-2000:]        # the cloud's report
  # ran-train's log: an epoch line with its ETA and the closing summary, each a line of its
  # own (no bar in a log file: no carriage return on them, no 'ran-train:' bar text)
  _assert_clean_training_log(r.stderr)

  api = tmp_path / "api.py"
  api.write_text(_smoke(readme_block("The Python API in ten lines", "python")))
  r = _run_raw([sys.executable, str(api)], tmp_path, env)
  assert r.returncode == 0, (api.read_text(), r.stderr[-5000:])
  accuracy, worst = r.stdout.strip().splitlines()[-1].split(" ", 1)
  assert 0.0 < float(accuracy) <= 1.0 and "mse_sum" in worst
  # The Python API is not silent: the training's progress reaches stderr without any setup.
  _assert_clean_training_log(r.stderr)
  assert (tmp_path / "runs/api/export").is_dir()


def test_tensorboard_reads_what_a_run_writes(tmp_path):
  """The tutorial's `tensorboard --logdir=runs`: TensorBoard is installed with the package
  (requirements.txt) and reads the scalars a run's MetricWriter writes."""
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

  from ran_jax.metric_writers import MetricWriter

  w = MetricWriter(str(tmp_path / "runs" / "digits"))
  w.write(3, {"disc/ce": 0.5})
  w.write(3, {"accuracy": 0.9}, kind="test")
  w.close()
  events = EventAccumulator(str(tmp_path / "runs" / "digits" / "tensorboard"))
  events.Reload()
  assert set(events.Tags()["scalars"]) == {"disc/ce", "test/accuracy"}
  assert [(e.step, e.value) for e in events.Scalars("test/accuracy")] == [(3, pytest.approx(0.9))]
  with open(os.path.join(ROOT, "docs", "tutorials", "first_run.md")) as f:
    assert "tensorboard --logdir=runs" in f.read()
