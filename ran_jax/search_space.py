"""The budget search's space: its privacy knobs and the bisection over them (pure functions).

`KNOBS` names each knob the search may move, which way is more private and its default
interval; `knob_value` maps a position t in [0, 1] (0: least private end) to a knob value;
`next_position` is the bisection, a pure function of the positions tried so far, so a
resumed search repeats it exactly. `ran_jax.search` runs the trainings it asks for.

>>> knob_value(0.25, "model.feature_noise", 0.0, 2.0)
0.5
>>> knob_value(0.25, "ran.lam", 0.0, 1.0)
0.75
>>> next_position({}, max_trainings=4)
0.5
>>> next_position({0.5: True, 0.75: False}, max_trainings=4)
0.625
>>> next_position({0.5: False}, max_trainings=1) is None
True
"""

from __future__ import annotations

import dataclasses
from typing import Optional


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


def knob_name(knob: str) -> str:
  """A knob as every command spells a config field (`config.ran.lam`, as in `--config.ran.lam`
  and a sweep's `--variant`) or bare (`ran.lam`) -> the bare field name."""
  return knob[len("config."):] if knob.startswith("config.") else knob


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
