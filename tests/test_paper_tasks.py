"""bench/paper_tasks.py (`python -m bench tasks`) end to end on CPU with its --tiny budgets.

The accelerator script's plumbing: the CIFAR-10 sweep (DNN + a RAN point, attacked) on a
tiny CIFAR-10 JPEG archive, and the VGG-16 smoke on TFDS fake data stopped by SIGTERM
half-way and resumed. 36 steps of 6 per epoch: after the stop at step 18 there are three
epoch ends (a test pass and a checkpoint each) before the run could finish, so the SIGTERM
lands in the run on a slow machine too.
"""

import json
import os
import subprocess
import sys

import data_fakes
import numpy as np
import pytest

from bench import paper_tasks
from ran_jax import export, input_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_tasks_tiny_end_to_end(tmp_path):
  manual = data_fakes.write_cifar10_jpg(tmp_path / "cifar", per_class_train=4, per_class_test=2)
  out = tmp_path / "out"
  cmd = [sys.executable, "-m", "bench", "tasks", f"--out={out}", "--tiny",
         f"--cifar_manual_dir={manual}", f"--cifar_data_dir={tmp_path / 'tfds'}",
         "--cifar_epochs=1", "--cifar_batch=8", "--cifar_lams=0.5", "--attackers=ridge",
         "--imagenet_steps=36", "--imagenet_batch=8", "--mock_examples=48"]
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"))
  summary = json.loads((out / "summary.json").read_text())
  c, m = summary["cifar10"], summary["imagenet"]
  assert c["exit"] == 0, (r.stdout[-2000:], (out / "cifar10" / "sweep.log").read_text()[-3000:])
  assert {(p["method"], p["setting"]) for p in c["points"]} == {("dnn", "lam=1"),
                                                                ("ran", "lam=0.5")}
  for p in c["points"]:
    assert p["worst_attacker"] == "ridge" and p["worst_mse_sum"] > 0
    # the accuracy is the exported networks' on the test split, recomputed here
    run = "dnn" if p["method"] == "dnn" else "ran_lam0.5"
    trained = export.load_trained(str(out / "cifar10" / "runs" / run))
    te = input_pipeline.load_dataset(trained.config.data).test
    te = te.get(np.arange(len(te)))
    x, y = np.asarray(te["image"], np.float32), np.asarray(te["label"])
    assert trained.feature_noise == 0 and len(x) == 20
    pred = np.argmax(np.asarray(trained.classify(trained.encode(x))), -1)
    assert p["accuracy"] == pytest.approx(float(np.mean(pred == y)), abs=1e-6), run
  # Tiny budgets cannot reach the paper's accuracy; the check says so instead of passing.
  assert c["checks"]["ran_accuracy_at_least_paper_0.76"] is False
  assert (out / "cifar10" / "results.csv").exists()
  log = (out / "imagenet_smoke" / "train.log").read_text()
  assert m["mocked"] is True
  assert m["first_run_exit"] == 143 and "SIGTERM: saved checkpoint" in log, log[-3000:]
  assert m["checks"]["stopped_by_sigterm_and_saved"] and m["checks"]["resumed_at_saved_step"]
  assert m["checks"]["reached_planned_step"] and m["final_step"] == 36
  assert 18 <= m["saved_at_stop"][-1] < 36
  assert "## ImageNet / VGG-16 (T3) smoke on TFDS fake data" in (out / "summary.md").read_text()
  # The CIFAR-10 accuracy check fails at tiny budgets, so the run's exit says "not all passed".
  assert r.returncode == 1


@pytest.mark.parametrize("argv,message", [
    (["--steps=cifar10,nope"], "unknown ['nope']"),
    (["--cifar_lams=0.5,1.0"], "--cifar_lams"),
    (["--cifar_lams=abc"], "--cifar_lams"),
    (["--imagenet_steps=2"], "--imagenet_steps=2"),
    (["--cifar_batch=0"], "--cifar_batch=0"),
])
def test_bad_arguments_exit_2(tmp_path, capsys, argv, message):
  with pytest.raises(SystemExit) as e:
    paper_tasks.main([f"--out={tmp_path}"] + argv)
  assert e.value.code == 2
  assert message in capsys.readouterr().err
