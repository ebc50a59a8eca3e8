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

log = logging.getLogger("ran_jax")

STATE_FILE = "search_state.json"
STATE_VERSION = 1
NO_CHOICE_EXIT = 3

# The undefended encoder the budget is measured from (the paper's DNN: O_a = CE).
REFERENCE_OVERRIDES = {"ran.lam": 1.0, "model.feature_noise": 0.0, "model.bottleneck_dim": 0,
                       "ran.compactness": 0.0, "ran.extra_decoders": ()}


@dataclasses.dataclass(frozen=True)
class Knob:
  """A privacy knob: which way is more private and its default search interval."""

  more_private: str   # 'up' (larger values are more private) or 'down'
  low: float
  high: float
  meaning: str


KNOBS = {
    "model.feature_noise": Knob("up", 0.0, 2.0, "release-noise sigma of the defended encoder "
                                "(features in [-1, 1]); more noise is more private"),
    "ran.lam": Knob("down", 0.0, 1.0, "the paper's RAN lambda; a smaller lambda weighs "
                    "reconstruction error more and is more private"),
    "ran.target_psnr": Knob("down", 5.0, 30.0, "privacy target in dB (needs ran.lam < 1); a "
                            "lower target keeps pushing the decoders' PSNR down, more private"),
    "ran.attribute_weight": Knob("up", 0.0, 8.0, "weight of the attribute game's confusion "
                                 "loss (needs data.attribute); more is more private"),
    "ran.compactness": Knob("up", 0.0, 20.0, "weight of the within-class feature variance "
                            "penalty; more is more private"),
    "ran.entangle": Knob("up", 0.0, 8.0, "weight of the attribute entanglement penalty (needs "
                         "data.attribute); more is more private"),
    "ran.hsic": Knob("up", 0.0, 20.0, "weight of the class-conditional dependence (HSIC) "
                     "penalty (needs data.attribute); more is more private"),
}

# What a candidate is scored by: the reconstruction attackers' worst case (today's search:
# the most private qualifying knob value is chosen), or the identity attack's worst top-1
# (the qualifying candidate with the lowest one is chosen).
OBJECTIVES = ("reconstruction", "identity")
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


def knob_name(knob: str) -> str:
  """A knob as every command spells a config field (`config.ran.lam`, as in `--config.ran.lam`
  and a sweep's `--variant`) or bare (`ran.lam`) -> the bare field name."""
  return knob[len("config."):] if knob.startswith("config.") else knob


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


# ---------------------------------------------------------------- the bisection


def knob_value(t: float, knob: str, low: float, high: float) -> float:
  """Position t in [0, 1] (0: least private end, 1: most private end) -> knob value."""
  up = KNOBS[knob].more_private == "up"
  return low + t * (high - low) if up else high - t * (high - low)


def next_position(tested: dict, max_trainings: int, resolution: float = 0.0,
                  end_is_reference: bool = False) -> Optional[float]:
  """The next position to train, or None when the search is over.

  tested: {position t: within budget (bool)}. Bisection between the most private
  qualifying position (0 when none) and the least private failing one above it (1 when
  none); a pure function of its arguments, so a resumed search repeats it exactly.
  It stops after `max_trainings` positions, or once that bracket is at most `resolution`
  wide (a fraction of the knob's interval): finer steps than the accuracy noise of the
  validation split resolve nothing and cost a training each.

  Every training goes to an untried point inside the bracket: when every candidate so
  far failed, the next one is halfway towards the least private end, never that end
  itself: when it is the undefended reference its outcome is known, and otherwise it can
  at best return the setting without this defence, while an untried point between can
  still qualify. The end (t = 0) is trained only once the
  bracket is narrow and nothing qualified, and never when `end_is_reference` (no other
  defence in the config: t = 0 is the reference, already trained, qualifying by
  definition).
  """
  if len(tested) >= max_trainings:
    return None
  ok = [t for t, good in tested.items() if good]
  lo = max(ok, default=0.0)
  hi = min((t for t, good in tested.items() if not good and t > lo), default=1.0)
  if hi - lo <= resolution + 1e-12:
    # Narrow enough. With nothing qualified yet, the least private end is what is left.
    check_end = not end_is_reference and not ok and tested and 0.0 not in tested
    return 0.0 if check_end else None
  if not ok and 0.0 in tested:
    return None  # even the least private end fails the budget
  t = (lo + hi) / 2
  return None if t in tested else t


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


