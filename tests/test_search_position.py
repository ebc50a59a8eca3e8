"""Where the budget search spends its trainings when candidates fail (`search.next_position`)."""

import doctest
import json
import os

from ran_jax import search, search_space
from ran_jax.configs import digits_lenet
from ran_jax.privacy import protocol
from tests.test_search import marker_train


def _evaluate_failing_from(sigma_fail: float, ref_acc: float = 0.95):
  """Accuracy within a 0.005 budget only below sigma_fail (the reference: ref_acc)."""

  def evaluate(workdir, data, cfg, name):
    with open(os.path.join(workdir, "config.json")) as f:
      sigma = json.load(f)["model"]["feature_noise"]
    acc = ref_acc if name == "reference" else ref_acc - (0.1 if sigma >= sigma_fail else 0.001)
    attackers = {"ridge": {"mse_sum": 10.0 + sigma, "mse_mean": 0.01, "psnr": 20.0,
                           "ssim": 0.5}}
    return ({"accuracy": acc, "attackers": attackers, "worst": protocol.worst_case(attackers),
             "value_range": [0.0, 1.0], "reference": {"label_only": {"mse_sum": 40.0}}},
            {"x_show": data.x_test[:2], "rec_ridge": data.x_test[:2]})

  return evaluate


def test_the_bisection_module_doctests():
  """search_space's examples (knob values both ways, the first positions) hold."""
  result = doctest.testmod(search_space)
  assert result.attempted >= 5 and result.failed == 0


def test_after_two_failures_the_third_training_is_the_untried_point_between():
  """digits, the noise knob in [0, 2], --max_trainings=3: sigma 1 and 0.5 fail the budget;
  the third training goes to sigma 0.25, not to sigma 0 (the least private end)."""
  for end_is_reference in (False, True):
    assert search.next_position({0.5: False, 0.25: False}, 3,
                                end_is_reference=end_is_reference) == 0.125
  assert search.knob_value(0.125, "model.feature_noise", 0.0, 2.0) == 0.25


def test_the_reference_end_is_never_trained_even_when_the_bracket_is_narrow():
  tested = {0.5: False, 0.25: False, 0.125: False, 0.0625: False}
  assert search.next_position(tested, 10, resolution=1 / 16, end_is_reference=True) is None
  assert search.next_position(tested, 10, resolution=1 / 16, end_is_reference=False) == 0.0


def _run(tmp_path, cfg, sigma_fail):
  trains = []
  state = search.run_search(cfg, str(tmp_path / "s"), max_accuracy_drop=0.005, max_trainings=3,
                            resolution=1 / 16, train_fn=marker_train(trains),
                            evaluate_fn=_evaluate_failing_from(sigma_fail))
  return state, [sigma for _, sigma, _ in trains]


def test_search_as_a_user_runs_it(tmp_path):
  """The whole search on digits: the trainings are the reference, then sigma 1, 0.5, 0.25;
  with sigma 0.25 within budget it is chosen (not the undefended encoder)."""
  state, sigmas = _run(tmp_path, digits_lenet.get_config("smoke"), sigma_fail=0.5)
  assert sigmas == [0.0, 1.0, 0.5, 0.25]        # reference first (sigma 0, every defence off)
  assert [c["value"] for c in state["candidates"]] == [0.25, 0.5, 1.0]
  assert state["chosen"]["value"] == 0.25
  assert not any(c.get("same_as_reference") for c in state["candidates"])


def test_search_with_no_other_defence_never_spends_a_training_on_the_reference(tmp_path):
  cfg = digits_lenet.get_config("smoke")
  cfg.ran.lam, cfg.ran.target_psnr = 1.0, 0.0   # at sigma 0 this is the reference itself
  state, sigmas = _run(tmp_path, cfg, sigma_fail=0.1)
  assert sigmas == [0.0, 1.0, 0.5, 0.25]
  assert state["chosen"] is None and state["trainings"]["candidates"] == 3
