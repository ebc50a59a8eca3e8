"""The budget search (ran_jax.search): bisection, held-out validation, resume, outputs, errors.

Most tests replace training and attacking by synthetic functions whose accuracy falls
linearly with the knob, so that the search's decisions are known exactly and cost no
compilation; one test goes through the real export and attackers (untrained networks,
tiny fits) and the CLI is run once for its exit code.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import digits_lenet
from ran_jax import export, input_pipeline, parallel, search, sweep
from ran_jax.config_lib import ConfigError
from ran_jax.privacy import attackers as atk
from ran_jax.privacy import protocol
from ran_jax.program import InputSpec, build_program
from tests.helpers import ROOT

REF_ACC = 0.95
SLOPE = 0.07       # validation accuracy = REF_ACC - SLOPE * sigma (- PENALTY if defended)
BUDGET = 0.05      # -> the most private qualifying sigma is 0.714...


def smoke():
  return digits_lenet.get_config("smoke")


def marker_train(calls, fail_at=None):
  """A train_fn that records its config and marks the run finished (an export/model.json)."""

  def train_fn(cfg, workdir):
    calls.append((os.path.basename(workdir), float(cfg.model.feature_noise),
                  int(cfg.data.train_limit)))
    if fail_at is not None and len(calls) == fail_at:
      raise RuntimeError("killed")  # the search process dies inside a training
    os.makedirs(os.path.join(workdir, export.EXPORT_DIR), exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(cfg.to_json_best_effort())
    with open(os.path.join(workdir, export.EXPORT_DIR, "model.json"), "w") as f:
      f.write("{}")
    return {}

  return train_fn


def synthetic_evaluate(calls, penalty=0.0):
  """Accuracy falls, reconstruction error rises linearly with the run's feature noise."""

  def evaluate(workdir, data, cfg, name):
    calls.append(name)
    with open(os.path.join(workdir, "config.json")) as f:
      c = json.load(f)
    sigma = c["model"]["feature_noise"]
    defended = c["ran"]["lam"] < 1.0 or sigma > 0 or c["model"]["bottleneck_dim"] > 0
    acc = REF_ACC - SLOPE * sigma - (penalty if defended else 0.0)
    mse = 10.0 + 20.0 * sigma
    attackers = {"ridge": {"mse_sum": mse, "mse_mean": mse / 784, "psnr": 20 - sigma,
                           "ssim": 0.5}}
    result = {"accuracy": acc, "attackers": attackers,
              "worst": protocol.worst_case(attackers), "value_range": [0.0, 1.0],
              "reference": {"label_only": {"mse_sum": 40.0}}, "n_test": len(data.x_test)}
    art = {"x_show": data.x_test[:4], "rec_ridge": data.x_test[:4] * 0.5}
    return result, art

  return evaluate


def test_next_position_is_a_bisection():
  # a monotone front: positions up to 0.3 qualify
  tested = {}
  while (t := search.next_position(tested, 6)) is not None:
    tested[t] = t <= 0.3
  assert list(tested) == [0.5, 0.25, 0.375, 0.3125, 0.28125, 0.296875]
  assert max(t for t, ok in tested.items() if ok) == 0.296875
  # nothing qualifies: every training halves towards the least private end, never spent on it
  tested = {}
  while (t := search.next_position(tested, 4)) is not None:
    tested[t] = False
  assert list(tested) == [0.5, 0.25, 0.125, 0.0625]
  # everything qualifies: the most private end is approached, never assumed
  tested = {}
  while (t := search.next_position(tested, 3)) is not None:
    tested[t] = True
  assert list(tested) == [0.5, 0.75, 0.875]
  # a resolution stops the bisection once the bracket is that narrow (here 1/16)
  tested = {}
  while (t := search.next_position(tested, 6, 1 / 16)) is not None:
    tested[t] = t <= 0.3
  assert list(tested) == [0.5, 0.25, 0.375, 0.3125]
  tested = {}
  while (t := search.next_position(tested, 10, 1 / 8)) is not None:
    tested[t] = False
  assert list(tested) == [0.5, 0.25, 0.125, 0.0]
  # direction: lambda is more private downwards
  assert search.knob_value(0.25, "ran.lam", 0.0, 1.0) == 0.75
  assert search.knob_value(0.25, "model.feature_noise", 0.0, 2.0) == 0.5


def test_validation_is_held_out_of_training():
  cfg = smoke()                                  # data.train_limit = 48
  n_fit, n_val = search.split_sizes(cfg, 1437, 0.1)
  assert (n_fit, n_val) == (43, 5)
  src = input_pipeline.load_dataset(cfg.data)
  val = search.validation_source(src, n_fit, n_val)
  full = src.train.get(np.arange(48))["image"]
  np.testing.assert_array_equal(val.train.get(np.arange(n_fit))["image"], full[:43])
  np.testing.assert_array_equal(val.test.get(np.arange(n_val))["image"], full[43:])
  # what the trainer loads with the search's train_limit is exactly the first n_fit
  trained_on = input_pipeline.load_dataset(
      sweep.apply_overrides(cfg, {"data.train_limit": n_fit}).data)
  assert len(trained_on.train) == n_fit
  np.testing.assert_array_equal(trained_on.train.get(np.arange(n_fit))["image"], full[:43])