# ---------------------------------------------------------------- report


def _fmt(v, spec=".4g") -> str:
  return "n/a" if v is None else format(float(v), spec)


def front_figure(state: dict, path: str) -> None:
  """Validation accuracy vs worst-case mse_sum (fast attackers) of every trained point."""
  from ran_jax.privacy import figures   # also selects the Agg backend
  import matplotlib.pyplot as plt

  ref, knob = state["reference"], state["search"]["knob"]
  chosen = state.get("chosen") or {}
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  cands = sorted(state["candidates"], key=lambda c: c["value"])
  for c in cands:
    good = c["within_budget"]
    ax.plot(c["accuracy"], c["worst"]["mse_sum"], "o", color="tab:green" if good else "tab:red",
            ms=7)
    ax.annotate(f"{c['value']:.4g}", (c["accuracy"], c["worst"]["mse_sum"]), fontsize=7,
                xytext=(4, 3), textcoords="offset points")
    if c["t"] == chosen.get("t"):
      ax.plot(c["accuracy"], c["worst"]["mse_sum"], "o", ms=15, mfc="none", color="k",
              label=f"chosen {knob}={c['value']:.4g}")
  ax.plot([], [], "o", color="tab:green", label="within budget")
  ax.plot([], [], "o", color="tab:red", label="over budget")
  ax.plot(ref["accuracy"], ref["worst"]["mse_sum"], "k*", ms=13, label="reference (no defence)")
  ax.axvline(state["threshold"], color="gray", ls="--", lw=1,
             label=f"budget: accuracy >= {state['threshold']:.4f}")
  if ref.get("label_only_mse_sum"):
    ax.axhline(ref["label_only_mse_sum"], color="gray", ls=":", lw=1,
               label="label only (class-mean image)")
  ax.set_yscale("log")
  ax.set_xlabel("validation accuracy (service classifier, held-out training examples)")
  ax.set_ylabel("worst-case reconstruction error (mse_sum)")
  ax.set_title(f"Explored front: {knob} (fast attackers)", fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="best")
  fig.tight_layout()
  figures.save_figure(fig, path, dpi=110)
  plt.close(fig)


def _recon_figure(confirm: dict, path: str) -> bool:
  from ran_jax.privacy import figures

  ref, ch = confirm.get("reference"), confirm.get("chosen")
  if ch is None:
    return False
  ref_art, ch_art = confirm["reference_art"], confirm["chosen_art"]
  rows = [("test input", ch_art["x_show"])]
  for label, res, art in (("reference", ref, ref_art), ("chosen", ch, ch_art)):
    att = res["worst"]["attacker"]
    rows.append((f"{label}\n{att}\nmse {res['worst']['mse_sum']:.3g}", art[f"rec_{att}"]))
  if "rec_own_decoder" in ch_art:
    rows.append(("chosen\nown decoder", ch_art["rec_own_decoder"]))
  figures.recon_grid(rows, path, value_range=tuple(ch["value_range"]),
                     title="Test inputs and their reconstructions by the strongest attacker")
  return True


def _id_cells(i: dict) -> str:
  return " | ".join(_fmt(i.get(k), ".4f") for k in ("single", "clean", "person", "worst"))


def _floor_note(i: dict) -> str:
  """The label-only floor beside chance: the same attackers given only the task label."""
  if i.get("label_only") is None:
    return ""
  person = (f", {_fmt(i.get('label_only_person'), '.4f')} from the labels of the person's "
            "examples" if i.get("label_only_person") is not None else "")
  return (f"; label-only floor (the same attackers given only the task label) "
          f"{i['label_only']:.4f}{person}")


