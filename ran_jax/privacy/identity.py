"""Attribute inference: who is behind a release (the paper's re-identification risk).

After training, the encoder is frozen and attackers learn a sensitive attribute
(`data.attribute`: the HAR subject, the FSDD speaker, ...) from what the server
receives, `trained.encode(x, key)`, release noise included. Families:

  logreg  multinomial logistic regression (a linear softmax layer on standardised
          features, Adam, early stopping on the attacker's validation part)
  mlp     one hidden ReLU layer of `mlp_hidden` units, same fit
  knn     k nearest neighbours (Euclidean), k and the space (standardised or not)
          chosen on the validation part
  forest  a random forest (`forest_trees` trees, sklearn), its minimum leaf size chosen on
          the validation part: axis-aligned splits that neither a linear map nor a
          distance sees (on HAR's clean features it names more subjects than kNN)

Each chooses its settings (epochs, k, leaf size) on the validation part and is then refit on fit
+ validation (all the data before the test part: on HAR the windows closest in time to
the test windows, which matters: subjects drift within a session), and each is
trained with several seeds (fresh release noise and initialisation per seed). The
figure is the worst case: the family with the highest mean test top-1 over seeds.

Splits that cannot leak (`split_pool`, from each split's `order`, ran_jax.data.source):
  time       (HAR) the train and test windows pooled (all subjects: the official split
             separates subjects). Within each (subject, activity), windows in time
             order: the first 60 % fit/validate, the last 40 % test; inside the first
             part the last 20 % validate. One window is dropped at each boundary, so no
             two windows on different sides overlap (they overlap by 50 % in a row).
  recording  (FSDD) recordings 0-4 test (the dataset's test split), 5-9 validate, the
             rest fit: every recording is a separate utterance.
  stratified (other data) a seeded split per attribute value: 30 % test, 15 %
             validation, the rest fit. This assumes examples are independent; data with
             several overlapping examples of one recording needs a split of its own.
Eraser part (`eraser_fraction` > 0; `ran_jax.privacy.erasure`, `ran-erase`): examples
reserved for fitting an attribute eraser, which no attacker fits, validates or is tested
on; the attack's parts are cut from the rest by the rules above.
  time       the earliest `eraser_fraction` of each (subject, activity) group's windows in
             time order, one window dropped at the boundary (both official splits: the
             test subjects' earliest windows too, since an eraser removes only people it
             has seen; the task accuracy is then measured on the test split without them).
  recording  a block of round(eraser_fraction x recordings per (digit, speaker)) recordings
             after the validation block: 0.2 of FSDD's 50 is recordings 10-19 (all in the
             training split); the attack fits on 20-49 (choosing: validates on 20-24).
  stratified per attribute value a seeded part (`eraser_seed`) of round(eraser_fraction x
             the value's examples), drawn from its training-split examples only.

Settings, each reported with chance (1/num_attributes), the majority-class rate and a
bootstrap 95 % interval:
  single     one release per input (what one request shows);
  mean_N     the mean of N releases of the same input (a repeated input: averaging
             shrinks the noise by sqrt(N)); attackers fit on N-averaged releases too;
  clean      the features before noise (`trained.features`), the limit N -> infinity;
  raw        the same attackers on the raw input (flattened, PCA to `raw_pca`
             dimensions fitted on the fit part): the reference for leakage.
  leakage relative to raw = (top1 - chance) / (top1_raw - chance).
Label-only floor (`label_only`, beside chance): the same attackers given only the task
label of each example (one-hot; HAR: activity -> subject, FSDD: digit -> speaker), one
release and `person_releases` of one person. No representation that carries the task can
hide what the label itself says about the person, so this, not chance, is the level a
defence can reach; result['label_only'], in the layout of a setting.
Choosing a setting on these attacks (`scored_part='validation'`, used by the search) scores
the validation part instead, one level down: only training-split examples, a new
validation part cut from the fit part by the same rule (time: the last 20 % of each
group's fit windows, one dropped at the boundary; recording: recordings 10-14 validate,
5-9 are scored; stratified: the next 15 % of each value), so that the test part, which
the figure is measured on, never influences a choice.
Person-level (`person`): an attacker holding `person_releases` releases of different
inputs of one person (test part) sums its log-probabilities over them and names the
argmax; top-1 over `person_groups` random groups (seeded), per setting.

`attack_identity(trained, source, cfg)` runs all of it and returns a JSON-able dict.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Sequence

import jax
import numpy as np

from ran_jax import progress
from ran_jax.data.source import DataError
from ran_jax.privacy import attackers as atk
from ran_jax.privacy import attribute_attackers as aa
from ran_jax.privacy import budget as budget_lib

log = logging.getLogger("ran_jax")

FAMILIES = aa.FAMILIES
SET_ATTACKER = "set"   # the person threat's set attacker, beside the families
LOG_EPS = aa.LOG_EPS   # floor of a predicted probability before its log (kNN gives exact zeros)


@dataclasses.dataclass
class IdentityConfig:
  """How attribute attackers are searched, trained and scored (defaults: the `light`
  budget of `ran_jax.privacy.budget`; `from_budget` builds one from a budget)."""

  attackers: Sequence[str] = budget_lib.IdentityBudget.families
  seeds: Sequence[int] = (0, 1, 2)
  releases: Sequence[int] = (4, 16)      # N of the mean_N settings
  clean: bool = True                     # also the clean-feature limit
  raw: bool = True                       # also the raw-input reference
  label_only: bool = True                # also the label-only floor (the task label alone)
  person_releases: int = 10              # releases of one person summed (0: off)
  person_groups: int = 1000
  bootstrap: int = 1000
  # The search (`attribute_attackers.search`), chosen on the validation part of the first
  # seed and refit with every seed: noisy releases per fit input, capacities, leaf sizes.
  draws: Sequence[int] = budget_lib.IdentityBudget.draws
  max_fit_rows: int = budget_lib.IdentityBudget.max_fit_rows
  knn_ks: Sequence[int] = budget_lib.IdentityBudget.knn_ks
  mlp_hidden: Sequence = (256,)          # one MLP, or a grid of them: ((256,), (512, 512))
  forest_trees: Sequence[int] | int = budget_lib.IdentityBudget.trees
  forest_min_leaf: Sequence[int] = budget_lib.IdentityBudget.min_leaf
  boosting_rounds: Sequence[int] = budget_lib.IdentityBudget.boosting_rounds
  calibrate: bool = True                 # person: smoothing + temperature chosen on validation
  set_attacker: bool = True              # person: a classifier of pooled group statistics
  set_groups: int = budget_lib.IdentityBudget.set_groups
  fit_fractions: Sequence[float] = budget_lib.IdentityBudget.fit_fractions
  tolerance: float = 0.005               # convergence: absolute top-1
  budget: str = "light"                  # the declared budget's name, for the record
  fit: atk.FitConfig = dataclasses.field(
      default_factory=lambda: atk.FitConfig(batch_size=128, max_epochs=100, patience=4))
  raw_pca: int = 128
  time_test_fraction: float = 0.4
  time_val_fraction: float = 0.2
  time_gap: int = 1                      # windows dropped at each boundary
  val_recordings: int = 5                # FSDD: recordings 5..9 validate
  strat_test_fraction: float = 0.3
  strat_val_fraction: float = 0.15
  encode_batch: int = 512
  seed: int = 0                          # split (stratified), groups, bootstrap
  # A part reserved for fitting an attribute eraser, never seen by the attackers (module
  # docstring); 0: none. A run that carries an eraser sets both from its fit.
  eraser_fraction: float = 0.0
  eraser_seed: int = 0                   # the stratified rule's eraser part
  # 'test': score the test part (the figure). 'validation': for choosing settings
  # (`ran_jax.search --objective=identity`): only training-split examples, the part
  # scored is the one the 'test' split validates on, and a new validation part is cut
  # from its fit part by the same rule; the 'test' split's test part is never read.
  scored_part: str = "test"

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_budget(cls, budget: budget_lib.Budget, **overrides) -> "IdentityConfig":
    """The config of a declared budget's identity search (`overrides`: other fields)."""
    b = budget.identity
    return cls(**{**dict(attackers=tuple(b.families), draws=tuple(b.draws),
                         max_fit_rows=b.max_fit_rows, knn_ks=tuple(b.knn_ks),
                         mlp_hidden=tuple(b.mlp_hidden), forest_trees=tuple(b.trees),
                         forest_min_leaf=tuple(b.min_leaf),
                         boosting_rounds=tuple(b.boosting_rounds), calibrate=b.calibrate,
                         set_attacker=b.set_attacker, set_groups=b.set_groups,
                         fit_fractions=tuple(b.fit_fractions),
                         tolerance=budget.identity_tolerance, budget=budget.name),
                  **overrides})


