"""Declared attacker budgets: what a searched attacker may try, written into every result.

A privacy figure is the worst case of attackers *searched* under a stated budget. The
budget fixes, per threat (one release, the mean of N releases of one input, the clean
features, N releases of one person) and per family, the grid of settings searched on the
attacker's validation part (never the test part), and the convergence checks that decide
whether a figure is reported as converged or as a lower bound.

  light     the default of `ran-attack`: every family at one capacity, noise draws 1 and
            4 per training input, calibrated aggregation and the set attacker for the
            person threat, the fit-set-size check on the worst family. Minutes.
  thorough  what published figures use: capacity grids (forest trees, MLP widths and
            depths, boosting rounds), noise draws 1, 4 and 16, gradient-boosted trees, the
            residual decoder, wider and deeper MLP decoders, two learning rates, white-box
            inversion through the encoder, fits up to 100 epochs.

A figure is **converged** when the last doubling of the fit set (half -> all) and of the
searched capacity and noise draws (where the chosen value is the largest of the grid)
moves it towards more leakage by at most the tolerance (a doubling that lowers the leakage
did not help the attacker): `identity_tolerance` (absolute top-1) or
`reconstruction_tolerance` (relative summed squared error). Otherwise it is a lower bound
on the leakage: a stronger attacker may exist within reach.

>>> BUDGETS["thorough"].identity.draws
(1, 4, 16)
>>> get_budget("light").name
'light'
"""

from __future__ import annotations

import dataclasses
from typing import Sequence


@dataclasses.dataclass(frozen=True)
class IdentityBudget:
  """The attribute attackers' search space (`ran_jax.privacy.identity`)."""

  families: tuple = ("logreg", "mlp", "knn", "forest", "extra_trees")
  draws: tuple = (1, 4)                  # noisy releases per training input, searched
  max_fit_rows: int = 60000              # draws whose stacked fit set exceeds this: skipped
  mlp_hidden: tuple = ((256,),)          # MLP capacities, searched in this order
  trees: tuple = (200,)                  # forest / extra_trees sizes, searched in this order
  min_leaf: tuple = (1, 5)               # forest / extra_trees leaf sizes, searched
  boosting_rounds: tuple = (100,)        # gradient-boosted trees (histogram), searched
  knn_ks: tuple = (1, 3, 5, 9, 15, 25, 45, 75, 125)
  calibrate: bool = True                 # person threat: smoothing + temperature on validation
  set_attacker: bool = True              # person threat: a classifier of pooled group stats
  set_groups: int = 400                  # training groups per person for the set attacker
  fit_fractions: tuple = (0.25, 0.5, 1.0)  # convergence in the size of the fit set

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ReconstructionBudget:
  """The reconstruction attackers' search space (`ran_jax.privacy.protocol`)."""

  attackers: tuple = ("mirrored_decoder", "mlp_decoder", "ridge")
  max_epochs: int = 15                   # a safety net: fits end on a plateau
  releases: tuple = ()                   # N of the mean-of-N-releases threats
  mlp_hidden: tuple = ((1024, 1024),)    # MLP decoder capacities, searched on validation
  learning_rates: tuple = (1e-3,)        # searched on validation for every trained family
  inversion: bool = False                # white-box inversion through the frozen encoder
  inversion_steps: int = 200
  inversion_weights: tuple = (0.01, 0.1, 1.0, 10.0)  # prior weights, searched on validation
  fit_fractions: tuple = (0.5, 1.0)      # convergence in the size of the fit set

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Budget:
  """One declared budget: its name, both searches and the convergence tolerances."""

  name: str
  reconstruction: ReconstructionBudget
  identity: IdentityBudget
  identity_tolerance: float = 0.005      # 0.5 point of top-1
  reconstruction_tolerance: float = 0.02  # 2 % of the summed squared error

  def describe(self) -> str:
    r, i = self.reconstruction, self.identity
    means = (f"; the means of {'/'.join(map(str, r.releases))} releases" if r.releases else "")
    return (f"{', '.join(r.attackers)}{' + white-box inversion' if r.inversion else ''}, "
            f"<= {r.max_epochs} epochs per fit{means}; identity: {', '.join(i.families)}, "
            f"noise draws {'/'.join(map(str, i.draws))}")

  def to_dict(self) -> dict:
    return {"name": self.name, "reconstruction": self.reconstruction.to_dict(),
            "identity": self.identity.to_dict(), "identity_tolerance": self.identity_tolerance,
            "reconstruction_tolerance": self.reconstruction_tolerance}


BUDGETS = {
    "light": Budget("light", ReconstructionBudget(), IdentityBudget()),
    "thorough": Budget(
        "thorough",
        ReconstructionBudget(
            attackers=("mirrored_decoder", "mlp_decoder", "resnet_decoder", "ridge"),
            max_epochs=100, releases=(4, 16),
            mlp_hidden=((1024, 1024), (2048, 2048), (1024, 1024, 1024)),
            learning_rates=(1e-3, 3e-4), inversion=True, fit_fractions=(0.25, 0.5, 1.0)),
        IdentityBudget(
            families=("logreg", "mlp", "knn", "forest", "extra_trees", "boosting"),
            draws=(1, 4, 16), mlp_hidden=((256,), (512, 512), (1024, 1024)),
            trees=(100, 200, 400), boosting_rounds=(100, 300), set_groups=1000)),
}
ALIASES = {"strong": "thorough"}   # the earlier name of the published-figures budget