def _values_note(i: dict) -> str:
  """When the scored part holds fewer attribute values than exist (e.g. HAR's training
  subjects only), the chance level among those."""
  k, n = i.get("scored_values"), round(1 / i["chance"])
  return (f" (the scored part holds {k} of the {n} values: 1/{k} = {1 / k:.4f} among them)"
          if k and k < n else "")


def _whole_budget(cfg: dict) -> bool:
  """Whether an identity config (as a dict) runs every family of the budget it names."""
  from ran_jax.privacy import budget as budget_lib

  b = budget_lib.BUDGETS.get(cfg.get("budget", ""))
  return b is not None and set(cfg.get("attackers", ())) >= set(b.identity.families)


def _identity_front_lines(workdir: str, state: dict) -> list:
  """The identity table of the explored front and DIR/front_identity.png."""
  from ran_jax.privacy import figures

  s, ref, chosen = state["search"], state["reference"], state.get("chosen") or {}
  fast = s["identity_fast_eval"]
  pts = [{"label": "reference", "accuracy": ref["accuracy"], "group": "reference (no defence)",
          **ref["identity"]}]
  pts += [{"label": f"{c['value']:.4g}", "accuracy": c["accuracy"], "group": s["knob"],
           "highlight": c["t"] == chosen.get("t"), **c["identity"]}
          for c in sorted(state["candidates"], key=lambda c: c["value"])]
  figures.identity_front(pts, os.path.join(workdir, "front_identity.png"),
                         ref["identity"]["chance"], threshold=state["threshold"],
                         title=f"Explored front: {s['knob']} (identity, validation part)",
                         xlabel="validation accuracy (service classifier)",
                         label_only=ref["identity"].get("label_only"),
                         label_only_person=ref["identity"].get("label_only_person"))
  n_rel = ref["identity"].get("person_releases")
  lines = [
      f"## Identity (attribute `{ref['identity']['attribute']}`): what chose the point", "",
      f"Attribute attackers {', '.join(fast['attackers'])} ({len(fast['seeds'])} seed(s), "
      + (f"every family of the `{fast['budget']}` budget, searched under it, "
         if _whole_budget(fast) else "")
      + "trained after freezing on the releases) scored on the **validation part** of the "
      "attribute split, from training-split examples only (`IdentityConfig.scored_part`): the "
      f"attack's test part is never read to choose. {ref['identity'].get('n_scored')} examples "
      f"scored; chance {ref['identity']['chance']:.4f}" + _values_note(ref["identity"])
      + _floor_note(ref["identity"]) + ". The "
      "chosen point is the qualifying candidate with the lowest worst case of the three "
      "settings.", "",
      f"| {s['knob']} | val. accuracy | one release | clean features | "
      f"{n_rel or 'N'} releases of the person | worst | within budget |",
      "|---|---|---|---|---|---|---|",
      f"| reference (no defence) | {ref['accuracy']:.4f} | {_id_cells(ref['identity'])} | |"]
  for c in sorted(state["candidates"], key=lambda c: c["value"]):
    mark = " **chosen**" if c["t"] == chosen.get("t") else ""
    lines.append(f"| {c['value']:.6g}{mark} | {c['accuracy']:.4f} | {_id_cells(c['identity'])} "
                 f"| {'yes' if c['within_budget'] else 'no'} |")
  return lines + ["", "![identity front](front_identity.png)", ""]


def _identity_confirm_lines(state: dict, confirm: dict) -> list:
  cr, cc = confirm["reference"]["identity"], confirm["chosen"]["identity"]
  n_rel = cc.get("person_releases")
  lines = ["Identity confirmed with the full attribute attack on the attack's **test part** "
           f"({cc.get('n_scored')} examples{_values_note(cc)}; `identity.json` beside each "
           "confirmation):", "",
           f"| | one release (95 % CI) | clean features | {n_rel or 'N'} releases of the "
           "person | worst | chance | label only (one / person) |",
           "|---|---|---|---|---|---|---|"]
  for label, i in (("reference", cr), ("chosen", cc)):
    ci = i["ci95"]["single"]
    lines.append(f"| {label} | {_fmt(i['single'], '.4f')} [{_fmt(ci[0], '.3f')}, "
                 f"{_fmt(ci[1], '.3f')}] | {_fmt(i['clean'], '.4f')} | {_fmt(i['person'], '.4f')} "
                 f"| {_fmt(i['worst'], '.4f')} | {i['chance']:.4f} "
                 f"| {_fmt(i.get('label_only'), '.4f')} / "
                 f"{_fmt(i.get('label_only_person'), '.4f')} |")
  return lines + [""]


