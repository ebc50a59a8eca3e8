"""Draws the identity fronts of docs/privacy_identity.md from the sweeps' CSV files.

  python docs/gen_fronts.py     # writes docs/figures/{har,fsdd}_identity_front.png

Each front joins the points of its sweeps (`python -m ran_jax.sweep`, one training per
point; the commands are beside each table in docs/privacy_identity.md): the first CSV's
rows, then every row of a later CSV whose (method, setting) is new (a later sweep that
reproduced a point does not draw it twice). Beside chance it draws the label-only floors
(the same attackers given only the task label: one example, and the examples of one
person combined) from docs/data/label_only_<task>.json (`python -m bench.label_floor`),
and circles the point of the recommended config (its weights; the fronts were swept before
the release was rounded, `model.release_step`).
"""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

DATA = os.path.join(ROOT, "docs", "data")
FIGURES = os.path.join(ROOT, "docs", "figures")

# task -> (CSV files in order, label-only file, the recommended config's point, title)
FRONTS = {
    "har": (("privacy_har_identity.csv", "privacy_har_identity_hsic.csv"), "label_only_har.json",
            "noise_c1_game2_hsic0.5", "UCI HAR: task accuracy vs subject leakage"),
    "fsdd": (("privacy_fsdd_identity.csv", "privacy_fsdd_identity_hsic.csv"),
             "label_only_fsdd.json", "noise_c3.25",
             "Spoken digits (FSDD): task accuracy vs speaker leakage"),
}


def front_points(csv_paths, recommended: str = "") -> list:
  """The identity points of the CSVs (`sweep.identity_rows`), later duplicates dropped."""
  from ran_jax import sweep
  from ran_jax.privacy import results

  rows, seen = [], set()
  for path in csv_paths:
    for r in results.read_csv(path):
      key = (r["method"], r["setting"])
      if key not in seen and r.get("attribute_worst_top1", "") != "":
        seen.add(key)
        rows.append(r)
  pts = sweep.identity_rows(rows)
  for p in pts:
    if p["label"] == recommended:
      p["highlight"] = "recommended config (release not rounded)"
  return pts


def draw(task: str, out_dir: str = FIGURES, data_dir: str = DATA) -> str:
  """Writes OUT_DIR/<task>_identity_front.png; returns its path."""
  from ran_jax.privacy import figures

  csvs, floor_file, recommended, title = FRONTS[task]
  paths = [os.path.join(data_dir, c) for c in csvs if os.path.exists(os.path.join(data_dir, c))]
  if not paths:
    raise FileNotFoundError(f"no front CSV for {task} in {data_dir}: {list(csvs)}")
  with open(os.path.join(data_dir, floor_file), encoding="utf-8") as f:
    floor = json.load(f)
  out = os.path.join(out_dir, f"{task}_identity_front.png")
  figures.identity_front(front_points(paths, recommended), out, floor["chance"], title=title,
                         label_only=floor["label_only"]["worst"]["top1"],
                         label_only_person=floor["label_only"]["person"]["top1"])
  return out


def main() -> None:
  for task in FRONTS:
    print("wrote", draw(task))


if __name__ == "__main__":
  main()