# ---------------------------------------------------------------- splits


@dataclasses.dataclass
class Pool:
  """All examples the attack uses, with its fit / val / test index sets."""

  x: np.ndarray           # [N, ...] model inputs
  attribute: np.ndarray   # [N] ids
  label: np.ndarray       # [N]
  fit: np.ndarray
  val: np.ndarray
  test: np.ndarray
  num_attributes: int
  rule: str
  eraser: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
  split: np.ndarray | None = None   # [N] 0: the dataset's training split, 1: its test split


def _time_cut(idx: np.ndarray, second: float, gap: int):
  """Time-ordered indices -> (first part, second part) with `gap` dropped between them."""
  n = len(idx)
  k = int(round((1.0 - second) * n))
  return idx[:k], idx[k + gap:] if k + gap < n else idx[:0]


def split_pool(source, cfg: IdentityConfig) -> Pool:
  """The pooled examples of `source` and a leak-free fit/val/test split (module docstring)."""
  if not source.attribute_name:
    raise DataError(f"Dataset {source.name} carries no attribute: set data.attribute (available: "
                    f"{list(source.available_attributes) or 'none'}).")
  parts = [(s, getattr(source, s)) for s in ("train", "test")]
  b = [sp.get(np.arange(len(sp))) for _, sp in parts]
  x = np.concatenate([bb["image"] for bb in b])
  att = np.concatenate([bb["attribute"] for bb in b]).astype(np.int64)
  lab = np.concatenate([bb["label"] for bb in b]).astype(np.int64)
  order = np.concatenate([np.asarray(sp.order, np.int64) for _, sp in parts])
  which = np.concatenate([np.full(len(sp), i) for i, (_, sp) in enumerate(parts)])
  rule = source.attribute_split
  if cfg.scored_part not in ("test", "validation"):
    raise ValueError(f"scored_part={cfg.scored_part!r}: 'test' or 'validation'")
  choosing = cfg.scored_part == "validation"
  if not 0.0 <= cfg.eraser_fraction < 1.0:
    raise ValueError(f"eraser_fraction={cfg.eraser_fraction}: a fraction in [0, 1) expected")
  erasing = cfg.eraser_fraction > 0
  fit, val, test, eraser = [], [], [], [np.zeros(0, np.int64)]
  if rule == "time":
    for a in np.unique(att):
      for c in np.unique(lab[att == a]):
        g = np.flatnonzero((att == a) & (lab == c))
        g = g[np.lexsort((order[g], which[g]))]  # time order (split, row)
        if erasing:  # the earliest windows fit the eraser, one dropped at the boundary
          er, g = _time_cut(g, 1.0 - cfg.eraser_fraction, cfg.time_gap)
          eraser.append(er)
        first, te = _time_cut(g, cfg.time_test_fraction, cfg.time_gap)
        fi, va = _time_cut(first, cfg.time_val_fraction, cfg.time_gap)
        if choosing:  # score the validation part; cut a new one from the fit part
          te, (fi, va) = va, _time_cut(fi, cfg.time_val_fraction, cfg.time_gap)
        fit.append(fi), val.append(va), test.append(te)
  elif rule == "recording":
    from ran_jax.data.spoken_digit import TEST_RECORDINGS

    # recordings [0, 5) test, [5, 10) validate, the rest fit; choosing: one part later.
    # An eraser block [10, 10 + R) is taken out first; the parts count the rest in order.
    pos = order
    if erasing:
      start = TEST_RECORDINGS + cfg.val_recordings
      size = int(round(cfg.eraser_fraction * (int(order.max()) + 1)))
      in_block = (order >= start) & (order < start + size)
      eraser.append(np.flatnonzero(in_block))
      pos = np.where(order >= start + size, order - size, order)
      pos[in_block] = -1
    cuts = np.cumsum([0, TEST_RECORDINGS, cfg.val_recordings, cfg.val_recordings])[choosing:]
    test.append(np.flatnonzero((pos >= cuts[0]) & (pos < cuts[1])))
    val.append(np.flatnonzero((pos >= cuts[1]) & (pos < cuts[2])))
    fit.append(np.flatnonzero(pos >= cuts[2]))
  elif rule == "stratified":
    rng = np.random.default_rng([cfg.seed, 11])
    er_rng = np.random.default_rng([cfg.eraser_seed, 13])
    for a in np.unique(att):
      g = np.flatnonzero(att == a)
      if erasing:  # a seeded part of the value's training-split examples
        n_er = min(int(round(cfg.eraser_fraction * len(g))), int(np.sum(which[g] == 0)))
        er = er_rng.permutation(g[which[g] == 0])[:n_er]
        eraser.append(er)
        g = np.setdiff1d(g, er)
      g = rng.permutation(g)
      n_te = int(round(cfg.strat_test_fraction * len(g)))
      n_va = int(round(cfg.strat_val_fraction * len(g)))
      if choosing:  # the validation part is scored, the next n_va validate
        g, n_te = g[n_te:], n_va
      test.append(g[:n_te]), val.append(g[n_te:n_te + n_va]), fit.append(g[n_te + n_va:])
  else:
    raise ValueError(f"unknown attribute split rule {rule!r}")
  fit, val, test, eraser = (np.sort(np.concatenate(v)).astype(np.int64)
                            for v in (fit, val, test, eraser))
  if choosing:  # training-split examples only
    fit, val, test = (p[which[p] == 0] for p in (fit, val, test))
  for name, part in (("fit", fit), ("validation", val), ("test", test)):
    if len(part) == 0:
      raise DataError(f"Dataset {source.name}: the attribute attack's {name} part is empty "
                      f"(split rule {rule!r}, {len(x)} examples, scoring the "
                      f"{cfg.scored_part} part).")
  if erasing and len(eraser) == 0:
    raise DataError(f"Dataset {source.name}: the eraser part is empty (split rule {rule!r}, "
                    f"eraser_fraction {cfg.eraser_fraction}).")
  return Pool(x, att, lab, fit, val, test, int(source.num_attributes), rule, eraser, which)


