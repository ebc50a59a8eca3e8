"""What a job shows while it runs (`ran_jax.progress`): logging for library callers that set
none up, a caller's own setup left alone, a bar only on a terminal and never glued to a log
line, and the site header's version."""

import io
import logging
import os
import subprocess
import sys

import pytest

import ran_jax
from ran_jax import progress
from tests.helpers import ROOT, subprocess_env


def _run(code):
  r = subprocess.run([sys.executable, "-c", code], cwd="/tmp", capture_output=True, text=True,
                     env=subprocess_env({"PYTHONPATH": ROOT}), timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  return r.stderr.splitlines()


LOG = "import logging; log = logging.getLogger('ran_jax'); from ran_jax import progress\n"


def test_library_callers_get_info_lines_without_any_setup():
  lines = _run(LOG + "log.info('before')\nprogress.ensure_logging()\nlog.info('epoch 1/2')\n"
               "log.debug('hidden')\nprogress.ensure_logging()\nlog.info('epoch 2/2')")
  assert [line.split(" INFO ", 1)[1] for line in lines] == ["epoch 1/2", "epoch 2/2"]


def test_absl_implicit_root_handler_prints_each_line_once():
  # absl logs at import time through logging.basicConfig(): a root handler at WARNING.
  lines = _run(LOG + "logging.basicConfig()\nprogress.ensure_logging()\nlog.info('epoch 1/2')")
  assert lines == ["INFO:ran_jax:epoch 1/2"]


@pytest.mark.parametrize("setup, expected", [
    ("logging.basicConfig(level=logging.INFO, format='mine %(message)s')", ["mine epoch"]),
    ("logging.getLogger('ran_jax').setLevel(logging.WARNING)", []),
    ("logging.basicConfig(level=logging.WARNING, format='mine %(message)s')\n"
     "logging.getLogger('ran_jax').setLevel(logging.ERROR)", []),
])
def test_a_callers_own_setup_is_left_alone(setup, expected):
  assert _run(LOG + setup + "\nprogress.ensure_logging()\nlog.info('epoch')") == expected


def test_handler_added_then_given_up_when_the_caller_configures_logging():
  lines = _run(LOG + "progress.ensure_logging()\nlog.info('one')\n"
               "logging.basicConfig(level=logging.INFO, format='mine %(message)s')\n"
               "progress.ensure_logging()\nlog.info('two')")
  assert lines[0].endswith(" INFO one") and lines[1:] == ["mine two"]   # never twice


def test_a_root_handler_added_mid_run_never_doubles_a_line():
  # absl's first log line (orbax logs one when a checkpoint handler is first built, during
  # training) calls logging.basicConfig() after ensure_logging ran: each line still once.
  lines = _run(LOG + "progress.ensure_logging()\nlog.info('epoch 1/2')\n"
               "from absl import logging as absl_logging\nabsl_logging.vlog(1, 'x')\n"
               "log.info('epoch 2/2')")
  assert len(lines) == 2 and lines[0].endswith(" INFO epoch 1/2"), lines
  assert lines[1].endswith("epoch 2/2"), lines


def test_no_bar_in_a_log_file(monkeypatch):
  err = io.StringIO()
  monkeypatch.setattr(sys, "stderr", err)
  assert not progress.is_terminal()
  with progress.bar(10, desc="ran-train", unit="step") as b:
    for _ in range(10):
      b.update()
  assert err.getvalue() == ""


def test_log_lines_never_glue_onto_a_drawn_bar(monkeypatch):
  err = io.StringIO()
  monkeypatch.setattr(sys, "stderr", err)
  logger = logging.getLogger("ran_jax")
  handler = logging.StreamHandler(err)
  logger.addHandler(handler)
  try:
    with progress.bar(4, desc="ran-train", unit="step", enabled=True) as b:
      b.update()
      b.set_postfix_str("epoch 1/2", refresh=True)
      logger.warning("epoch 1/2 | test accuracy 0.5")
      b.update(3)
  finally:
    logger.removeHandler(handler)
  out = err.getvalue()
  assert "ran-train: 1/4 steps" in out and "ETA" in out and ", epoch 1/2" in out
  # The bar's line is blanked (carriage return) right before the record: it starts a line.
  before = out[:out.index("epoch 1/2 | test")]
  assert before.endswith("\r") and before.rstrip("\r").endswith(" ")
  assert not logger.filters   # the bar's filter is gone once it closes


def test_eta():
  assert progress.eta(0, 10, 5.0) == "?"
  assert progress.eta(5, 10, 50.0) == "00:00:50"
  assert progress.eta(1, 3601, 1.0) == "01:00:00"


def test_site_header_names_this_version():
  import yaml

  with open(os.path.join(ROOT, "mkdocs.yml")) as f:
    site = yaml.safe_load(f)
  assert site["site_name"] == f"ran_jax {ran_jax.__version__}"


def test_track_logs_each_item_with_the_eta(caplog, monkeypatch):
  monkeypatch.setattr(sys, "stderr", io.StringIO())   # a log file: no bar
  tr = progress.Track(["a", "b", "c"], desc="ran-sweep", unit="point")
  seen = []
  with caplog.at_level(logging.INFO, logger="ran_jax"):
    for item in tr:
      tr.set_postfix_str(f"point {item}")
      seen.append(item)
  assert seen == ["a", "b", "c"] and sys.stderr.getvalue() == ""
  lines = [r.getMessage() for r in caplog.records]
  assert [line.split(" | ETA ")[0] for line in lines] == [
      "ran-sweep: 1/3 points done (point a)", "ran-sweep: 2/3 points done (point b)",
      "ran-sweep: 3/3 points done (point c)"]
  assert lines[-1].endswith("| ETA 00:00:00")
  assert not logging.getLogger("ran_jax").filters


@pytest.mark.parametrize("job, args, error", [
    ("train", ("no_such_config", "WD"), ValueError),
    ("sweep", ("digits_lenet:smoke", "WD"), TypeError),     # an unknown option, below
    ("search", ("digits_lenet:smoke", "WD"), Exception),
    ("erase", ("WD",), Exception),
    ("deploy", ("WD",), Exception),
    ("attack", ("WD",), FileNotFoundError),
])
def test_every_job_sets_up_logging_first(job, args, error, tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(progress, "ensure_logging", lambda *a, **k: calls.append(job))
  kwargs = {"sweep": {"attack_epochs": 1}, "search": {"knob": "ran.lamda"}}.get(job, {})
  args = tuple(str(tmp_path / "wd") if a == "WD" else a for a in args)
  with pytest.raises(error):
    getattr(ran_jax, job)(*args, **kwargs)
  assert calls == [job]


def test_a_fit_logs_its_epochs_with_the_time_left_at_most(caplog, monkeypatch):
  """An attacker's fit (`attackers.fit_group`): a line per epoch (every=0 here; 10 s apart by
  default) with the epoch, the fits running, the best validation loss and the time left if
  every fit ran to its cap; after the last epoch, 0 left."""
  import numpy as np

  from ran_jax.privacy import attackers as atk

  monkeypatch.setattr(sys, "stderr", io.StringIO())   # a log file: no bar
  monkeypatch.setattr(atk.Progress.__init__, "__defaults__", (0.0,))
  rng = np.random.default_rng(0)
  z, x = rng.normal(size=(32, 4)).astype(np.float32), rng.uniform(size=(32, 2, 2, 1))
  cfg = atk.FitConfig(batch_size=16, max_epochs=3, patience=5)
  jobs = [atk.Job(f"t/mlp{w}", atk.MLPDecoder((2, 2, 1), (w,), (0.0, 1.0)), atk.recon_loss,
                  "x", cfg) for w in (4, 8)]
  with caplog.at_level(logging.INFO, logger="ran_jax"):
    atk.fit_group(jobs, z, {"x": x.astype(np.float32)}, z[:8], {"x": x[:8].astype(np.float32)})
  lines = [r.getMessage() for r in caplog.records if "of at most" in r.getMessage()]
  assert [line.split(", best")[0] for line in lines] == [
      f"t/mlp4 and 1 more: epoch {e} of at most 3, {r} running" for e, r in
      ((1, 2), (2, 2), (3, 0))]
  assert lines[-1].endswith("| at most 00:00:00 left")
  assert sys.stderr.getvalue() == ""


def test_bars_off_inside_a_job_that_was_asked_for_none(monkeypatch):
  err = io.StringIO()
  err.isatty = lambda: True                           # a terminal
  monkeypatch.setattr(sys, "stderr", err)
  with progress.bars(False):
    with progress.bar(3, desc="fit", unit="epoch") as b:
      b.update(3)
  assert err.getvalue() == ""
  with progress.bar(3, desc="fit", unit="epoch") as b:
    b.update(3)
  assert "fit: 3/3 epochs" in err.getvalue()


def test_the_identity_attack_logs_each_setting_with_the_eta(caplog, monkeypatch):
  """`attack_identity`: after each setting (its families searched and refit) a line with the
  count of settings, the one just done and the ETA; the label-only floor is the last."""
  from ran_jax.privacy import identity
  from tests.test_identity import FakeTrained, make_source

  monkeypatch.setattr(sys, "stderr", io.StringIO())   # a log file: no bar
  cfg = identity.IdentityConfig(seeds=(0,), bootstrap=50, person_groups=20, person_releases=3,
                                attackers=("logreg",), releases=(4,),
                                fit=identity.atk.FitConfig(batch_size=64, max_epochs=3,
                                                           patience=2))
  with caplog.at_level(logging.INFO, logger="ran_jax"):
    identity.attack_identity(FakeTrained(16, sigma=0.5), make_source(seed=3), cfg)
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("identity attack")]
  assert [line.split(" | ETA ")[0] for line in lines] == [
      f"identity attack: {i}/5 settings done ({name})" for i, name in
      enumerate(["single", "mean_4", "clean", "raw", "label_only"], 1)]
  assert lines[-1].endswith("| ETA 00:00:00")
  assert sys.stderr.getvalue() == ""