def test_search_chooses_within_budget_and_resumes_after_a_kill(tmp_path):
  wd = str(tmp_path / "search")
  kw = dict(knob="model.feature_noise", low=0.0, high=2.0, max_accuracy_drop=BUDGET,
            max_trainings=6, resolution=0.0)
  trains, evals = [], []
  with pytest.raises(RuntimeError, match="killed"):
    search.run_search(smoke(), wd, train_fn=marker_train(trains, fail_at=3),
                      evaluate_fn=synthetic_evaluate(evals), **kw)
  state = json.load(open(os.path.join(wd, search.STATE_FILE)))
  assert [c["value"] for c in state["candidates"]] == [1.0]   # reference + 1 candidate done
  assert state["reference"]["accuracy"] == pytest.approx(REF_ACC)

  trains2, evals2 = [], []
  state = search.run_search(smoke(), wd, train_fn=marker_train(trains2),
                            evaluate_fn=synthetic_evaluate(evals2), **kw)
  # finished trainings and scores are reused; the killed one and the rest are run
  assert [n for n, _, _ in trains2] == ["feature_noise0.5", "feature_noise0.75",
                                        "feature_noise0.625", "feature_noise0.6875",
                                        "feature_noise0.71875"]
  assert evals2 == [n for n, _, _ in trains2] + ["reference", "feature_noise0.6875"]  # + confirm
  # every training ran on the training part only (48 - 5 held out), the reference undefended
  assert {limit for _, _, limit in trains + trains2} == {43}
  assert trains[0][:2] == ("reference", 0.0)
  values = [c["value"] for c in state["candidates"]]
  assert sorted(values) == [0.5, 0.625, 0.6875, 0.71875, 0.75, 1.0]
  assert state["chosen"]["value"] == 0.6875
  assert state["trainings"] == {"reference": 1, "candidates": 6, "max_candidates": 6}
  for c in state["candidates"]:
    assert c["within_budget"] == (c["accuracy"] >= REF_ACC - BUDGET)
  # the confirmation ran on the test split (40 examples in smoke), validation on 5
  assert state["confirm"]["chosen"]["name"] == "feature_noise0.6875"
  assert json.load(open(os.path.join(wd, "points", "reference", "result.json")))["n_test"] == 5
  assert json.load(open(os.path.join(wd, "confirm", "reference", "result.json")))["n_test"] == 40

  # outputs: chosen config + export, report with both figures
  chosen_cfg = json.load(open(os.path.join(wd, "chosen", "config.json")))
  assert chosen_cfg["model"]["feature_noise"] == 0.6875
  assert chosen_cfg["data"]["train_limit"] == 43
  assert os.path.exists(os.path.join(wd, "chosen", "export", "model.json"))
  report = open(os.path.join(wd, "report.md")).read()
  assert "Trainings: **7**" in report and "0.6875 **chosen**" in report
  assert "test split" in report
  # 5 held-out examples cannot resolve a 5-point budget: the report says so
  assert "below the validation split's resolution" in report
  for fig in ("front.png", "reconstructions.png"):
    assert os.path.getsize(os.path.join(wd, fig)) > 1000

  # a finished search rerun trains and scores nothing; a larger bound continues it
  trains3, evals3 = [], []
  search.run_search(smoke(), wd, train_fn=marker_train(trains3),
                    evaluate_fn=synthetic_evaluate(evals3), **kw)
  assert trains3 == [] and evals3 == []
  state = search.run_search(smoke(), wd, train_fn=marker_train(trains3),
                            evaluate_fn=synthetic_evaluate(evals3), **{**kw, "max_trainings": 7})
  assert [n for n, _, _ in trains3] == ["feature_noise0.703125"]
  assert state["chosen"]["value"] == 0.703125

  # another knob interval in the same workdir is refused
  with pytest.raises(search.SearchError, match="other settings"):
    search.run_search(smoke(), wd, train_fn=marker_train([]),
                      evaluate_fn=synthetic_evaluate([]), **{**kw, "high": 3.0})


def test_search_reports_when_nothing_qualifies(tmp_path):
  wd = str(tmp_path / "none")
  state = search.run_search(smoke(), wd, max_accuracy_drop=0.005, max_trainings=3,
                            train_fn=marker_train([]),
                            evaluate_fn=synthetic_evaluate([], penalty=0.01))
  assert [c["value"] for c in state["candidates"]] == [0.25, 0.5, 1.0]
  assert state["chosen"] is None and "chosen" not in state["confirm"]
  assert not os.path.exists(os.path.join(wd, "chosen"))
  assert "No setting qualifies" in open(os.path.join(wd, "report.md")).read()