# ---------------------------------------------------------------- releases


def release_fn(trained, n: int | None, batch: int, flat: bool = True) -> Callable:
  """x [M, ...], key -> [M, d] (or the feature shape, flat=False): the mean of `n`
  releases per input, each `trained.encode` with its own key (None: the clean features)."""
  enc = jax.jit(trained.encode)
  feats = jax.jit(trained.features)

  def run(x, key):
    outs = []
    for s in range(0, len(x), batch):
      xb = x[s:s + batch]
      if n is None:
        z = np.asarray(feats(xb), np.float64)
      else:
        z = sum(np.asarray(enc(xb, jax.random.fold_in(jax.random.fold_in(key, s), r)),
                           np.float64) for r in range(n)) / n
      outs.append(z.reshape(len(xb), -1) if flat else z)
    return np.concatenate(outs).astype(np.float32)

  return run


def raw_fn(pool: Pool, dims: int) -> Callable:
  """x -> flattened raw input projected on the top `dims` principal components of the fit part."""
  flat = pool.x[pool.fit].reshape(len(pool.fit), -1).astype(np.float64)
  mean = flat.mean(0)
  k = int(min(dims, flat.shape[1], len(flat)))
  centred = flat - mean
  if flat.shape[1] <= 4096:
    _, vecs = np.linalg.eigh(centred.T @ centred)  # ascending eigenvalues; [d, d]
    comp = vecs[:, ::-1][:, :k].T                   # [k, d] top principal directions
  else:  # large inputs (images): no d x d covariance
    from sklearn.utils.extmath import randomized_svd

    comp = randomized_svd(centred, k, random_state=0)[2]

  def run(x, key):
    del key
    return ((x.reshape(len(x), -1) - mean) @ comp.T).astype(np.float32)

  return run


