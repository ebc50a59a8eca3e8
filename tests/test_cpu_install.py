"""A CPU machine stays off the TPU runtime: no command prints TPU initialisation errors.

With libtpu installed (the `[tpu-plan]` extra, which .ci/run installs), JAX left to itself
loads the TPU runtime in every process, and on a machine without a TPU that prints
`Failed to find host bounds`, `TPU_WORKER_HOSTNAMES` errors and `Unable to initialize
backend 'tpu'` (beside another JAX process: advice to delete the runtime's lockfile).
The commands name the CPU where the host has no accelerator
(`ran_jax.parallel.cpu_unless_accelerator`); `ran-plan` loads libtpu for its compiles
with what a TPU VM's metadata would say.
"""

import os
import re
import subprocess
import sys

import pytest

from ran_jax import parallel
from tests.helpers import ROOT

# What the TPU runtime or JAX's TPU backend print when they start on a host without a TPU.
TPU_INIT = re.compile(r"libtpu|TPU_WORKER|TPU_ACCELERATOR|host bounds|backend 'tpu'|lockfile"
                      r"|TPU backend|TPU platform", re.IGNORECASE)


def _user_env():
  """A user's shell: nothing of JAX's or the TPU runtime's set (the suite sets some)."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("JAX_PLATFORMS", "TPU_", "XLA_FLAGS", "ALLOW_MULTIPLE_LIBTPU"))}
  env.update(PYTHONPATH=ROOT)
  return env


def _has_libtpu():
  import importlib.util

  return importlib.util.find_spec("libtpu") is not None


def _tpu_lines(text):
  return [line for line in text.splitlines() if TPU_INIT.search(line)]


# ---------------------------------------------------------------- the host's devices


def _fake_host(root, files=(), pci=()):
  for f in files:
    path = root / f
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
  for i, (vendor, device) in enumerate(pci):
    d = root / "sys/bus/pci/devices" / f"0000:00:{i:02x}.0"
    d.mkdir(parents=True)
    (d / "vendor").write_text(vendor + "\n")
    (d / "device").write_text(device + "\n")
  return str(root)


@pytest.mark.parametrize("files, pci, accelerator", [
    ((), [("0x1af4", "0x1041"), ("0x8086", "0x0d57")], False),   # a VM: virtio, a bridge
    ((), [("0x1ae0", "0x0042")], False),                          # Google's network card
    ((), [("0x1ae0", "0x0063")], True),                           # a TPU v5e chip
    ((), [("0x1ae0", "0x00ff")], True),                           # a Google device not known
    (("dev/accel0",), (), True),                                  # a TPU's device file
    (("dev/vfio/0",), (), True),
    (("dev/nvidia0",), (), True),
    (("dev/nvidiactl",), (), True),
    (("dev/kfd",), (), True),                                     # an AMD GPU
])
def test_accelerators_are_found_on_the_host(tmp_path, files, pci, accelerator):
  root = _fake_host(tmp_path, files, pci)
  assert bool(parallel.host_accelerators(root)) == accelerator
  env = {}
  assert parallel.cpu_unless_accelerator(env, root) == (None if accelerator else "cpu")
  assert env == ({} if accelerator else {"JAX_PLATFORMS": "cpu"})


@pytest.mark.parametrize("env", [{"JAX_PLATFORMS": ""}, {"JAX_PLATFORMS": "cuda"},
                                 {"JAX_FORCE_TPU_INIT": "1"}])
def test_a_platform_the_user_chose_is_kept(tmp_path, env):
  before = dict(env)
  assert parallel.cpu_unless_accelerator(env, _fake_host(tmp_path)) is None
  assert env == before


# ---------------------------------------------------------------- the commands


def test_train_prints_no_tpu_initialisation(tmp_path):
  """`ran-train` on this CPU host, libtpu installed or not: zero TPU lines, and the CPU."""
  if parallel.host_accelerators():
    pytest.skip("this host has an accelerator")
  r = subprocess.run([sys.executable, "-m", "ran_jax.train", "--config=digits_lenet:smoke",
                      f"--workdir={tmp_path / 'run'}"], env=_user_env(), cwd=tmp_path,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  out = r.stdout + r.stderr
  assert "1 devices in 1 processes (cpu)" in out
  assert _tpu_lines(out) == []
  if _has_libtpu():
    # The same host with JAX choosing by itself does start the TPU runtime: what the
    # command avoids is there to avoid (and the pattern above recognises it).
    code = "import logging; logging.basicConfig(level=logging.INFO); import jax; jax.devices()"
    r = subprocess.run([sys.executable, "-c", code],
                       env=_user_env(), capture_output=True, text=True, timeout=120)
    assert _tpu_lines(r.stdout + r.stderr), r.stderr[-2000:]


def test_plan_compiles_without_tpu_runtime_errors(tmp_path):
  """ran-plan loads libtpu for its compile-only devices without the runtime's complaints."""
  if not _has_libtpu():
    pytest.skip('libtpu: the [tpu-plan] extra')
  code = ("from ran_jax import parallel, plan; parallel.cpu_unless_accelerator(); "
          "d = plan.topology_devices(plan.parse_topology('v5e-16')); "
          "print(len(d), len({x.process_index for x in d}))")
  r = subprocess.run([sys.executable, "-c", code], env=_user_env(), cwd=tmp_path,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.split() == ["16", "4"]
  assert _tpu_lines(r.stderr) == [], r.stderr[-2000:]


def test_plan_names_the_extra_when_libtpu_is_missing():
  from ran_jax import plan

  assert '".[tpu-plan]"' in plan.LIBTPU_INSTALL and "libtpu==0.0.42.*" in plan.LIBTPU_INSTALL
  assert "rm " not in plan.LIBTPU_INSTALL


def test_libtpu_is_an_extra_of_its_own():
  """libtpu is not in the base or the dev install; CI installs the extra's own pin."""
  import tomllib

  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    extras = tomllib.load(f)["project"]["optional-dependencies"]
  assert extras["tpu-plan"] == ["libtpu==0.0.42.*"]
  assert not [r for r in extras["dev"] if r.startswith("libtpu")]
  for name in ("requirements.txt", "requirements-dev.txt"):
    with open(os.path.join(ROOT, name)) as f:
      assert "libtpu" not in f.read(), name
  with open(os.path.join(ROOT, ".ci", "run")) as f:
    ci = f.read()
  assert re.search(r'pip install .*"libtpu==0\.0\.42\.\*"', ci)
  assert "RAN_TEST_REQUIRE_TPU_PLAN=1" in ci