def get_budget(name: str) -> Budget:
  """The budget called `name` ('light', 'thorough'; 'strong' is 'thorough')."""
  key = ALIASES.get(name, name)
  if key not in BUDGETS:
    raise ValueError(f"preset={name!r}: allowed: {sorted(BUDGETS)} (attacker budgets).")
  return BUDGETS[key]


# ---------------------------------------------------------------- convergence


def doubling_moves(values: Sequence[float], higher_is_more_leakage: bool = True) -> float:
  """How far the last doubling moved a figure towards more leakage: v[-1] - v[-2] for
  top-1, v[-2] - v[-1] for an error (0 with one value, or when it moved the other way).

  >>> doubling_moves([0.30, 0.41, 0.43])
  0.02
  >>> doubling_moves([0.30, 0.45, 0.43])
  0.0
  >>> doubling_moves([40.0, 31.0, 30.0], higher_is_more_leakage=False)
  1.0
  """
  if len(values) < 2:
    return 0.0
  gain = float(values[-1]) - float(values[-2])
  return round(max(0.0, gain if higher_is_more_leakage else -gain), 12)


def edge_gain(grid_scores: Sequence[float], chosen: int, higher_is_better: bool = True) -> float:
  """The gain of a grid's largest value over the one before it, when it is the chosen one
  (the search sits on the edge of its grid and was still improving); 0 otherwise.

  >>> edge_gain([0.2, 0.3, 0.35], chosen=2)
  0.05
  >>> edge_gain([0.2, 0.3, 0.25], chosen=1)
  0.0
  >>> edge_gain([5.0, 4.0], chosen=1, higher_is_better=False)
  1.0
  """
  if len(grid_scores) < 2 or chosen != len(grid_scores) - 1:
    return 0.0
  gain = float(grid_scores[-1]) - float(grid_scores[-2])
  return round(max(0.0, gain if higher_is_better else -gain), 12)


def identity_mark(fit_curve: Sequence[float], edge_gains: dict, tolerance: float) -> dict:
  """The convergence mark of an identity figure (top-1: absolute points).

  fit_curve: test top-1 at the budget's fit fractions (the last is the figure); edge_gains:
  {search axis: `edge_gain` on validation}. Converged when no move exceeds the tolerance.

  >>> identity_mark([0.30, 0.35, 0.351], {"draws": 0.0}, 0.005)["converged"]
  True
  >>> identity_mark([0.30, 0.35, 0.40], {}, 0.005)["reason"]
  'fit set: the last doubling moved top-1 by 0.0500 > 0.005'
  """
  reasons = []
  move = doubling_moves(fit_curve)
  if move > tolerance:
    reasons.append(f"fit set: the last doubling moved top-1 by {move:.4f} > {tolerance:g}")
  for axis, gain in edge_gains.items():
    if gain > tolerance:
      reasons.append(f"{axis}: the largest value searched still gained {gain:.4f} > "
                     f"{tolerance:g} on validation")
  return {"converged": not reasons, "reason": "; ".join(reasons) or "converged",
          "fit_curve": [float(v) for v in fit_curve], "last_doubling": move,
          "edge_gains": {k: float(v) for k, v in edge_gains.items()}, "tolerance": tolerance}


def reconstruction_mark(fit_curve: Sequence[float], edge_gains: dict, tolerance: float) -> dict:
  """The convergence mark of a reconstruction figure (summed squared error, relative).

  fit_curve: test error at the fit fractions (the last is the figure); edge_gains:
  {axis: relative gain on validation at the grid's edge}.

  >>> reconstruction_mark([40.0, 31.0, 30.0], {}, 0.02)["converged"]
  False
  >>> reconstruction_mark([40.0, 30.3, 30.0], {"capacity": 0.01}, 0.02)["converged"]
  True
  """
  reasons = []
  last = float(fit_curve[-1]) if len(fit_curve) else float("nan")
  move = (doubling_moves(fit_curve, higher_is_more_leakage=False) / last
          if len(fit_curve) > 1 and last > 0 else 0.0)
  if move > tolerance:
    reasons.append(f"fit set: the last doubling moved the error by {100 * move:.1f} % > "
                   f"{100 * tolerance:g} %")
  for axis, gain in edge_gains.items():
    if gain > tolerance:
      reasons.append(f"{axis}: the largest value searched still gained {100 * gain:.1f} % on "
                     "validation")
  return {"converged": not reasons, "reason": "; ".join(reasons) or "converged",
          "fit_curve": [float(v) for v in fit_curve], "last_doubling": round(move, 12),
          "edge_gains": {k: float(v) for k, v in edge_gains.items()}, "tolerance": tolerance}


def mark_label(mark: dict | None) -> str:
  """'converged', 'lower bound' or 'not checked' (no mark)."""
  if not mark:
    return "not checked"
  return "converged" if mark["converged"] else "lower bound"