# ---------------------------------------------------------------- attackers


def fit_attacker(family: str, z_fit, a_fit, z_val, a_val, num_attributes: int,
                 cfg: IdentityConfig, seed: int, name: str = ""):
  """One family searched on (features, attribute) and refit on fit + validation; returns
  (predict_proba, chosen settings). The features are used as given (one draw): the noise-
  draw search of `_score_setting` stacks several copies itself."""
  searched = aa.search(family, [z_fit], a_fit, z_val, a_val, num_attributes, cfg, seed,
                       draws=(1,), name=name)
  proba = aa.refit_with(searched, [z_fit], a_fit, [z_val], a_val, num_attributes, cfg, seed,
                        name=name)
  return proba, searched.describe()


# ---------------------------------------------------------------- scoring


def bootstrap_interval(correct: np.ndarray, n: int, seed) -> list:
  """95 % percentile interval of the mean of `correct` [M] over `n` resamples."""
  if n <= 0 or len(correct) == 0:
    return [float("nan"), float("nan")]
  rng = np.random.default_rng(seed)
  means = correct[rng.integers(0, len(correct), (n, len(correct)))].mean(1)
  return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def person_groups(attribute: np.ndarray, size: int, count: int, seed) -> np.ndarray:
  """[count, size] test positions: each row `size` different examples of one person
  (persons drawn uniformly among those with at least `size` test examples)."""
  rng = np.random.default_rng(seed)
  persons = [a for a in np.unique(attribute) if np.sum(attribute == a) >= size]
  if not persons or size <= 0:
    return np.zeros((0, max(size, 0)), np.int64)
  rows = []
  for p in rng.choice(persons, count):
    rows.append(rng.choice(np.flatnonzero(attribute == p), size, replace=False))
  return np.asarray(rows, np.int64)


def label_fn(pool: Pool, num_classes: int) -> Callable:
  """Pool indices, key -> [M, num_classes] one-hot task labels: all an attacker of the
  label-only floor is given."""
  eye = np.eye(max(int(num_classes), int(pool.label.max()) + 1), dtype=np.float32)

  def run(idx, key):
    del key
    return eye[pool.label[idx]]

  return run


def _on_inputs(pool: Pool, fn: Callable) -> Callable:
  """x, key -> features  as  pool indices, key -> features."""
  return lambda idx, key: fn(pool.x[idx], key)


