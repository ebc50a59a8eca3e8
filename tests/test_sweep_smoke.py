"""A ':smoke' sweep, as someone trying the sweep cheaply meets it: in 6 steps the privacy target
(`ran.target_psnr`) caps the reconstruction term for the whole run, so every lambda trains the
same encoder; the sweep says so and why, and without the target the rows differ."""

import json
import logging
import os

import pytest

from configs import digits_lenet
from ran_jax import sweep
from ran_jax.privacy import attackers as atk
from ran_jax.privacy import protocol

POINTS = sweep.plan([0.1, 0.5], [], [], include=("ran", "dnn"))


def _write_finals(out, finals):
  for (_, _, name, _), m in zip(POINTS, finals):
    os.makedirs(os.path.join(out, "runs", name))
    with open(os.path.join(out, "runs", name, "final_metrics.json"), "w") as f:
      json.dump({"step": 6, **m}, f)


def test_note_names_the_capped_target(tmp_path):
  config = digits_lenet.get_config("smoke")
  same = [{"accuracy": 0.55, "recon_sse": 48.703125}] * 2 + [
      {"accuracy": 0.55, "recon_sse": 48.70312805}]
  _write_finals(str(tmp_path / "a"), same)
  note = sweep.same_encoder_note(config, str(tmp_path / "a"), POINTS)
  assert note.startswith("every lambda and the DNN trained the same encoder (test accuracy "
                         "0.5500, reconstruction error 48.7 at each of 3 points, 6 steps)")
  assert "ran.target_psnr=17 dB" in note and "--config.ran.target_psnr=0" in note
  config.ran.target_psnr = 0.0
  assert sweep.same_encoder_note(config, str(tmp_path / "a"), POINTS).endswith(
      "too short for lambda to change the encoder.")
  _write_finals(str(tmp_path / "b"), same[:2] + [{"accuracy": 0.475, "recon_sse": 51.39}])
  assert sweep.same_encoder_note(config, str(tmp_path / "b"), POINTS) is None
  assert sweep.same_encoder_note(config, str(tmp_path / "none"), POINTS) is None  # untrained


def _eval_cfg():
  fit = atk.FitConfig(batch_size=16, max_epochs=1, patience=1)
  return protocol.AttackConfig(attackers=("ridge",), attacker_fit=fit, classifier_fit=fit,
                               retrain_classifier=False, n_show=4, n_scatter=40)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_smoke_sweep_explains_identical_rows_and_differs_without_the_target(tmp_path, caplog):
  rows = {}
  for psnr in (None, 0.0):
    config = digits_lenet.get_config("smoke")
    if psnr is not None:
      config.ran.target_psnr = psnr
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ran_jax"):
      got = sweep.run_sweep(config, str(tmp_path / f"psnr{psnr}"), lams=[0.1, 0.5],
                            noise_factors=[], resized_factors=[], include=("ran", "dnn"),
                            eval_cfg=_eval_cfg(), make_figures=False)
    rows[psnr] = {(round(float(r["accuracy"]), 4), round(float(r["own_decoder_mse_sum"]), 2))
                  for r in got}   # RAN's decoder on the test split: the trained encoder's own
    notes = [r.getMessage() for r in caplog.records if "same encoder" in r.getMessage()]
    if psnr is None:   # the shipped smoke config: 17 dB, never reached in 6 steps
      assert len(rows[psnr]) == 1 and len(notes) == 1 and "target_psnr=17 dB" in notes[0]
    else:
      assert len(rows[psnr]) > 1 and notes == []
