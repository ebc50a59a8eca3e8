"""`--config.profile_steps`: a jax.profiler trace of exactly the chosen steps, in the layout
TensorBoard's profile plugin reads (WORKDIR/profile/plugins/profile/<run>/<host>.xplane.pb),
read back with XLA's own reader; bad values refused by name."""

import glob
import os

import jax.profiler
import pytest

from ran_jax import configs, profiling
from ran_jax.config_lib import ConfigError, validate_config
from tests.helpers import run_train


@pytest.mark.parametrize("spec, want", [("", None), ("7", (7, 7)), ("5-8", (5, 8)),
                                        (" 2 - 2 ", (2, 2)), (3, (3, 3))])
def test_steps_parsed(spec, want):
  assert profiling.parse_steps(spec) == want


@pytest.mark.parametrize("spec", ["0", "4-2", "x", "1-", "-3", "1,2", 1.5, True, "0-3"])
def test_bad_steps_refused_by_name(spec):
  with pytest.raises(ValueError, match="profile_steps"):
    profiling.parse_steps(spec)
  if isinstance(spec, str):   # ConfigDict itself refuses a non-string for this string field
    config = configs.get_config("digits_lenet:smoke")
    config.profile_steps = spec
    with pytest.raises(ConfigError, match="profile_steps"):
      validate_config(config, num_devices=1)


def _traced_steps(workdir, run):
  files = glob.glob(os.path.join(workdir, "profile", "plugins", "profile", run, "*.xplane.pb"))
  assert len(files) == 1, files
  steps = []
  for plane in jax.profiler.ProfileData.from_file(files[0]).planes:
    for line in plane.lines:
      steps += [dict(e.stats)["step_num"] for e in line.events if e.name == "train"]
  return sorted(steps)


@pytest.mark.slow
def test_trace_holds_exactly_the_chosen_steps(tmp_path):
  wd = tmp_path / "wd"
  args = ["--config=configs/digits_lenet.py:smoke", f"--workdir={wd}",
          "--config.export_deployment=False", "--config.checkpoint_every_steps=1"]
  r = run_train([*args, "--config.max_steps=4", "--config.profile_steps=2-3"])
  assert r.returncode == 0, r.stderr[-3000:]
  assert _traced_steps(wd, "steps_2-3") == [2, 3]
  assert "profile: steps 2-3 traced to" in r.stderr

  # A resume inside the range traces the steps still to run; one past it traces none.
  r = run_train([*args, "--config.max_steps=6", "--config.profile_steps=4-5"])
  assert r.returncode == 0, r.stderr[-3000:]
  assert _traced_steps(wd, "steps_4-5") == [5]   # step 4 ran in the first run
  r = run_train([*args, "--config.max_steps=7", "--config.profile_steps=2-3"])
  assert r.returncode == 0, r.stderr[-3000:]
  assert "steps 2-3 were run before this resume; no trace taken" in r.stderr