def draw_grid(cfg: IdentityConfig, n_fit: int, noisy: bool) -> list:
  """The noise draws per fit input searched for a setting: (1,) for deterministic features,
  else cfg.draws without those whose stacked fit set would exceed cfg.max_fit_rows.

  >>> draw_grid(IdentityConfig(draws=(1, 4, 16), max_fit_rows=50000), 4000, True)
  [1, 4]
  >>> draw_grid(IdentityConfig(draws=(1, 4, 16)), 4000, False)
  [1]
  """
  if not noisy:
    return [1]
  return sorted({int(d) for d in cfg.draws if int(d) == 1 or int(d) * n_fit <= cfg.max_fit_rows}
                | {1})


def _score_setting(get: Callable, pool: Pool, cfg: IdentityConfig, setting: str,
                   groups: np.ndarray, noisy: bool = False) -> dict:
  """Every family searched on one setting's features (`get(pool indices, key)`), refit with
  every seed; per family means; the worst case; the person threat (calibrated aggregation
  of each family, the set attacker); the convergence marks of both figures.

  The search (noise draws per fit input, capacities; `attribute_attackers.search`) and the
  person calibration run on the validation part of the first seed; every seed then refits
  the chosen settings on fit + validation with fresh noise and initialisation.
  """
  a_fit, a_val, a_test = pool.attribute[pool.fit], pool.attribute[pool.val], \
      pool.attribute[pool.test]
  A = pool.num_attributes
  draws = draw_grid(cfg, len(pool.fit), noisy)
  size = int(groups.shape[1]) if len(groups) else 0
  val_groups = (person_groups(a_val, size, cfg.person_groups, [cfg.seed, 4]) if size
                else np.zeros((0, 0), np.int64))
  fams = list(cfg.attackers)
  by_family = {f: {"top1_seeds": [], "person_top1_seeds": []} for f in fams}
  correct = {f: [] for f in fams}
  person_correct = {f: [] for f in fams}
  searched, calib, seed_data = {}, {}, []
  set_fam, set_rec = None, {"top1_seeds": [], "correct": []}
  for seed in cfg.seeds:
    key = jax.random.PRNGKey(int(seed))
    n_draw = max(draws)
    z_draws = [get(pool.fit, jax.random.fold_in(key, 100 + d)) for d in range(n_draw)]
    z_val = get(pool.val, jax.random.fold_in(key, 1))
    z_val_draws = [z_val] + [get(pool.val, jax.random.fold_in(key, 200 + d))
                             for d in range(1, n_draw)]
    z_test = get(pool.test, jax.random.fold_in(key, 2))
    seed_data.append((seed, z_draws, z_val_draws, z_test))
    for fam in fams:
      name = f"identity/{setting}/{fam}/seed{seed}"
      if fam not in searched:   # the search, on the first seed's validation part
        searched[fam] = aa.search(fam, z_draws, a_fit, z_val, a_val, A, cfg, seed, draws, name)
        calib[fam] = aa.calibrate(searched[fam].chosen.val_proba, val_groups, a_val,
                                  cfg.calibrate)
        by_family[fam]["chosen"] = searched[fam].describe()
        by_family[fam]["calibration"] = calib[fam]
      p = aa.refit_with(searched[fam], z_draws, a_fit, z_val_draws, a_val, A, cfg, seed,
                        name=name)(z_test)
      ok = (p.argmax(-1) == a_test).astype(np.float64)
      correct[fam].append(ok)
      by_family[fam]["top1_seeds"].append(float(ok.mean()))
      msg = ""
      if size:
        c = calib[fam]
        pc = aa.person_top1(aa.calibrated_log(p, c["smoothing"], c["temperature"]), groups,
                            a_test)
        person_correct[fam].append(pc)
        by_family[fam]["person_top1_seeds"].append(float(pc.mean()))
        msg = f", person ({size} releases) {pc.mean():.4f}"
      log.info("identity %-8s %-11s seed %d: top-1 %.4f%s", setting, fam, seed, ok.mean(), msg)
    if size and cfg.set_attacker:
      sa = aa.fit_set_attacker(z_draws, a_fit, z_val, a_val, val_groups, A, cfg, size,
                               cfg.set_groups, int(seed), f"identity/{setting}/set/seed{seed}",
                               z_refit=_refit_parts(z_draws, z_val_draws),
                               a_refit=np.concatenate([a_fit, a_val]), family=set_fam)
      if sa is not None:
        if set_fam is None:
          set_fam, set_rec["chosen"] = sa.family, sa.describe()
        pc = (sa.predict(aa.pooled(z_test, groups)).argmax(-1)
              == a_test[groups[:, 0]]).astype(np.float64)
        set_rec["correct"].append(pc)
        set_rec["top1_seeds"].append(float(pc.mean()))
        log.info("identity %-8s %-11s seed %d: person (%d releases) %.4f", setting,
                 SET_ATTACKER, seed, size, pc.mean())
  for r in by_family.values():
    r["top1"] = float(np.mean(r["top1_seeds"]))
    if r["person_top1_seeds"]:
      r["person_top1"] = float(np.mean(r["person_top1_seeds"]))
  worst = max(by_family, key=lambda f: by_family[f]["top1"])
  out = {"attackers": by_family, "draws_searched": draws, "worst": {
      "attacker": worst, "top1": by_family[worst]["top1"],
      "ci95": bootstrap_interval(np.mean(correct[worst], 0), cfg.bootstrap, [cfg.seed, 5])}}
  out["worst"]["convergence"] = _convergence(
      searched[worst], seed_data, pool, cfg, a_fit, a_val, a_test, by_family[worst]["top1"],
      None, None, f"identity/{setting}/{worst}")
  if size:
    cands = {f: by_family[f]["person_top1"] for f in fams}
    if set_rec["top1_seeds"]:
      set_rec["person_top1"] = float(np.mean(set_rec["top1_seeds"]))
      cands[SET_ATTACKER] = set_rec["person_top1"]
      out["set_attacker"] = {k: v for k, v in set_rec.items() if k != "correct"}
    pw = max(cands, key=lambda f: cands[f])
    pcorrect = set_rec["correct"] if pw == SET_ATTACKER else person_correct[pw]
    out["person"] = {"attacker": pw, "top1": cands[pw], "releases": size,
                     "groups": int(len(groups)),
                     "ci95": bootstrap_interval(np.mean(pcorrect, 0), cfg.bootstrap,
                                                [cfg.seed, 6])}
    out["person"]["convergence"] = _convergence(
        None if pw == SET_ATTACKER else searched[pw], seed_data, pool, cfg, a_fit, a_val,
        a_test, cands[pw], groups, (set_fam, val_groups) if pw == SET_ATTACKER else
        calib[pw], f"identity/{setting}/{pw}/person")
  return out