def test_the_reference_end_is_never_a_candidate(tmp_path):
  cfg = smoke()
  cfg.ran.lam = 1.0             # no defence left at feature_noise = 0: the reference itself
  trains = []
  state = search.run_search(cfg, str(tmp_path / "s"), max_accuracy_drop=BUDGET, max_trainings=2,
                            train_fn=marker_train(trains), evaluate_fn=synthetic_evaluate([]))
  # sigma 1 fails the budget; the last training goes to sigma 0.5, which qualifies
  assert [n for n, _, _ in trains] == ["reference", "feature_noise1", "feature_noise0.5"]
  assert [c["value"] for c in state["candidates"]] == [0.5, 1.0]
  assert state["chosen"]["value"] == 0.5
  assert state["trainings"]["candidates"] == 2


def test_search_through_real_exports_and_attackers(tmp_path):
  """Untrained networks exported as the trainer does, scored by the real attackers."""

  def export_untrained(cfg, workdir):
    source = input_pipeline.load_dataset(cfg.data)
    assert len(source.train) == 43
    program = build_program(cfg, parallel.make_mesh(), InputSpec.of(source), total_steps=6)
    export.export_trained(workdir, program.create_state(0), cfg, program.input_spec, source.name)

  # lambda as the knob: the reference and the candidate share one architecture (and so
  # their compiled programs), and no release noise means no Fisher bound to compute
  fit = atk.FitConfig(batch_size=16, max_epochs=1, patience=1)
  tiny = dict(mlp_hidden=(16,), n_show=4, n_scatter=40)
  fast = search.fast_attack_config(("ridge",), 1, **tiny)
  full = protocol.AttackConfig(attackers=("mlp_decoder",), attacker_fit=fit,
                               retrain_classifier=False, **tiny)
  wd = str(tmp_path / "real")
  state = search.run_search(smoke(), wd, knob="ran.lam", max_accuracy_drop=1.0,
                            max_trainings=1, fast_cfg=fast, full_cfg=full,
                            train_fn=export_untrained)
  assert state["chosen"]["value"] == 0.5            # any accuracy is within a budget of 1
  # the candidate's accuracy is its export's on the held-out validation part, recomputed here
  cand = export.load_trained(os.path.join(wd, state["candidates"][0]["run"]))
  val = search.validation_source(input_pipeline.load_dataset(smoke().data), 43, 5).test
  val = val.get(np.arange(len(val)))
  pred = np.argmax(np.asarray(cand.classify(cand.encode(np.asarray(val["image"])))), -1)
  assert state["candidates"][0]["accuracy"] == pytest.approx(
      float(np.mean(pred == np.asarray(val["label"]))), abs=1e-6)
  assert set(state["candidates"][0]["attackers"]) == {"own_decoder", "ridge"}
  assert set(state["confirm"]["chosen"]["attackers"]) == {"own_decoder", "mlp_decoder"}
  trained = export.load_trained(os.path.join(wd, "chosen"))
  assert trained.config.ran.lam == 0.5 and trained.config.data.train_limit == 43
  assert os.path.getsize(os.path.join(wd, "reconstructions.png")) > 1000


@pytest.mark.parametrize("kw, message", [
    (dict(knob="ran.lamda"), "unknown knob"),
    (dict(max_accuracy_drop=-0.01), "budget must be"),
    (dict(low=1.0, high=1.0), "low < high"),
    (dict(max_trainings=0), "at least 1"),
    (dict(resolution=1.0), "--resolution=1.0"),
    (dict(knob="ran.target_psnr"), "no effect at ran.lam=1.0"),
])
def test_bad_arguments(kw, message):
  cfg = smoke()
  cfg.ran.lam = 1.0
  args = dict(knob="model.feature_noise", low=None, high=None, max_accuracy_drop=0.005,
              max_trainings=6, val_fraction=0.1)
  args.update(kw)
  with pytest.raises(search.SearchError, match=message):
    search.check_args(cfg, **args)


def test_knob_bounds_checked_by_the_config_rules():
  with pytest.raises(ConfigError, match="ran.lam=1.5"):
    search.check_args(smoke(), "ran.lam", 0.5, 1.5, 0.005, 6, 0.1)


def test_cli_bad_arguments_exit_2(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  r = subprocess.run([sys.executable, "-m", "ran_jax.search",
                      "--config=configs/digits_lenet.py:smoke", f"--workdir={tmp_path / 'w'}",
                      "--low=2", "--high=1"], cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 2, r.stderr[-2000:]
  assert "error: Invalid search arguments" in r.stderr and "low < high" in r.stderr
  assert not os.path.exists(tmp_path / "w" / search.STATE_FILE)


def test_knob_spelled_as_every_override_is(tmp_path):
  """--knob=config.ran.lam (the spelling of --config.ran.lam and of a sweep's --variant) is
  the knob ran.lam: it reaches the same checks, before anything trains."""
  assert search.knob_name("config.ran.lam") == search.knob_name("ran.lam") == "ran.lam"
  with pytest.raises(ConfigError, match="ran.lam=1.5"):
    search.run_search(smoke(), str(tmp_path / "w"), knob="config.ran.lam", low=0.5, high=1.5)
  with pytest.raises(search.SearchError, match="--knob='ran.lamda': unknown knob"):
    search.run_search(smoke(), str(tmp_path / "w"), knob="config.ran.lamda")
  assert not os.path.exists(tmp_path / "w" / search.STATE_FILE)