def write_report(workdir: str, state: dict, confirm: dict) -> str:
  """DIR/report.md with DIR/front.png and DIR/reconstructions.png; returns the report path."""
  s, ref = state["search"], state["reference"]
  knob, chosen = s["knob"], state.get("chosen")
  drop = state["budget"]["max_accuracy_drop"]
  front_figure(state, os.path.join(workdir, "front.png"))
  has_recon = _recon_figure(confirm, os.path.join(workdir, "reconstructions.png"))
  se = math.sqrt(max(ref["accuracy"] * (1 - ref["accuracy"]), 1e-12) / s["n_val"])
  tr = state["trainings"]
  lines = [
      f"# Budget search: {s['config_name'] or 'config'}, knob `{knob}`", "",
      f"Command: `{state.get('command') or 'python -m ran_jax.search ...'}`", "",
      f"* Knob: `{knob}` in [{s['low']:g}, {s['high']:g}] ({KNOBS[knob].meaning}).",
      f"* Budget: validation accuracy >= reference {ref['accuracy']:.4f} - {drop:g} = "
      f"**{state['threshold']:.4f}**. Validation: the last {s['n_val']} of the "
      f"{s['n_fit'] + s['n_val']} training examples, held out of every training (the test "
      f"split scores only the confirmation below: the choice never reads it, although each "
      f"training logs its own per-epoch test metrics); one standard error of an accuracy "
      f"there is about {se:.4f}.",
      f"* Trainings: **{1 + tr['candidates']}** (1 reference + {tr['candidates']} candidates; "
      f"at most {tr['max_candidates']} candidates"
      + (f", stopping at a bracket of {state['budget']['resolution']:g} of the interval"
         if state.get("budget", {}).get("resolution") else "")
      + ("; a candidate equal to the reference reused its run" if len(state["candidates"])
         > tr["candidates"] else "")
      + "). Bisection assumes accuracy falls monotonically as the knob gets more private.",
      "",
  ]
  noise = 2 * math.sqrt(2) * se   # two standard errors of a difference of two accuracies
  if drop < noise:
    warning = (f"**Warning: the budget ({drop:g}) is below the validation split's resolution**: "
               f"two standard errors of a difference of two accuracies there are {noise:.4f}, "
               "so which candidates pass is decided largely by chance. Hold out more "
               "(--val_fraction), use a larger dataset, or allow a larger budget.")
    log.warning("search: %s", warning.replace("**", ""))
    lines += [warning, ""]
  lines += [
      "## Explored front (validation split, fast attackers: "
      f"{', '.join(s['fast_eval']['attackers'])})", "",
      f"| {knob} | val. accuracy | drop | worst attacker | worst mse_sum | PSNR dB "
      "| within budget |",
      "|---|---|---|---|---|---|---|",
      f"| reference (no defence) | {ref['accuracy']:.4f} | 0 | {ref['worst']['attacker']} | "
      f"{ref['worst']['mse_sum']:.4g} | {ref['worst']['psnr']:.2f} | |",
  ]
  for c in sorted(state["candidates"], key=lambda c: c["value"]):
    mark = " **chosen**" if chosen and c["t"] == chosen["t"] else ""
    lines.append(f"| {c['value']:.6g}{mark} | {c['accuracy']:.4f} | "
                 f"{ref['accuracy'] - c['accuracy']:+.4f} | {c['worst']['attacker']} | "
                 f"{c['worst']['mse_sum']:.4g} | {c['worst']['psnr']:.2f} | "
                 f"{'yes' if c['within_budget'] else 'no'} |")
  lines += ["", "![front](front.png)", ""]
  if s.get("objective") == "identity":
    lines += _identity_front_lines(workdir, state)
  if chosen is None:
    lines += ["## No setting qualifies", "",
              f"No candidate kept validation accuracy >= {state['threshold']:.4f}. Widen the "
              "budget, lower --low / --high, or relax the config's other defences.", ""]
  else:
    cr, cc = confirm["reference"], confirm["chosen"]
    atts = sorted(set(cr["attackers"]) | set(cc["attackers"]))
    lines += [
        f"## Chosen: `{knob}={chosen['value']:.6g}`", "",
        f"Config: `chosen/config.json`; encoder: `chosen/export` "
        f"(`ran_jax.export.load_trained('{os.path.join(workdir, 'chosen')}')`). It was trained "
        f"on {s['n_fit']} examples; to retrain on the whole training split, add "
        f"`--config.{knob}={chosen['value']:.6g}` to the training command.", "",
        "Confirmed on the **test split** by attackers trained after freezing ("
        f"{', '.join(state.get('confirm_eval', {}).get('attackers') or ['the full set'])}; "
        "early-stopped fits"
        + (f", at most {state['confirm_eval']['max_epochs']} epochs"
           if state.get("confirm_eval", {}).get("max_epochs") else "")
        + "):", "",
        "| | test accuracy | retrained classifier | "
        + " | ".join(f"{a} mse_sum" for a in atts) + " | worst mse_sum | worst PSNR | worst SSIM |",
        "|---|---|---|" + "---|" * (len(atts) + 3),
    ]
    for label, r in (("reference", cr), (f"chosen {knob}={chosen['value']:.4g}", cc)):
      cells = [_fmt(r["attackers"].get(a, {}).get("mse_sum")) for a in atts]
      lines.append(f"| {label} | {_fmt(r['accuracy'], '.4f')} | "
                   f"{_fmt(r.get('accuracy_retrained'), '.4f')} | " + " | ".join(cells)
                   + f" | {_fmt(r['worst']['mse_sum'])} ({r['worst']['attacker']}) | "
                   f"{_fmt(r['worst']['psnr'], '.2f')} | {_fmt(r['worst']['ssim'], '.3f')} |")
    ratio = cc["worst"]["mse_sum"] / max(cr["worst"]["mse_sum"], 1e-12)
    label_only = cc.get("label_only_mse_sum")
    of_label = (f", {cc['worst']['mse_sum'] / label_only:.0%} of it: an attacker of the chosen "
                "encoder does about as well as one who knows only the class"
                if label_only and cc["worst"]["mse_sum"] >= 0.9 * label_only else "")
    test_drop = cr["accuracy"] - cc["accuracy"]
    lines += ["",
              f"Worst-case error {ratio:.2f}x the reference's at a test accuracy drop of "
              f"{test_drop:+.4f} (label-only level, the class-mean "
              f"image: {_fmt(label_only)}{of_label}).", ""]
    if test_drop > drop:
      lines += [f"On the test split the chosen point's drop ({test_drop:+.4f}) exceeds the "
                f"budget ({drop:g}); the choice was made on the validation split"
                + (", which cannot resolve this budget (see the warning above)."
                   if drop < noise else "."), ""]
    capped = [f"{a} ({label})" for label, r in (("reference", cr), ("chosen", cc))
              for a, m in sorted(r["attackers"].items()) if m.get("converged") is False]
    if capped:
      lines += [f"Stopped at the epoch cap, not on a plateau (these may be stronger than "
                f"reported; raise --attack_max_epochs): {', '.join(capped)}.", ""]
    if has_recon:
      lines += ["![reconstructions](reconstructions.png)", ""]
    if s.get("objective") == "identity":
      lines += _identity_confirm_lines(state, confirm)
  path = os.path.join(workdir, "report.md")
  _write_atomic(path, "\n".join(lines))
  return path


# ---------------------------------------------------------------- the function


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