def _refit_parts(z_draws, z_val_draws) -> list:
  """Per draw: fit and validation features stacked (the set attacker's refit examples)."""
  return [np.concatenate([zf, zv]) for zf, zv in zip(z_draws, z_val_draws)]


def _convergence(searched, seed_data, pool: Pool, cfg: IdentityConfig, a_fit, a_val, a_test,
                 figure: float, groups, person, name: str) -> dict:
  """The fit-set-size curve of a figure (its attacker refit on each of cfg.fit_fractions
  of fit + validation, every seed, test top-1; the last fraction is the figure) and the
  search's edge gains -> `budget.identity_mark`.

  searched None: the set attacker (person = (its family, validation groups)); groups None:
  the one-release figure, else the person figure (person = the calibration)."""
  fractions = [float(f) for f in cfg.fit_fractions if 0 < float(f) < 1.0]
  A = pool.num_attributes
  curve = []
  for frac in fractions:
    vals = []
    for seed, z_draws, z_val_draws, z_test in seed_data:
      if searched is None:
        fam, val_groups = person
        sa = aa.fit_set_attacker(z_draws, a_fit, z_val_draws[0], a_val, val_groups, A, cfg,
                                 groups.shape[1], cfg.set_groups, int(seed), name,
                                 z_refit=_refit_parts(z_draws, z_val_draws),
                                 a_refit=np.concatenate([a_fit, a_val]), fraction=frac,
                                 family=fam)
        vals.append(float((sa.predict(aa.pooled(z_test, groups)).argmax(-1)
                           == a_test[groups[:, 0]]).mean()))
        continue
      p = aa.refit_with(searched, z_draws, a_fit, z_val_draws, a_val, A, cfg, int(seed),
                        fraction=frac, name=f"{name}/fraction{frac:g}")(z_test)
      if groups is None:
        vals.append(float((p.argmax(-1) == a_test).mean()))
      else:
        lp = aa.calibrated_log(p, person["smoothing"], person["temperature"])
        vals.append(float(aa.person_top1(lp, groups, a_test).mean()))
    curve.append(float(np.mean(vals)))
  curve.append(float(figure))
  gains = dict(searched.edge_gains) if searched is not None else {}
  mark = budget_lib.identity_mark(curve, gains, cfg.tolerance)
  mark["fractions"] = fractions + [1.0]
  log.info("%s: %s (fit fractions %s: %s)", name, budget_lib.mark_label(mark),
           "/".join(f"{f:g}" for f in mark["fractions"]), " ".join(f"{v:.4f}" for v in curve))
  return mark


ERASER_SPLIT_KEYS = ("eraser_fraction", "eraser_seed", "time_gap", "val_recordings")


