"""Budget search: the most private setting of one privacy knob within an accuracy budget.

  ran-search --config=digits_lenet --max_accuracy_drop=0.005 --workdir=runs/search_digits \\
      [--knob=model.feature_noise] [--low=0 --high=2] [--max_trainings=6] \\
      [--config.num_epochs=10] [--preset=strong] [--objective=identity --attribute=speaker]
  (python -m ran_jax.search ...)
  In Python: state = ran_jax.search("digits_lenet", "runs/search_digits", max_trainings=3)

1. **Reference.** The config with every defence off is trained once (DIR/runs/reference):
   the undefended encoder of the paper's DNN baseline, `REFERENCE_OVERRIDES` (lambda = 1.0,
   no release noise, no bottleneck, no compactness, no extra decoders). Its validation
   accuracy is what the budget is measured from: a candidate qualifies when its
   validation accuracy >= reference - max_accuracy_drop.
2. **Validation split.** Carved from the TRAINING split, never the test split: of the
   first L training examples (L = `data.train_limit`, or all), the last
   round(val_fraction * L) are held out and every training (reference and candidates)
   runs on the first L - n_val, by setting `data.train_limit` to that. Datasets whose
   training split is stored in a meaningful order (e.g. by subject) get an out-of-order
   hold-out: conservative, not optimistic.
3. **Search.** Bisection on the knob, which assumes accuracy falls monotonically as the
   knob gets more private (`KNOBS` says which direction that is: more `model.feature_noise`,
   less `ran.lam`, less `ran.target_psnr`). The ends are assumed (the least private end
   qualifies, the most private does not) and not trained: every training goes to an
   untried point inside the bracket (after sigma 1 and 0.5 fail, 0.25 next, never the
   least private end; that end is trained only once the bracket is `resolution` narrow,
   nothing qualified, and it is not the undefended reference itself). At
   most `max_trainings` candidates are trained (plus the reference), and the bisection
   stops once the bracket is `resolution` of the interval wide (1/16). Each candidate is
   scored on the validation split by the fast attackers (ridge + a capped MLP decoder by
   default) through `ran_jax.privacy.methods.attack_trained`, so its accuracy is the
   deployed service classifier's on the released (noisy) features.
4. **Confirmation.** The chosen candidate (the most private one that qualified) and the
   reference are attacked with the attackers of `--preset` (as `ran-attack`: 'light' by
   default; 'strong' adds the residual decoder and longer fits, what published figures
   use) on the test split, which the search never looked at; the report gives both scores.
5. **Outputs.** DIR/search_state.json (every candidate: knob value, accuracy, attack
   result), DIR/chosen/config.json and DIR/chosen/export (a relative link to the chosen
   run's export; a copy of it where links cannot be made, as on Cloud Storage:
   `ran_jax.export.load_trained('DIR/chosen')` loads it), DIR/report.md with
   DIR/front.png and DIR/reconstructions.png. DIR may be local or gs://.

Objective (`--objective`): 'reconstruction' (the default, steps 1-5 above: the most private
qualifying position is chosen) or 'identity' (needs an attribute: `--attribute`, default
the config's data.attribute): every run is also
attacked for the attribute (`fast_identity_config`: logreg + kNN, one seed; one release, the
clean features and N releases of one person) on the attribute split's VALIDATION part, from
training-split examples only (`identity.IdentityConfig.scored_part`), and the qualifying
candidate with the lowest worst case of those three top-1 figures is chosen (ties: the more
private one). The reference and the chosen run then get the full identity attack on the
test part (DIR/confirm/<name>/identity.json), reported with chance, and DIR/front_identity.png.
The knobs `ran.attribute_weight`, `ran.entangle`, `ran.hsic` and `ran.compactness` serve it
(more is more private).

Resumable: the next candidate is a pure function of the finished ones, so a killed
search rerun with the same command continues where it stopped; a run with an export is
not retrained, an interrupted training resumes from its checkpoint, a scored point
(DIR/points/<name>/result.json, and identity.json) is not rescored. A larger
--max_trainings or another --max_accuracy_drop on a rerun reuses every finished candidate.

Exit codes: 0 a setting was chosen; 2 bad arguments or config (like ran-train); 3 no
candidate stayed within the budget (the report says so).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from typing import Callable, Optional, Sequence

import numpy as np

from ran_jax import config_lib, storage
# The knobs and the bisection (pure), and the report written from the saved state, are
# modules of their own; their names stay importable from here.
from ran_jax.search_space import (KNOBS, OBJECTIVES, Knob, knob_name,  # noqa: F401
                                 knob_value, next_position)
from ran_jax.search_report import front_figure, write_report  # noqa: F401

log = logging.getLogger("ran_jax")

STATE_FILE = "search_state.json"
STATE_VERSION = 1
NO_CHOICE_EXIT = 3

# The undefended encoder the budget is measured from (the paper's DNN: O_a = CE).
REFERENCE_OVERRIDES = {"ran.lam": 1.0, "model.feature_noise": 0.0, "model.bottleneck_dim": 0,
                       "ran.compactness": 0.0, "ran.extra_decoders": ()}


IDENTITY_FILE = "identity.json"


def reference_overrides(config) -> dict:
  """REFERENCE_OVERRIDES, plus the attribute game and the attribute penalties off when the
  config has them."""
  out = dict(REFERENCE_OVERRIDES)
  for field in ("attribute_weight", "entangle", "hsic"):
    if float(config.ran.get(field, 0.0) or 0.0) > 0:
      out[f"ran.{field}"] = 0.0
  return out


class SearchError(ValueError):
  """Bad search arguments, or a workdir holding another search; the message says which."""


# ---------------------------------------------------------------- arguments


def check_args(config, knob: str, low: Optional[float], high: Optional[float],
               max_accuracy_drop: float, max_trainings: int, val_fraction: float,
               resolution: float = 0.0, objective: str = "reconstruction"):
  """Validates the search arguments (and the config) before any data is loaded.

  Returns (low, high) with the knob's defaults filled in. Raises SearchError, or
  ConfigError for a config or knob value the library refuses.
  """
  from ran_jax import sweep
  from ran_jax.config_lib import validate_config

  if knob not in KNOBS:
    raise SearchError(f"--knob={knob!r}: unknown knob; allowed: {sorted(KNOBS)}.")
  spec = KNOBS[knob]
  low = spec.low if low is None else float(low)
  high = spec.high if high is None else float(high)
  problems = []
  if objective not in OBJECTIVES:
    problems.append(f"--objective={objective!r}: allowed: {list(OBJECTIVES)}.")
  elif objective == "identity" and not config.data.get("attribute", ""):
    problems.append("--objective=identity needs a sensitive attribute in the data: pass "
                    "--attribute (e.g. --attribute=subject for uci_har, speaker for "
                    "spoken_digit).")
  if not (math.isfinite(max_accuracy_drop) and max_accuracy_drop >= 0):
    problems.append(f"--max_accuracy_drop={max_accuracy_drop}: the budget must be a finite "
                    "accuracy drop >= 0 (e.g. 0.005 for half a point).")
  if not (math.isfinite(low) and math.isfinite(high) and low < high):
    problems.append(f"--low={low:g} --high={high:g}: need finite bounds with low < high.")
  if max_trainings < 1:
    problems.append(f"--max_trainings={max_trainings}: at least 1 candidate training.")
  if not 0 <= resolution < 1:
    problems.append(f"--resolution={resolution}: a fraction in [0, 1) of the knob's interval.")
  if not 0 < val_fraction < 1:
    problems.append(f"--val_fraction={val_fraction}: a fraction in (0, 1) of the training split.")
  if knob == "ran.target_psnr":
    if low <= 0:
      problems.append(f"--low={low:g}: ran.target_psnr bounds must be > 0 dB (0 switches the "
                      "target off).")
    if float(config.ran.lam) >= 1.0:
      problems.append("--knob=ran.target_psnr has no effect at ran.lam=1.0 (there is no "
                      "reconstruction term to cap); set --config.ran.lam below 1.")
  if problems:
    raise SearchError("Invalid search arguments:\n  - " + "\n  - ".join(problems))
  validate_config(config)
  for value in (low, high):   # the library's own range rules for the knob's field
    validate_config(sweep.apply_overrides(config, {knob: value}))
  return low, high


# ---------------------------------------------------------------- data


class _Rows:
  """Rows `indices` of a random-access split, itself random access (a view, no copy)."""

  def __init__(self, split, indices):
    self.split, self.indices = split, np.asarray(indices)

  def __len__(self) -> int:
    return len(self.indices)

  def get(self, indices) -> dict:
    return self.split.get(self.indices[np.asarray(indices)])


def split_sizes(config, n_train: int, val_fraction: float) -> tuple[int, int]:
  """(examples trained on, examples held out) of the first L training examples."""
  limit = int(config.data.get("train_limit", 0) or 0)
  total = min(limit, n_train) if limit > 0 else n_train
  n_val = max(1, int(round(val_fraction * total)))
  if total - n_val < 1:
    raise SearchError(f"--val_fraction={val_fraction} leaves no training examples of {total}.")
  return total - n_val, n_val


def validation_source(source, n_fit: int, n_val: int):
  """The DataSource the search scores on: train = first n_fit, 'test' = the held-out rows."""
  return dataclasses.replace(source, train=_Rows(source.train, np.arange(n_fit)),
                             test=_Rows(source.train, np.arange(n_fit, n_fit + n_val)))


# ---------------------------------------------------------------- files


def _write_atomic(path: str, text: str) -> None:
  """Writes a whole text file (local: a temporary file and a rename; gs://: one upload)."""
  storage.write_text(path, text)


def _write_json(path: str, obj) -> None:
  _write_atomic(path, json.dumps(obj, indent=2, default=float) + "\n")


def _config_json(config) -> dict:
  return json.loads(config.to_json_best_effort())


def _summary(result: dict) -> dict:
  """What the state keeps of one attack result (the full one is in points/<name>/)."""
  keep = ("mse_sum", "mse_mean", "psnr", "ssim", "epochs", "converged")
  out = {"accuracy": result.get("accuracy"),
         "attackers": {a: {k: m[k] for k in keep if k in m}
                       for a, m in result.get("attackers", {}).items()},
         "worst": result.get("worst", {}),
         "label_only_mse_sum": result.get("reference", {}).get("label_only", {}).get("mse_sum"),
         "value_range": result.get("value_range", [0.0, 1.0])}
  if "accuracy_retrained" in result:
    out["accuracy_retrained"] = result["accuracy_retrained"]
  if "fisher_bound" in result:
    out["fisher_bound_mse_sum"] = result["fisher_bound"].get("mse_sum")
  return out


def run_name(knob: str, value: float) -> str:
  return f"{knob.rsplit('.', 1)[-1]}{value:.6g}"


# ---------------------------------------------------------------- the search


def default_evaluate(workdir: str, data, cfg, name: str):
  """Attacks the exported encoder of `workdir` (`methods.attack_trained`)."""
  from ran_jax import export
  from ran_jax.privacy import methods

  return methods.attack_trained(export.load_trained(workdir), data, cfg, name=name)


def fast_attack_config(attackers=("ridge", "mlp_decoder"), max_epochs: int = 10,
                       patience: int = 2, seed: int = 0, attack_train_limit: int = 0, **kw):
  """The attackers that score every candidate: cheap, capped fits, no retrained classifier."""
  from ran_jax.privacy import attackers as atk
  from ran_jax.privacy import protocol

  fit = atk.FitConfig(max_epochs=max_epochs, patience=patience, seed=seed)
  return protocol.AttackConfig(attackers=tuple(attackers), attacker_fit=fit, classifier_fit=fit,
                               retrain_classifier=False, attack_train_limit=attack_train_limit,
                               seed=seed, **kw)


def fast_identity_config(attackers=("logreg", "knn"), seeds=(0,), person_releases: int = 10,
                         person_groups: int = 200, max_epochs: int = 30, patience: int = 3,
                         seed: int = 0, budget: str = ""):
  """The attribute attackers that score every candidate (--objective=identity): one seed,
  one release + the clean features + `person_releases` releases of one person, on the
  validation part of the training split (`IdentityConfig.scored_part`).

  budget '' (the default): cheap fits of `attackers`, no search. budget 'light' or
  'thorough': the attackers *searched* under that declared budget (`ran_jax.privacy.budget`:
  families, noise draws, capacities, calibrated aggregation and the set attacker), so the
  defence is tuned against the attacker its figures are published with; `attackers`,
  `max_epochs` and `patience` are then the budget's."""
  from ran_jax.privacy import attackers as atk
  from ran_jax.privacy import budget as budget_lib
  from ran_jax.privacy import identity

  if budget:
    return identity.IdentityConfig.from_budget(
        budget_lib.get_budget(budget), seeds=tuple(seeds), releases=(), clean=True, raw=False,
        person_releases=person_releases, person_groups=person_groups, bootstrap=200,
        seed=seed, scored_part="validation")
  fit = atk.FitConfig(batch_size=128, max_epochs=max_epochs, patience=patience, seed=seed)
  return identity.IdentityConfig(attackers=tuple(attackers), seeds=tuple(seeds), releases=(),
                                 clean=True, raw=False, person_releases=person_releases,
                                 person_groups=person_groups, bootstrap=200, fit=fit, seed=seed,
                                 scored_part="validation")


def default_identity(workdir: str, source, cfg, name: str) -> dict:
  """The attribute attacks on the exported encoder of `workdir` (`identity.attack_identity`)."""
  from ran_jax import export
  from ran_jax.privacy import identity

  del name
  return identity.attack_identity(export.load_trained(workdir), source, cfg)


def _identity_summary(result: dict) -> dict:
  """What the state keeps of one identity result (the full one is in .../identity.json)."""
  from ran_jax.privacy import identity

  out = identity.headline(result)
  out["attackers"] = {k: v["worst"]["attacker"] for k, v in result["settings"].items()}
  out["ci95"] = {k: v["worst"]["ci95"] for k, v in result["settings"].items()}
  out["scored_part"] = result.get("split", {}).get("scored_part", "test")
  out["n_scored"] = result.get("split", {}).get("n_test")
  out["scored_values"] = result.get("split", {}).get("test_values")
  return out


def _identity_point(directory: str, compute: Callable) -> dict:
  """DIRECTORY/identity.json, computed (and written) unless it is there: resumable."""
  path = os.path.join(directory, IDENTITY_FILE)
  if storage.exists(path):
    return json.loads(storage.read_text(path))
  t0 = time.perf_counter()
  result = compute()
  result["eval_seconds"] = time.perf_counter() - t0
  storage.makedirs(directory)
  _write_json(path, result)
  return result


def run_search(config, workdir: str, *, knob: str = "model.feature_noise",
               low: Optional[float] = None, high: Optional[float] = None,
               max_accuracy_drop: float = 0.005, max_trainings: int = 6,
               resolution: float = 1 / 16, val_fraction: float = 0.1, fast_cfg=None, full_cfg=None,
               train_fn: Optional[Callable] = None, evaluate_fn: Callable = default_evaluate,
               config_name: str = "", command: str = "", objective: str = "reconstruction",
               identity_fast_cfg=None, identity_full_cfg=None,
               identity_fn: Callable = default_identity, progress: bool = False) -> dict:
  """Runs (or resumes) the search in `workdir`; returns the final state (see module doc):
  the engine of `search`, with the attack settings as configs and the training and
  evaluation replaceable (tests).

  objective='identity' also scores every candidate with `identity_fn` (the attribute
  attacks, `identity_fast_cfg`, on the validation part of the training split) and chooses
  the qualifying candidate whose worst identity top-1 is lowest; the reference and the
  chosen one are confirmed with `identity_full_cfg` on the attack's test part.
  """
  from ran_jax import input_pipeline, sweep
  from ran_jax import train as train_job
  from ran_jax.privacy import protocol

  train_fn = train_fn or train_job.train_and_deploy
  knob = knob_name(knob)
  low, high = check_args(config, knob, low, high, max_accuracy_drop, max_trainings, val_fraction,
                         resolution, objective)
  by_identity = objective == "identity"
  if by_identity:
    from ran_jax.privacy import identity

    identity_fast_cfg = identity_fast_cfg or fast_identity_config()
    identity_full_cfg = identity_full_cfg or identity.IdentityConfig()
    if identity_fast_cfg.scored_part != "validation" or identity_full_cfg.scored_part != "test":
      raise SearchError("the identity attacks that choose must score the validation part, the "
                        "confirmation the test part (IdentityConfig.scored_part).")
  ref_overrides = reference_overrides(config)
  fast_cfg = fast_cfg or fast_attack_config()
  full_cfg = full_cfg or protocol.AttackConfig()
  storage.makedirs(workdir)

  source = input_pipeline.load_dataset(config.data)
  n_fit, n_val = split_sizes(config, len(source.train), val_fraction)
  base = sweep.apply_overrides(config, {"data.train_limit": n_fit})
  search = {"config": _config_json(config), "config_name": config_name, "knob": knob,
            "more_private": KNOBS[knob].more_private, "low": low, "high": high,
            "val_fraction": val_fraction, "n_fit": n_fit, "n_val": n_val,
            "fast_eval": fast_cfg.to_dict(), "reference_overrides": ref_overrides}
  if by_identity:   # only then: a reconstruction search's state stays as it was
    search.update(objective=objective, identity_fast_eval=identity_fast_cfg.to_dict())
  search = json.loads(json.dumps(search, default=float))   # as it reads back from the file
  state_path = os.path.join(workdir, STATE_FILE)
  state = _load_state(state_path, search)
  state["budget"] = {"max_accuracy_drop": max_accuracy_drop, "max_trainings": max_trainings,
                     "resolution": resolution}
  state["confirm_eval"] = {"attackers": list(full_cfg.attackers),
                           "max_epochs": full_cfg.attacker_fit.max_epochs}
  state["command"] = command or state.get("command", "")

  val_data = None

  def score(name: str, overrides: dict, entry: dict) -> dict:
    """Trains (unless exported) and scores one run on the validation split."""
    nonlocal val_data
    if name != "reference" and (_config_json(sweep.apply_overrides(base, overrides))
                                == _config_json(sweep.apply_overrides(base, ref_overrides))):
      name = "reference"   # this candidate is the reference's config: reuse its run
      entry["same_as_reference"] = True
    run_dir = os.path.join(workdir, "runs", name)
    pdir = os.path.join(workdir, "points", name)
    result, _ = protocol.load(pdir)
    if result is None:
      t_train = sweep.train_point(base, overrides, run_dir, train_fn)
      if val_data is None:
        val_data = protocol.prepare_data(validation_source(source, n_fit, n_val), fast_cfg)
      t0 = time.perf_counter()
      result, art = evaluate_fn(run_dir, val_data, fast_cfg, name)
      result.update(train_seconds=t_train, eval_seconds=time.perf_counter() - t0)
      protocol.save(pdir, result, art)
    entry.update(run=os.path.join("runs", name), point=os.path.join("points", name),
                 train_seconds=result.get("train_seconds", 0.0), **_summary(result))
    if by_identity:
      def attack():
        sweep.train_point(base, overrides, run_dir, train_fn)   # no-op once exported
        return identity_fn(run_dir, source, identity_fast_cfg, name)

      entry["identity"] = _identity_summary(_identity_point(pdir, attack))
    return entry

  from ran_jax import progress as job_progress

  # On a terminal only: in a log file the bar's carriage returns would glue onto the lines.
  bar = job_progress.open_bar(1 + max_trainings, desc="ran-search", unit="training",
                              enabled=None if progress else False)

  # ------------------------------------------------------------ reference
  bar.set_postfix_str("reference")
  if state.get("reference") is None:
    log.info("=== search: reference (every defence off)")
    state["reference"] = score("reference", ref_overrides, {})
    _write_json(state_path, state)
  bar.update()
  ref_acc = float(state["reference"]["accuracy"])
  threshold = ref_acc - max_accuracy_drop
  state["threshold"] = threshold

  # ------------------------------------------------------------ bisection
  by_t = {c["t"]: c for c in state["candidates"]}
  end_is_reference = (_config_json(sweep.apply_overrides(base, {knob: knob_value(0.0, knob, low,
                                                                               high)}))
                      == _config_json(sweep.apply_overrides(base, ref_overrides)))
  while True:
    tested = {t: float(c["accuracy"]) >= threshold - 1e-12 for t, c in by_t.items()}
    t = next_position(tested, max_trainings, resolution, end_is_reference)
    if t is None:
      break
    value = knob_value(t, knob, low, high)
    name = run_name(knob, value)
    log.info("=== search: candidate %d/%d %s=%g (position %g)", len(by_t) + 1, max_trainings,
             knob, value, t)
    bar.set_postfix_str(f"{knob}={value:g}")
    by_t[t] = score(name, {knob: value}, {"t": t, "value": value})
    state["candidates"] = sorted(by_t.values(), key=lambda c: c["t"])
    _write_json(state_path, state)
    bar.update()
  bar.close()
  for c in state["candidates"]:
    c["within_budget"] = bool(float(c["accuracy"]) >= threshold - 1e-12)
  ok = [c for c in state["candidates"] if c["within_budget"]]
  chosen = max(ok, key=lambda c: c["t"]) if ok else None
  if by_identity and ok:   # the least identity leakage; ties: the more private position
    chosen = min(ok, key=lambda c: (c["identity"]["worst"], -c["t"]))
  state["chosen"] = None if chosen is None else {"t": chosen["t"], "value": chosen["value"],
                                                 "run": chosen["run"]}
  state["trainings"] = {"reference": 1, "max_candidates": max_trainings,
                        "candidates": sum(not c.get("same_as_reference")
                                          for c in state["candidates"])}
  _write_json(state_path, state)

  # ------------------------------------------------------------ confirmation
  confirm = {}
  test_data = None
  for key, entry in (("reference", state["reference"]), ("chosen", chosen)):
    if entry is None:
      continue
    name = os.path.basename(entry["run"])
    cdir = os.path.join(workdir, "confirm", name)
    result, art = protocol.load(cdir)
    if result is None:
      if test_data is None:
        test_data = protocol.prepare_data(source, full_cfg)
      log.info("=== search: confirming %s with %s", name, ", ".join(full_cfg.attackers))
      t0 = time.perf_counter()
      result, art = evaluate_fn(os.path.join(workdir, entry["run"]), test_data, full_cfg, name)
      result.update(eval_seconds=time.perf_counter() - t0, eval_config=full_cfg.to_dict())
      protocol.save(cdir, result, art)
    confirm[key] = {"name": name, **_summary(result)}
    confirm[key + "_art"] = art
    if by_identity:
      run_dir = os.path.join(workdir, entry["run"])
      log.info("=== search: identity of %s (full attack, test part)", name)
      confirm[key]["identity"] = _identity_summary(_identity_point(
          cdir, lambda r=run_dir, n=name: identity_fn(r, source, identity_full_cfg, n)))
  state["confirm"] = {k: v for k, v in confirm.items() if not k.endswith("_art")}
  if chosen is not None:
    _write_chosen(workdir, base, knob, chosen)
  state["status"] = "done"
  _write_json(state_path, state)
  write_report(workdir, state, confirm)
  return state


def _load_state(path: str, search: dict) -> dict:
  if not storage.exists(path):
    return {"version": STATE_VERSION, "search": search, "reference": None, "candidates": []}
  state = json.loads(storage.read_text(path))
  old = state.get("search", {})
  diff = sorted(k for k in set(old) | set(search) if old.get(k) != search.get(k))
  if diff:
    raise SearchError(f"{os.path.dirname(path)} holds a search with other settings (differs in "
                      f"{diff}); rerun with the same config and --knob/--low/--high/"
                      "--val_fraction/fast-attacker flags to resume it, or use a new --workdir.")
  return state


def _write_chosen(workdir: str, base, knob: str, chosen: dict) -> None:
  """DIR/chosen/config.json (what the chosen encoder was trained with) and its export."""
  from ran_jax import sweep

  out = os.path.join(workdir, "chosen")
  storage.makedirs(out)
  cfg = sweep.apply_overrides(base, {knob: chosen["value"]})
  _write_atomic(os.path.join(out, "config.json"), cfg.to_json_best_effort(indent=2) + "\n")
  link = os.path.join(out, "export")
  if storage.is_remote(workdir):
    # Cloud Storage has no symbolic links: chosen/export is a copy of the chosen run's
    # export (replacing an earlier choice's), so that load_trained('DIR/chosen') still
    # loads it. A copy made for this run already is kept.
    made_from = os.path.join(out, "export_of.txt")
    if storage.exists(made_from) and storage.read_text(made_from) == chosen["run"]:
      return
    storage.rmtree(link)
    storage.copytree(os.path.join(workdir, chosen["run"], "export"), link)
    storage.write_text(made_from, chosen["run"])
    return
  target = os.path.join("..", chosen["run"], "export")
  if os.path.islink(link) or os.path.exists(link):
    if os.path.islink(link) and os.readlink(link) == target:
      return
    if os.path.isdir(link) and not os.path.islink(link):
      import shutil

      shutil.rmtree(link)
    else:
      os.remove(link)
  try:
    os.symlink(target, link)
  except OSError:   # no symlinks here: a copy
    import shutil

    shutil.copytree(os.path.join(workdir, chosen["run"], "export"), link)


def search(config, workdir: str, *, knob: str = "model.feature_noise",
           low: Optional[float] = None, high: Optional[float] = None,
           max_accuracy_drop: float = 0.005, max_trainings: int = 6, resolution: float = 1 / 16,
           val_fraction: float = 0.1, objective: str = "reconstruction",
           attribute: Optional[str] = None,
           fast_attackers: Sequence[str] = ("ridge", "mlp_decoder"), fast_max_epochs: int = 10,
           fast_identity_attackers: Sequence[str] = ("logreg", "knn"),
           fast_identity_budget: str = "", progress: bool = True,
           command: str = "", config_name: str = "", **attack_options) -> dict:
  """The most private setting of one privacy knob within an accuracy budget.

  Trains the undefended reference, then bisects the knob (at most `max_trainings`
  candidates), scoring each on a validation split carved from the training split, and
  confirms the chosen one and the reference on the test split (see the module doc).

  Args:
    config: a ConfigDict or a config spec ("digits_lenet", "configs/x.py:smoke").
    workdir: the search directory (runs/, points/, search_state.json, report.md, chosen/);
      a rerun resumes.
    knob: the privacy knob, from `KNOBS` (e.g. 'model.feature_noise', 'ran.lam').
    low, high: the knob's interval (default per knob).
    max_accuracy_drop: the budget: validation accuracy >= reference - this.
    max_trainings: candidate trainings at most (plus the reference).
    resolution: stop once the bracket is this fraction of the interval (0: never).
    val_fraction: held-out fraction of the training split.
    objective: 'reconstruction' (the most private qualifying point) or 'identity' (the
      qualifying point with the least attribute leakage; needs an attribute).
    attribute: the sensitive attribute (None: the config's data.attribute; '': none).
    fast_attackers, fast_max_epochs: the attackers scoring every candidate.
    fast_identity_attackers: the attribute attackers scoring every candidate (identity).
    fast_identity_budget: '' (those cheap fits) or an attacker budget ('light', 'thorough'):
      every candidate is then scored by the attackers searched under it, on validation.
    progress: a progress bar over the trainings, with an ETA, on stderr.
    command, config_name: the command line and the config's name, for the report.
    **attack_options: the confirmation's attackers, as `ran_jax.attack` takes them:
      preset ('light' by default, or 'strong'), attackers, attack_max_epochs,
      attacker_seed (also the fast attackers' seed), attack_train_limit, test_limit,
      patience, resnet_width, identity_attackers, identity_seeds, releases,
      person_releases, person_groups.

  Returns:
    The final state (WORKDIR/search_state.json): 'reference', 'candidates' (each with its
    knob value, validation accuracy and attack summary), 'chosen' ({'t', 'value', 'run'}
    or None when nothing qualifies), 'confirm', 'threshold', 'trainings'.

  Raises:
    SearchError, ran_jax.config_lib.ConfigError: bad arguments or config.
  """
  from ran_jax import attack, configs
  from ran_jax import progress as job_progress
  from ran_jax.privacy import identity, protocol

  job_progress.ensure_logging()   # INFO lines on stderr, unless the caller configured logging
  if isinstance(config, str):
    config = configs.get_config(config)
  if attribute is not None:
    config = config.copy_and_resolve_references()
    config.data.attribute = attribute
  unknown = sorted(set(attack_options) - set(_ATTACK_OPTIONS))
  if unknown:
    raise TypeError(f"search() got unexpected keyword arguments {unknown}.")
  bad = sorted(set(fast_attackers) - set(protocol.ATTACKERS))
  if bad or not fast_attackers:
    raise SearchError(f"fast_attackers: unknown {bad}; allowed: {list(protocol.ATTACKERS)}.")
  bad = sorted(set(fast_identity_attackers) - set(identity.FAMILIES))
  if bad or not fast_identity_attackers:
    raise SearchError(f"fast_identity_attackers: unknown {bad}; allowed: "
                      f"{list(identity.FAMILIES)}.")
  if fast_identity_budget:
    from ran_jax.privacy import budget as budget_lib

    try:
      budget_lib.get_budget(fast_identity_budget)
    except ValueError:
      raise SearchError(f"fast_identity_budget={fast_identity_budget!r}: allowed: '' (the "
                        f"cheap fits of fast_identity_attackers) or "
                        f"{sorted(budget_lib.BUDGETS)}.") from None
  seed = int(attack_options.get("attacker_seed", 0))
  full = attack.attack_config(**attack_options)
  identity_full = attack.identity_config(**attack_options)
  fast = fast_attack_config(tuple(fast_attackers), fast_max_epochs, seed=seed,
                            attack_train_limit=int(attack_options.get("attack_train_limit", 0)))
  identity_fast = fast_identity_config(tuple(fast_identity_attackers),
                                       person_releases=identity_full.person_releases, seed=seed,
                                       budget=fast_identity_budget)
  return run_search(config, workdir, knob=knob, low=low, high=high,
                    max_accuracy_drop=max_accuracy_drop, max_trainings=max_trainings,
                    resolution=resolution, val_fraction=val_fraction, fast_cfg=fast,
                    full_cfg=full, config_name=config_name,
                    command=command, objective=objective, identity_fast_cfg=identity_fast,
                    identity_full_cfg=identity_full, progress=progress)


_ATTACK_OPTIONS = ("preset", "attackers", "attack_max_epochs", "attack_train_limit",
                   "test_limit", "patience", "resnet_width", "attacker_seed",
                   "identity_attackers", "identity_seeds", "releases", "person_releases",
                   "person_groups")


# ---------------------------------------------------------------- CLI


def define_flags():
  """The command's flags (defined when it runs, so importing this module defines none)."""
  from absl import flags

  from ran_jax import commands, configs

  configs.define_config_flag("config")
  flags.DEFINE_string("workdir", None, "Search directory (runs/, points/, state, report).")
  flags.DEFINE_float("max_accuracy_drop", 0.005, "Accuracy budget below the reference.")
  flags.DEFINE_string("knob", "model.feature_noise", f"Privacy knob: {sorted(KNOBS)}, each also "
                      "spelled as an override is (config.model.feature_noise).")
  flags.DEFINE_float("low", None, "Lower bound of the knob (default per knob).")
  flags.DEFINE_float("high", None, "Upper bound of the knob (default per knob).")
  flags.DEFINE_integer("max_trainings", 6, "Candidate trainings at most (plus the reference).")
  flags.DEFINE_float("resolution", 1 / 16, "Stop once the bracket is this fraction of the "
                     "knob's interval (0: only --max_trainings stops).")
  flags.DEFINE_float("val_fraction", 0.1, "Held-out fraction of the training split.")
  flags.DEFINE_list("fast_attackers", ["ridge", "mlp_decoder"], "Attackers scoring candidates.")
  flags.DEFINE_integer("fast_max_epochs", 10, "Epoch cap of the fast attackers' fits.")
  flags.DEFINE_string("objective", "reconstruction", "What chooses among qualifying "
                      f"candidates: {list(OBJECTIVES)} ('identity' needs an attribute).")
  flags.DEFINE_list("fast_identity_attackers", ["logreg", "knn"],
                    "Attribute attackers scoring candidates (--objective=identity).")
  flags.DEFINE_string("fast_identity_budget", "", "Score candidates (--objective=identity) "
                      "with the attackers searched under this budget ('light', 'thorough') "
                      "instead of the cheap --fast_identity_attackers: slower, and what the "
                      "published figures are measured with.")
  commands.define_attack_flags()     # the confirmation's attackers (--preset)
  commands.define_identity_flags()   # --attribute and the identity confirmation
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv=None):
  from absl import flags

  from ran_jax import commands

  define_flags()
  argv = commands.rename_flags(list(sys.argv if argv is None else argv), commands.RENAMED["search"])

  def run(rest):
    del rest
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    from ran_jax import trainer
    from ran_jax.checkpointing import CheckpointError
    from ran_jax.config_lib import ConfigError
    from ran_jax.input_pipeline import DataError
    from ran_jax.models import ShapeError

    f = flags.FLAGS
    config_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
    try:
      state = search(f.config, f.workdir, knob=f.knob, low=f.low, high=f.high,
                     max_accuracy_drop=f.max_accuracy_drop, max_trainings=f.max_trainings,
                     resolution=f.resolution, val_fraction=f.val_fraction,
                     objective=f.objective, attribute=f.attribute,
                     fast_attackers=tuple(f.fast_attackers), fast_max_epochs=f.fast_max_epochs,
                     fast_identity_attackers=tuple(f.fast_identity_attackers),
                     fast_identity_budget=f.fast_identity_budget,
                     command="ran-search " + " ".join(argv[1:]), config_name=config_arg,
                     **commands.attack_options_from_flags())
    except (SearchError, ConfigError, DataError, ShapeError, CheckpointError,
            trainer.NonFiniteError, ValueError) as e:
      config_lib.exit_with_error(str(e))
    print(f"report: {os.path.join(f.workdir, 'report.md')}")
    if state["chosen"] is None:
      print("no setting within the budget", file=sys.stderr)
      sys.exit(NO_CHOICE_EXIT)
    print(f"chosen {f.knob}={state['chosen']['value']:.6g} -> "
          f"{os.path.join(f.workdir, 'chosen')}")

  commands.run_app(run, __doc__, argv)


run = main   # the command (`ran-search`, `python -m ran_jax.search`), like the others' run()

if __name__ == "__main__":
  main()
else:
  from ran_jax import commands as _commands

  _commands.callable_module(__name__)
