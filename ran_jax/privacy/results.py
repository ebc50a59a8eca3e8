"""A sweep's results table: one row per point, a fixed CSV schema (`CSV_COLUMNS`).

A point's `result.json` (from `ran_jax.privacy.protocol`) becomes one row; the
figures (`ran_jax.privacy.figures.write_figures`) and the docs read these rows.
"""

from __future__ import annotations

import csv
import io

from ran_jax.privacy import protocol

TRAINED_ATTACKERS = protocol.TRAINED_ATTACKERS
IDENTITY_COLUMNS = ["attribute", "attribute_single_top1", "attribute_clean_top1",
                    "attribute_person_top1", "attribute_worst_top1", "attribute_chance",
                    "attribute_label_only_top1", "attribute_label_only_person_top1"]
CSV_COLUMNS = (
    ["method", "setting", "lam", "noise_factor", "feature_noise", "accuracy", "accuracy_retrained"]
    + [f"{a}_{m}" for a in protocol.ALL_ATTACKERS for m in protocol.METRICS]
    + ["worst_attacker", "worst_mse_sum", "worst_mse_mean", "worst_psnr", "worst_ssim",
       # Attacker-independent floor for unbiased attackers of a noisy release (privacy/bound.py)
       "fisher_bound_mse_sum", "fisher_bound_mse_mean",
       # Attackers that ignore the features: class-mean image (label only), mean image
       "label_only_mse_sum", "mean_image_mse_sum",
       "n_fit", "n_test", "train_seconds", "eval_seconds"]
    # Trained attackers: epochs run and whether the fit ended on a plateau (True) or at
    # the epoch cap (False: that attacker may be stronger than reported).
    + [f"{a}_{m}" for a in TRAINED_ATTACKERS for m in ("epochs", "converged")]
    # Identity (attribute inference, `ran_jax.privacy.identity.headline`; empty without
    # data.attribute): worst-case top-1 from one release, from the clean features, from N
    # releases of one person, the worst of the three, chance (1 / number of values) and the
    # label-only floor (the same attackers given only the task label; one example, a person).
    + IDENTITY_COLUMNS)


def setting_key(v: float) -> str:
  return f"{v:g}"


def identity_cells(headline: dict) -> dict:
  """`identity.headline(...)` -> the IDENTITY_COLUMNS of a row ('' where not measured)."""
  cell = lambda v: "" if v is None else v  # noqa: E731
  return {"attribute": headline["attribute"], "attribute_chance": headline["chance"],
          **{f"attribute_{k}_top1": cell(headline.get(k))
             for k in ("single", "clean", "person", "worst", "label_only",
                       "label_only_person")}}


def to_row(method: str, setting: str, result: dict, identity: dict | None = None) -> dict:
  """One CSV row; `identity`: the point's `identity.headline` (None: columns left empty)."""
  row = {c: "" for c in CSV_COLUMNS}
  if identity:
    row.update(identity_cells(identity))
  fb = result.get("fisher_bound", {})
  ref = result.get("reference", {})
  row.update(method=method, setting=setting, lam=result.get("lam", ""),
             noise_factor=result.get("noise_factor", ""),
             feature_noise=result.get("feature_noise", ""),
             fisher_bound_mse_sum=fb.get("mse_sum", ""),
             fisher_bound_mse_mean=fb.get("mse_mean", ""),
             label_only_mse_sum=ref.get("label_only", {}).get("mse_sum", ""),
             mean_image_mse_sum=ref.get("mean_image", {}).get("mse_sum", ""),
             accuracy=result.get("accuracy", ""),
             accuracy_retrained=result.get("accuracy_retrained", ""),
             n_fit=result.get("n_fit", ""), n_test=result.get("n_test", ""),
             train_seconds=result.get("train_seconds", ""),
             eval_seconds=result.get("eval_seconds", ""))
  for a, m in result["attackers"].items():
    for k in protocol.METRICS:
      row[f"{a}_{k}"] = m[k]
    if a in TRAINED_ATTACKERS:
      row[f"{a}_epochs"] = m.get("epochs", "")
      row[f"{a}_converged"] = m.get("converged", "")
  w = result.get("worst", {})
  row.update(worst_attacker=w.get("attacker", ""), worst_mse_sum=w.get("mse_sum", ""),
             worst_mse_mean=w.get("mse_mean", ""), worst_psnr=w.get("psnr", ""),
             worst_ssim=w.get("ssim", ""))
  return row


def write_csv(rows: list, path: str) -> None:
  """Writes the rows to `path` (local or gs://, written whole: `ran_jax.storage`)."""
  from ran_jax import storage

  f = io.StringIO(newline="")
  w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
  w.writeheader()
  for r in rows:
    w.writerow(r)
  storage.write_text(path, f.getvalue())


def read_csv(path: str) -> list:
  """The rows of a results.csv (local or gs://)."""
  from ran_jax import storage

  return list(csv.DictReader(io.StringIO(storage.read_text(path), newline="")))