def with_eraser_split(cfg: IdentityConfig, trained, attribute: str = "") -> IdentityConfig:
  """`cfg` with the eraser part of the split `trained`'s eraser was fitted on (unchanged for
  a run without an eraser), so that no attacker fits, validates or tests on its examples."""
  er = getattr(trained, "eraser", None)
  if er is None:
    return cfg
  fitted = er.fitted_on
  if "eraser_fraction" not in fitted:
    raise ValueError("The run's eraser does not say which examples it was fitted on; fit it "
                     "again with ran-erase.")
  if attribute and fitted.get("attribute") not in (None, attribute):
    log.warning("identity: the eraser was fitted for the attribute %r; its examples are held "
                "out by %r's split rule, which only approximates them", fitted["attribute"],
                attribute)
  return dataclasses.replace(cfg, **{k: type(getattr(cfg, k))(fitted[k])
                                     for k in ERASER_SPLIT_KEYS if k in fitted})


def attack_identity(trained, source, cfg: IdentityConfig | None = None) -> dict:
  """Attribute-inference attacks on `trained`'s releases of `source` (module docstring).

  `source` must carry an attribute (load it with data.attribute set). Returns
  {'attribute', 'num_attributes', 'chance', 'majority', 'split', 'settings':
  {setting: {'attackers', 'worst', 'person', 'relative_to_raw'}}, 'label_only' (the
  label-only floor, a setting's layout), ...}.
  """
  cfg = cfg or IdentityConfig()
  unknown = sorted(set(cfg.attackers) - set(FAMILIES))
  if unknown:
    raise ValueError(f"unknown attribute attackers {unknown}; allowed: {list(FAMILIES)}")
  cfg = with_eraser_split(cfg, trained, source.attribute_name)
  pool = split_pool(source, cfg)
  a_fit, a_test = pool.attribute[pool.fit], pool.attribute[pool.test]
  groups = person_groups(a_test, cfg.person_releases, cfg.person_groups, [cfg.seed, 3])
  noisy = bool(trained.feature_noise)
  settings: dict[str, Callable] = {"single": release_fn(trained, 1, cfg.encode_batch)}
  if noisy:
    for n in cfg.releases:
      settings[f"mean_{int(n)}"] = release_fn(trained, int(n), cfg.encode_batch)
    if cfg.clean:
      settings["clean"] = release_fn(trained, None, cfg.encode_batch)
  if cfg.raw:
    settings["raw"] = raw_fn(pool, cfg.raw_pca)
  chance = 1.0 / pool.num_attributes
  majority = int(np.bincount(a_fit, minlength=pool.num_attributes).argmax())
  out = {
      "attribute": source.attribute_name, "num_attributes": pool.num_attributes,
      "attribute_values": [str(v) for v in source.attribute_values],
      "chance": chance, "majority": float(np.mean(a_test == majority)),
      "split": {"rule": pool.rule, "n_fit": int(len(pool.fit)), "n_val": int(len(pool.val)),
                "n_test": int(len(pool.test)), "scored_part": cfg.scored_part,
                "test_values": int(len(np.unique(a_test))), "n_eraser": int(len(pool.eraser)),
                "eraser_fraction": float(cfg.eraser_fraction)},
      "feature_noise": float(trained.feature_noise),
      "eraser": (None if getattr(trained, "eraser", None) is None
                 else {"rank": int(trained.eraser.rank), **trained.eraser.fitted_on}),
      "person_groups_persons": int(len(np.unique(a_test[groups[:, 0]]))) if len(groups) else 0,
      "settings": {}, "config": cfg.to_dict(),
  }
  if not noisy:
    out["note"] = ("deterministic release: N releases of one input equal one release and the "
                   "clean features")
  # one unit of progress per setting (its families searched, refit with every seed): a bar
  # in a terminal, a log line with the count and the ETA after each (progress.Track)
  jobs = list(settings) + (["label_only"] if cfg.label_only else [])
  track = progress.Track(jobs, desc="identity attack", unit="setting")
  for name in track:
    track.set_postfix_str(name)
    if name == "label_only":
      out["label_only"] = _score_setting(label_fn(pool, source.num_classes), pool, cfg,
                                         "label_only", groups)
    else:
      out["settings"][name] = _score_setting(
          _on_inputs(pool, settings[name]), pool, cfg, name, groups,
          noisy=noisy and name not in ("clean", "raw"))
  raw = out["settings"].get("raw")
  if raw is not None and raw["worst"]["top1"] > chance:
    for r in [*out["settings"].values(), *([out["label_only"]] if cfg.label_only else [])]:
      r["relative_to_raw"] = float((r["worst"]["top1"] - chance)
                                   / (raw["worst"]["top1"] - chance))
  return out


