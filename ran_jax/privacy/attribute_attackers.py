"""Attribute attacker families, each searched on the attacker's validation part.

Families (`FAMILIES`):
  logreg       multinomial logistic regression on standardised features (Adam, early
               stopping on validation; refit on fit + validation for the chosen epochs)
  mlp          ReLU MLPs of the budget's capacities (`mlp_hidden`), same fit
  knn          k nearest neighbours, k and the space (standardised or not) chosen on validation
  forest       a random forest (sklearn): trees and minimum leaf size searched
  extra_trees  extremely randomized trees: the same search
  boosting     histogram gradient-boosted trees: boosting rounds searched

The search (`search`) is a grid over each family's settings *and* over the number of noisy
releases drawn per training input (`draws`: an attacker holding the encoder draws as many as
it likes; 1 for a deterministic setting). Every candidate is fitted on the fit part and
scored (top-1) on the validation part; the best is refit on fit + validation. Where the best
value of an ordered axis (draws, capacity) is the grid's largest, its gain over the value
before it is the axis' `edge_gain` (`ran_jax.privacy.budget`): a search still improving at
its edge is not converged.

The person threat (several releases of different inputs of one person):
  calibrated aggregation  per-release probabilities smoothed towards uniform and tempered,
                          p' ~ ((1 - a) p + a / A)^(1 / T), (a, T) chosen on validation
                          groups; the person is the argmax of the summed log p'.
  set attacker            a classifier of pooled statistics of the group (mean, std, min,
                          max of its releases), trained on groups drawn from the fit part
                          (each release with its own noise draw), chosen on validation
                          groups: it uses what per-release classifiers cannot.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from typing import Callable, Sequence

import numpy as np

from ran_jax.models import Classifier
from ran_jax.privacy import attackers as atk
from ran_jax.privacy import budget as budget_lib
from ran_jax.privacy import protocol

log = logging.getLogger("ran_jax")

FAMILIES = ("logreg", "mlp", "knn", "forest", "extra_trees", "boosting")
TREE_FAMILIES = ("forest", "extra_trees")
SMOOTHING = (1e-6, 1e-3, 1e-2, 0.05, 0.2)        # calibration grid: mixing towards uniform
TEMPERATURES = (1.0, 0.5, 2.0, 0.25, 4.0)        # calibration grid (1 first: ties keep it)
LOG_EPS = 1e-6


def grid(value) -> list:
  """An integer option as a grid: 200 -> [200]; (100, 200) -> [100, 200].

  >>> grid(200), grid((100, 200, 400))
  ([200], [100, 200, 400])
  """
  if isinstance(value, (int, np.integer)):
    return [int(value)]
  return [int(v) for v in value]


def _standardise(fit: np.ndarray):
  mu, sd = fit.mean(0), fit.std(0) + 1e-6
  return lambda z: ((z - mu) / sd).astype(np.float32)


def _softmax(logits: np.ndarray) -> np.ndarray:
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def knn_proba(neighbour_ids: np.ndarray, k: int, num_attributes: int) -> np.ndarray:
  """[M, >=k] attribute ids of the nearest neighbours -> [M, A] vote fractions of the first k."""
  m = len(neighbour_ids)
  votes = np.zeros((m, num_attributes))
  np.add.at(votes, (np.repeat(np.arange(m), k), neighbour_ids[:, :k].reshape(-1)), 1.0)
  return votes / k


def _top1(p: np.ndarray, a: np.ndarray) -> float:
  return float((p.argmax(-1) == a).mean())


def _full_proba(model, p: np.ndarray, num_attributes: int) -> np.ndarray:
  """sklearn probabilities over the classes it saw -> one column per attribute value."""
  out = np.zeros((len(p), num_attributes))
  out[:, model.classes_.astype(np.int64)] = p
  return out


@dataclasses.dataclass
class Candidate:
  """One point of a family's grid: its settings and the fit-part model's validation
  probabilities (the chosen one is refit by `fit_chosen`)."""

  settings: dict
  val_top1: float
  val_proba: np.ndarray


def _neural_fit(hidden, z, a, z_val, a_val, num_attributes, fit_cfg, seed, name,
                epochs: int | None = None):
  """An early-stopped fit (epochs None) or one of `epochs` epochs; -> (Fitted, standardise)."""
  std = _standardise(z)
  fcfg = dataclasses.replace(fit_cfg, seed=int(seed))
  if epochs is not None:
    fcfg = dataclasses.replace(fcfg, max_epochs=int(epochs), patience=int(epochs) + 1,
                               lr_decays=0)
  f = atk.fit(Classifier(tuple(hidden), num_attributes), atk.ce_loss, std(z), a, std(z_val),
              a_val, fcfg, name=name)
  return f, std


def _tree_model(family, n, leaf, seed):
  from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

  cls = RandomForestClassifier if family == "forest" else ExtraTreesClassifier
  return cls(int(n), min_samples_leaf=int(leaf), n_jobs=-1, random_state=int(seed))


def _boosting_model(n, seed):
  from sklearn.ensemble import HistGradientBoostingClassifier

  return HistGradientBoostingClassifier(max_iter=int(n), learning_rate=0.1, early_stopping=False,
                                        random_state=int(seed))


def candidates(family: str, z_fit, a_fit, z_val, a_val, num_attributes: int, cfg, seed: int,
               name: str = "") -> list:
  """Every grid point of `family` (IdentityConfig `cfg`'s capacities), fitted on the fit
  part and scored on validation; the order of each capacity axis is the grid's."""
  out = []
  if family in ("logreg", "mlp"):
    for h in ([()] if family == "logreg" else protocol.mlp_grid(cfg.mlp_hidden)):
      f, std = _neural_fit(h, z_fit, a_fit, z_val, a_val, num_attributes, cfg.fit, seed,
                           f"{name}/{'x'.join(map(str, h)) or 'linear'}")
      p = _softmax(f.predict(std(z_val)).astype(np.float64))
      settings = {"epochs": int(max(1, f.best_epoch))}
      if family == "mlp":
        settings["hidden"] = tuple(h)
      out.append(Candidate(settings, _top1(p, a_val), p))
  elif family == "knn":
    from sklearn.neighbors import NearestNeighbors

    ks = sorted(k for k in cfg.knn_ks if k <= len(z_fit)) or [1]
    std = _standardise(z_fit)
    for space, tf in (("standardised", std), ("raw", lambda z: z)):
      ids = NearestNeighbors(n_neighbors=ks[-1]).fit(tf(z_fit)).kneighbors(
          tf(z_val), return_distance=False)
      for k in ks:
        p = knn_proba(a_fit[ids], k, num_attributes)
        out.append(Candidate({"k": int(k), "space": space}, _top1(p, a_val), p))
  elif family in TREE_FAMILIES:
    trees = sorted(grid(cfg.forest_trees))
    for leaf in grid(cfg.forest_min_leaf):
      # one forest of the largest size; the smaller sizes are its first trees
      model = _tree_model(family, trees[-1], leaf, seed).fit(z_fit, a_fit)
      cum = np.cumsum([est.predict_proba(z_val) for est in model.estimators_], axis=0)
      for n in trees:
        p = _full_proba(model, cum[n - 1] / n, num_attributes)
        out.append(Candidate({"trees": n, "min_samples_leaf": int(leaf)}, _top1(p, a_val), p))
  elif family == "boosting":
    rounds = sorted(grid(cfg.boosting_rounds))
    model = _boosting_model(rounds[-1], seed).fit(z_fit, a_fit)
    staged = list(model.staged_predict_proba(z_val))
    for n in rounds:
      p = _full_proba(model, staged[min(n, len(staged)) - 1], num_attributes)
      out.append(Candidate({"rounds": n}, _top1(p, a_val), p))
  else:
    raise ValueError(f"unknown attribute attacker {family!r}; allowed: {list(FAMILIES)}")
  return out


def fit_chosen(family: str, settings: dict, z, a, num_attributes: int, cfg, seed: int,
               z_val, a_val, name: str = "") -> Callable:
  """`family` with the chosen `settings` fitted on (z, a) -> predict_proba [M, A].
  z_val, a_val: only the neural fits' required validation arrays (no early stopping:
  the chosen number of epochs runs)."""
  if family in ("logreg", "mlp"):
    h = () if family == "logreg" else tuple(settings["hidden"])
    f, std = _neural_fit(h, z, a, z_val, a_val, num_attributes, cfg.fit, seed, f"{name}/refit",
                         epochs=settings["epochs"])
    return lambda q: _softmax(f.predict(std(q)).astype(np.float64))
  if family == "knn":
    from sklearn.neighbors import NearestNeighbors

    k = int(min(settings["k"], len(z)))
    tf = _standardise(z) if settings["space"] == "standardised" else (lambda q: q)
    index = NearestNeighbors(n_neighbors=k).fit(tf(z))
    return lambda q: knn_proba(a[index.kneighbors(tf(q), return_distance=False)], k,
                               num_attributes)
  if family in TREE_FAMILIES:
    m = _tree_model(family, settings["trees"], settings["min_samples_leaf"], seed).fit(z, a)
  elif family == "boosting":
    m = _boosting_model(settings["rounds"], seed).fit(z, a)
  else:
    raise ValueError(f"unknown attribute attacker {family!r}; allowed: {list(FAMILIES)}")
  return lambda q: _full_proba(m, m.predict_proba(q), num_attributes)


CAPACITY_AXIS = {"mlp": "hidden", "forest": "trees", "extra_trees": "trees",
                 "boosting": "rounds"}


@dataclasses.dataclass
class Searched:
  """A family's search: the chosen candidate, the grid it was chosen from, edge gains."""

  family: str
  chosen: Candidate
  grid: list          # [settings + val_top1]
  edge_gains: dict    # {'draws': g, 'capacity': g}: gains at the edges of ordered axes

  def describe(self) -> dict:
    return {**self.chosen.settings, "val_top1": self.chosen.val_top1,
            "grid": self.grid, "edge_gains": self.edge_gains}


def _edge(points: list, axis: str, chosen: dict, order: list) -> float:
  """edge_gain along `axis` with the other settings fixed at the chosen ones."""
  others = {k: v for k, v in chosen.items() if k not in (axis, "val_top1", "epochs")}
  scores = []
  for value in order:
    vals = [p["val_top1"] for p in points if p[axis] == value
            and all(p.get(k) == v for k, v in others.items() if k not in ("k", "space"))]
    scores.append(max(vals) if vals else float("nan"))
  scores = [s for s in scores if np.isfinite(s)]
  idx = order.index(chosen[axis])
  return budget_lib.edge_gain(scores, idx) if len(scores) == len(order) else 0.0


def search(family: str, z_draws: Sequence[np.ndarray], a_fit: np.ndarray, z_val: np.ndarray,
           a_val: np.ndarray, num_attributes: int, cfg, seed: int, draws: Sequence[int] = (1,),
           name: str = "") -> Searched:
  """The grid of `family` x noise draws per input, chosen on validation top-1 (ties: the
  first, i.e. the cheaper). z_draws: one [n_fit, d] copy of the fit features per draw
  (len >= max(draws)); a candidate with D draws fits on the first D stacked."""
  draws = sorted(int(d) for d in draws if int(d) <= len(z_draws)) or [1]
  points, best = [], None
  for d in draws:
    z = np.concatenate(list(z_draws[:d]))
    a = np.tile(a_fit, d)
    for c in candidates(family, z, a, z_val, a_val, num_attributes, cfg, seed,
                        name=f"{name}/draws{d}"):
      c.settings = {"draws": d, **c.settings}
      points.append({**c.settings, "val_top1": c.val_top1})
      if best is None or c.val_top1 > best.val_top1:
        best = c
  chosen = {**best.settings, "val_top1": best.val_top1}
  gains = {"draws": _edge(points, "draws", chosen, draws)}
  axis = CAPACITY_AXIS.get(family)
  if axis:   # the grid's order (trees and rounds ascending; MLPs as the budget lists them)
    gains["capacity"] = _edge(points, axis, chosen, list(dict.fromkeys(p[axis] for p in points)))
  for p in points:
    if "hidden" in p:
      p["hidden"] = list(p["hidden"])
  return Searched(family, best, points, gains)


def refit_with(searched: Searched, z_draws: Sequence[np.ndarray], a_fit: np.ndarray,
               z_val_draws: Sequence[np.ndarray], a_val: np.ndarray, num_attributes: int, cfg,
               seed: int, fraction: float = 1.0, name: str = "") -> Callable:
  """The chosen candidate refit on fit + validation (its number of draws of each), or on a
  seeded `fraction` of those rows (the fit-set-size curve). Returns predict_proba."""
  d = int(searched.chosen.settings["draws"])
  z = np.concatenate(list(z_draws[:d]) + list(z_val_draws[:d]))
  a = np.concatenate([np.tile(a_fit, d), np.tile(a_val, d)])
  if fraction < 1.0:
    keep = np.random.default_rng([seed, 21]).permutation(len(z))[:max(2, int(fraction * len(z)))]
    z, a = z[keep], a[keep]
  return fit_chosen(searched.family, searched.chosen.settings, z, a, num_attributes, cfg, seed,
                    z_val_draws[0], a_val, name=name)


# ---------------------------------------------------------------- the person threat


def calibrated_log(p: np.ndarray, smoothing: float, temperature: float) -> np.ndarray:
  """log of ((1 - a) p + a / A)^(1 / T), renormalised over the A values.

  >>> p = np.array([[1.0, 0.0]])
  >>> bool(np.isfinite(calibrated_log(p, 0.1, 1.0)).all())
  True
  """
  a = float(smoothing)
  q = (1.0 - a) * p + a / p.shape[-1]
  logq = np.log(np.maximum(q, 1e-300)) / float(temperature)
  top = logq.max(-1, keepdims=True)
  return logq - top - np.log(np.exp(logq - top).sum(-1, keepdims=True))


def person_top1(logp: np.ndarray, groups: np.ndarray, attribute: np.ndarray) -> np.ndarray:
  """[M, A] per-release log-probabilities, [G, N] groups -> [G] correct (summed log-probs)."""
  if not len(groups):
    return np.zeros(0)
  return (logp[groups].sum(1).argmax(-1) == attribute[groups[:, 0]]).astype(np.float64)


def calibrate(val_p: np.ndarray, val_groups: np.ndarray, a_val: np.ndarray,
              enabled: bool = True) -> dict:
  """(smoothing, temperature) maximising person top-1 on validation groups; without
  calibration (or without groups) the plain floor LOG_EPS at temperature 1."""
  plain = {"smoothing": LOG_EPS, "temperature": 1.0}
  if not len(val_groups):
    return {**plain, "val_person_top1": None}
  plain_score = float(person_top1(calibrated_log(val_p, LOG_EPS, 1.0), val_groups, a_val).mean())
  if not enabled:
    return {**plain, "val_person_top1": plain_score, "val_person_top1_plain": plain_score}
  best = None
  for a, t in itertools.product(SMOOTHING, TEMPERATURES):
    s = float(person_top1(calibrated_log(val_p, a, t), val_groups, a_val).mean())
    if best is None or s > best[0] + 1e-12:
      best = (s, a, t)
  return {"smoothing": best[1], "temperature": best[2], "val_person_top1": best[0],
          "val_person_top1_plain": plain_score}


def pooled(z: np.ndarray, groups: np.ndarray) -> np.ndarray:
  """[M, d] releases, [G, N] groups -> [G, 4 d]: mean, std, min and max over each group."""
  g = z[groups]
  return np.concatenate([g.mean(1), g.std(1), g.min(1), g.max(1)], -1).astype(np.float32)


def training_groups(attribute: np.ndarray, size: int, per_person: int, draws: int,
                    seed) -> tuple[np.ndarray, np.ndarray]:
  """Groups of `size` different examples of one person for the set attacker's fit:
  [G, N] example positions and [G, N] draw indices (each release its own noise draw)."""
  rng = np.random.default_rng(seed)
  rows, which = [], []
  for p in np.unique(attribute):
    idx = np.flatnonzero(attribute == p)
    if len(idx) < size:
      continue
    for _ in range(per_person):
      rows.append(rng.choice(idx, size, replace=False))
      which.append(rng.integers(0, max(1, draws), size))
  if not rows:
    return np.zeros((0, size), np.int64), np.zeros((0, size), np.int64)
  return np.asarray(rows, np.int64), np.asarray(which, np.int64)


SET_FAMILIES = ("extra_trees", "logreg")


@dataclasses.dataclass
class SetAttacker:
  """The chosen set classifier and how it was chosen."""

  family: str
  val_top1: float
  grid: dict
  predict: Callable            # [G, 4 d] pooled -> [G, A] probabilities

  def describe(self) -> dict:
    return {"family": self.family, "val_top1": self.val_top1, "grid": self.grid}


def fit_set_attacker(z_draws: Sequence[np.ndarray], a_fit: np.ndarray, z_val: np.ndarray,
                     a_val: np.ndarray, val_groups: np.ndarray, num_attributes: int, cfg,
                     size: int, per_person: int, seed: int, name: str = "",
                     z_refit: Sequence[np.ndarray] | None = None,
                     a_refit: np.ndarray | None = None, fraction: float = 1.0,
                     family: str | None = None) -> SetAttacker | None:
  """A classifier of pooled group statistics: trained on groups drawn from the fit part
  (each release from its own draw), chosen among SET_FAMILIES on the validation groups,
  refit on groups of fit + validation (`z_refit`, `a_refit`: their draws), or a seeded
  `fraction` of them. `family` given: no choice, that family (refits of a known choice).
  None when no person has `size` examples to draw a training group from."""
  def make_set(zs, att, n_groups, s):
    g, w = training_groups(att, size, n_groups, len(zs), s)
    stacked = np.stack(list(zs))                     # [D, M, d]
    rel = stacked[w, g]                              # [G, N, d]
    feats = np.concatenate([rel.mean(1), rel.std(1), rel.min(1), rel.max(1)], -1)
    return feats.astype(np.float32), att[g[:, 0]]

  def fit_family(fam, x, y):
    if fam == "extra_trees":
      from sklearn.ensemble import ExtraTreesClassifier

      m = ExtraTreesClassifier(int(max(grid(cfg.forest_trees))), n_jobs=-1,
                               random_state=int(seed)).fit(x, y)
      return lambda q: _full_proba(m, m.predict_proba(q), num_attributes)
    std = _standardise(x)
    from sklearn.linear_model import LogisticRegression

    m = LogisticRegression(max_iter=500, C=1.0).fit(std(x), y)
    return lambda q: _full_proba(m, m.predict_proba(std(q)), num_attributes)

  scores = {}
  if family is None:
    x, y = make_set(z_draws, a_fit, per_person, [seed, 31])
    if not len(x):
      return None
    if len(val_groups):
      vx, vy = pooled(z_val, val_groups), a_val[val_groups[:, 0]]
      for fam in SET_FAMILIES:
        scores[fam] = _top1(fit_family(fam, x, y)(vx), vy)
      family = max(SET_FAMILIES, key=lambda f: scores[f])
    else:   # no validation group: the first family, unchosen
      family = SET_FAMILIES[0]
  zs = z_refit if z_refit is not None else z_draws
  att = a_refit if a_refit is not None else a_fit
  x, y = make_set(zs, att, per_person, [seed, 32])
  if not len(x):
    return None
  if fraction < 1.0:
    keep = np.random.default_rng([seed, 33]).permutation(len(x))[:max(2, int(fraction * len(x)))]
    x, y = x[keep], y[keep]
  log.info("%s: set attacker %s (validation %s)", name, family,
           ", ".join(f"{f} {s:.4f}" for f, s in scores.items()) or "given")
  return SetAttacker(family, scores.get(family, float("nan")), scores, fit_family(family, x, y))
