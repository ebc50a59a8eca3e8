"""A search killed inside a real training resumes that training from its checkpoint.

The search runs the real trainer (digits smoke: 2 epochs of 2 steps, a checkpoint at
each epoch end); the process "dies" right after the candidate's first checkpoint is
written. The rerun must reuse the finished reference, continue the candidate from step
2 (not from 0, and not take its half-written workdir for a finished run), and end with
exactly the parameters of an uninterrupted training of the same config. Scoring is
synthetic (tests/test_search.py: `synthetic_evaluate`), so the only compiled programs are
the trainer's, shared by the three trainings (lambda as the knob: one architecture).
"""

import os

import chex
import pytest

from ran_jax import checkpointing, export, search, sweep, trainer
from tests.test_search import synthetic_evaluate

pytestmark = pytest.mark.slow  # real trainings

KW = dict(knob="ran.lam", max_accuracy_drop=1.0, max_trainings=1, resolution=0.0)


def _params(workdir):
  t = export.load_trained(workdir)
  return {"params": t.params, "batch_stats": t.batch_stats, "step": t.meta["step"]}


def test_interrupted_training_in_a_search_resumes_from_its_checkpoint(tmp_path, monkeypatch):
  from configs import digits_lenet

  config = digits_lenet.get_config("paper,smoke")   # constant rates: no schedule to match
  wd = str(tmp_path / "search")
  trained, restored = [], []

  def train_fn(cfg, workdir):
    trained.append(os.path.basename(workdir))
    return trainer.train_and_evaluate(cfg, workdir)

  save, restore = checkpointing.Checkpointer.save, checkpointing.Checkpointer.restore_latest_good
  kill = {"armed": False}

  def save_then_die(self, step, state, meta):
    out = save(self, step, state, meta)
    if kill["armed"] and "runs/lam0.5" in str(self.directory):
      kill["armed"] = False
      self.wait()
      raise RuntimeError("killed after a checkpoint")
    return out

  def recording_restore(self, abstract_state, fingerprint):
    state = restore(self, abstract_state, fingerprint)
    restored.append((str(self.directory), None if state is None else int(state.step)))
    return state

  monkeypatch.setattr(checkpointing.Checkpointer, "save", save_then_die)
  monkeypatch.setattr(checkpointing.Checkpointer, "restore_latest_good", recording_restore)

  kill["armed"] = True
  with pytest.raises(RuntimeError, match="killed after a checkpoint"):
    search.run_search(config, wd, train_fn=train_fn, evaluate_fn=synthetic_evaluate([]), **KW)
  run = os.path.join(wd, "runs", "lam0.5")
  assert trained == ["reference", "lam0.5"]
  assert os.listdir(os.path.join(run, "checkpoints")) == ["2"]
  assert not os.path.exists(os.path.join(run, export.EXPORT_DIR))   # not finished

  trained.clear()
  restored.clear()
  state = search.run_search(config, wd, train_fn=train_fn, evaluate_fn=synthetic_evaluate([]),
                            **KW)
  assert trained == ["lam0.5"]                      # the reference is reused, the candidate rerun
  assert [(os.path.relpath(d, wd), s) for d, s in restored] == [("runs/lam0.5/checkpoints", 2)]
  assert state["chosen"]["value"] == 0.5

  # The resumed run ends where an uninterrupted one does, to the bit.
  ref = str(tmp_path / "uninterrupted")
  sweep.train_point(sweep.apply_overrides(config, {"data.train_limit": state["search"]["n_fit"]}),
                    {"ran.lam": 0.5}, ref, trainer.train_and_evaluate)
  resumed = _params(run)
  assert resumed["step"] == 4
  chex.assert_trees_all_equal(resumed, _params(ref))