def label_only_floor(source, cfg: IdentityConfig | None = None) -> dict:
  """The label-only floor alone, no encoder needed: the attackers of `attack_identity`
  given only the task label, on its split, seeds and person groups (so equal to its
  result['label_only']). Returns {'attribute', 'num_attributes', 'chance', 'majority',
  'split', 'label_only'}."""
  cfg = cfg or IdentityConfig()
  pool = split_pool(source, cfg)
  a_fit, a_test = pool.attribute[pool.fit], pool.attribute[pool.test]
  groups = person_groups(a_test, cfg.person_releases, cfg.person_groups, [cfg.seed, 3])
  majority = int(np.bincount(a_fit, minlength=pool.num_attributes).argmax())
  return {"attribute": source.attribute_name, "num_attributes": pool.num_attributes,
          "chance": 1.0 / pool.num_attributes, "majority": float(np.mean(a_test == majority)),
          "split": {"rule": pool.rule, "n_fit": int(len(pool.fit)), "n_val": int(len(pool.val)),
                    "n_test": int(len(pool.test)), "scored_part": cfg.scored_part},
          "label_only": _score_setting(label_fn(pool, source.num_classes), pool, cfg,
                                       "label_only", groups),
          "config": cfg.to_dict()}


def headline(r: dict) -> dict:
  """The figures of `attack_identity`'s result that a choice and a results row use.

  single: worst-case top-1 from one release; clean: from the clean features (for a
  noise-free release the release itself, so single; None when not attacked); person:
  from `person_releases` single releases of one person combined (None when off); worst:
  the largest of these; chance: 1 / num_attributes; label_only, label_only_person: the
  label-only floor for one example and for the person (None when not measured).
  """
  settings = r["settings"]
  single = settings["single"]
  out = {"attribute": r["attribute"], "chance": float(r["chance"]),
         "single": float(single["worst"]["top1"]),
         "clean": (float(settings["clean"]["worst"]["top1"]) if "clean" in settings
                   else None if r.get("feature_noise") else float(single["worst"]["top1"])),
         "person": (float(single["person"]["top1"]) if "person" in single else None),
         "person_releases": single.get("person", {}).get("releases")}
  floor = r.get("label_only")
  out["label_only"] = float(floor["worst"]["top1"]) if floor else None
  out["label_only_person"] = (float(floor["person"]["top1"]) if floor and "person" in floor
                              else None)
  out["worst"] = max(v for v in (out["single"], out["clean"], out["person"]) if v is not None)
  clean = settings.get("clean", single if not r.get("feature_noise") else None)
  out["marks"] = {"single": budget_lib.mark_label(single["worst"].get("convergence")),
                  "clean": (budget_lib.mark_label(clean["worst"].get("convergence"))
                            if clean else None),
                  "person": (budget_lib.mark_label(single["person"].get("convergence"))
                             if "person" in single else None)}
  out["converged"] = all(m in (None, "converged") for m in out["marks"].values())
  out["budget"] = r.get("config", {}).get("budget")
  return out


def format_identity(r: dict) -> str:
  """The printed table of `attack_identity`'s result."""
  lines = [f"identity ({r['attribute']}, {r['num_attributes']} values, split {r['split']['rule']}: "
           f"{r['split']['n_fit']} fit / {r['split']['n_val']} val / {r['split']['n_test']} test"
           + (f", {r['split']['n_eraser']} held out: fitted the eraser"
              if r["split"].get("n_eraser") else "") + ")"
           + (f", erased (rank {r['eraser']['rank']})" if r.get("eraser") else "")
           + f": chance {r['chance']:.4f}, majority {r['majority']:.4f}"
           + (f", label only {r['label_only']['worst']['top1']:.4f}" if r.get("label_only")
              else ""),
           f"{'setting':10s}" + "".join(f"{f:>12s}" for f in
                                         next(iter(r["settings"].values()))["attackers"])
           + f"{'worst':>9s}{'95% CI':>17s}{'vs raw':>8s}{'person':>9s}  convergence"]
  rows = list(r["settings"].items())
  if r.get("label_only"):
    rows.append(("label only", r["label_only"]))
  for name, s in rows:
    fams = "".join(f"{a['top1']:12.4f}" for a in s["attackers"].values())
    ci = s["worst"]["ci95"]
    rel = s.get("relative_to_raw")
    person = s.get("person", {}).get("top1")
    marks = budget_lib.mark_label(s["worst"].get("convergence"))
    if "person" in s:
      marks += f" / person {budget_lib.mark_label(s['person'].get('convergence'))}"
    lines.append(f"{name:10s}{fams}{s['worst']['top1']:9.4f}  [{ci[0]:.4f}, {ci[1]:.4f}]"
                 + (f"{rel:8.3f}" if rel is not None else f"{'-':>8s}")
                 + (f"{person:9.4f}" if person is not None else f"{'-':>9s}") + f"  {marks}")
  cfg = r.get("config", {})
  if cfg.get("budget"):
    lines.append(f"budget {cfg['budget']}: worst of the families (each searched on validation: "
                 f"noise draws {'/'.join(map(str, cfg.get('draws', [])))}, capacities) and, for "
                 "the person, calibrated summed log-probabilities or the set attacker; "
                 "'lower bound': the last doubling of the fit set or of a searched capacity "
                 f"moved the figure by more than {cfg.get('tolerance', 0):g}")
  return "\n".join(lines)
