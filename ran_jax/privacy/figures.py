"""The paper's figures from a sweep: Pareto front (Fig. 3), reconstructions (Fig. 6),
3-D features (Fig. 4). Reads results rows and the per-point artifacts."""

from __future__ import annotations

import math
import os
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ran_jax.privacy import results  # noqa: E402


def save_figure(fig, path, dpi: int) -> None:
  """Writes `fig` to `path` (local or gs://; the format from its extension, PNG without
  one): rendered in memory, then written whole (`ran_jax.storage.write_bytes`)."""
  import io

  from ran_jax import storage

  fmt = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or "png"
  buf = io.BytesIO()
  fig.savefig(buf, format=fmt, dpi=dpi)
  storage.write_bytes(path, buf.getvalue())


def _f(v):
  try:
    v = float(v)
  except (TypeError, ValueError):
    return float("nan")
  return v


def _log(v):
  v = _f(v)
  return math.log10(v) if v > 0 else float("nan")


def pareto(rows: list, path: str, title: str = "") -> None:
  """x: service accuracy; y: log10 of the per-example summed squared error (test)."""
  fig, ax = plt.subplots(figsize=(10, 5))
  by = lambda m: [r for r in rows if r["method"] == m]  # noqa: E731
  ran = sorted(by("ran"), key=lambda r: _f(r["lam"]))
  if ran:
    x = [_f(r["accuracy"]) for r in ran]
    ax.plot(x, [_log(r["worst_mse_sum"]) for r in ran], "g-o",
            label="RAN, worst case over attackers")
    ax.plot(x, [_log(r["own_decoder_mse_sum"]) for r in ran], "g--x", alpha=0.7,
            label="RAN, its own decoder")
    ind = [min(_f(r[f"{a}_mse_sum"]) for a in ("mirrored_decoder", "mlp_decoder", "ridge")
               if not math.isnan(_f(r[f"{a}_mse_sum"]))) for r in ran]
    ax.plot(x, [_log(v) for v in ind], "g^", ms=8, fillstyle="none",
            label="RAN, best separately trained attacker")
    for r in ran:
      ax.annotate(f"λ={_f(r['lam']):g}", (_f(r["accuracy"]), _log(r["worst_mse_sum"])),
                  fontsize=7, xytext=(3, 3), textcoords="offset points")
  for r in by("dnn"):
    ax.plot(_f(r["accuracy"]), _log(r["worst_mse_sum"]), "k*", ms=13, label="DNN, worst case")
    ax.plot(_f(r["accuracy"]), _log(r["own_decoder_mse_sum"]), "k*", ms=13, fillstyle="none",
            label="DNN, its own decoder")
  rs = sorted(by("dnn_resized"), key=lambda r: _f(r["noise_factor"]))
  if rs:
    ax.plot([_f(r["accuracy"]) for r in rs], [_log(r["worst_mse_sum"]) for r in rs], "b-s",
            label="DNN(resized), worst case")
  nz = sorted(by("noisy"), key=lambda r: _f(r["noise_factor"]))
  if nz:
    ax.plot([_f(r["accuracy"]) for r in nz], [_log(r["identity_mse_sum"]) for r in nz], "r--d",
            fillstyle="none", label="Noisy, |I - noisy I|² (paper)")
    ax.plot([_f(r["accuracy"]) for r in nz], [_log(r["worst_mse_sum"]) for r in nz], "r-d",
            label="Noisy, worst case (incl. denoising attackers)")
  markers = iter("oDPXv<>^sph*")
  for r in by("variant"):
    mk = next(markers, "o")
    ax.plot(_f(r["accuracy"]), _log(r["worst_mse_sum"]), mk, color="tab:purple", ms=8,
            label=f"{r['setting']}, worst case")
    if not math.isnan(_f(r.get("fisher_bound_mse_sum"))):
      ax.plot(_f(r["accuracy"]), _log(r["fisher_bound_mse_sum"]), mk, color="tab:purple", ms=8,
              fillstyle="none", alpha=0.6, label=f"{r['setting']}, Fisher bound (unbiased)")
  # Where privacy saturates: attackers that ignore the features.
  for col, style, label in (("label_only_mse_sum", "--", "label only (class-mean image)"),
                            ("mean_image_mse_sum", ":", "mean image")):
    vals = [_f(r.get(col)) for r in rows if not math.isnan(_f(r.get(col)))]
    if vals:
      ax.axhline(_log(vals[0]), color="gray", ls=style, lw=1, label=label)
  ax.set_xlabel("test accuracy (service classifier)")
  ax.set_ylabel("log10 reconstruction error  (Σ over pixels of (I-I')², mean over test)")
  ax.set_title(title or "Privacy-utility trade-off (cf. Fig. 3)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: no point hidden
  fig.tight_layout()
  save_figure(fig, path, dpi=120)
  plt.close(fig)


def _as_image(x):
  x = np.asarray(x)
  if x.ndim == 3 and x.shape[-1] == 1:
    return x[..., 0]
  if x.ndim == 3 and x.shape[1] == 1:   # [T, 1, C] sensor windows: show as [C, T]
    return x[:, 0, :].T
  return x


def recon_grid(rows_spec: list, path: str, value_range=(0.0, 1.0), title: str = "") -> None:
  """rows_spec: [(label, images [N, H, W, C])]; one row per method, one column per image."""
  n = min(len(imgs) for _, imgs in rows_spec)
  fig, axes = plt.subplots(len(rows_spec), n, figsize=(1.3 * n + 1.5, 1.35 * len(rows_spec)),
                           squeeze=False)
  for i, (label, imgs) in enumerate(rows_spec):
    for j in range(n):
      ax = axes[i, j]
      ax.imshow(_as_image(imgs[j]), cmap="gray", vmin=value_range[0], vmax=value_range[1],
                aspect="auto")
      ax.set_xticks([])
      ax.set_yticks([])
      if j == 0:
        ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
  fig.suptitle(title or "Reconstructions by the strongest attacker (cf. Fig. 6)", fontsize=9)
  fig.tight_layout()
  save_figure(fig, path, dpi=120)
  plt.close(fig)


def scatter3d(panels: list, path: str) -> None:
  """panels: [(label, z3 [N, 3], labels [N])]: top-3 PCA of test features by class."""
  fig = plt.figure(figsize=(5 * len(panels), 4.5))
  for i, (label, z3, y) in enumerate(panels, start=1):
    ax = fig.add_subplot(1, len(panels), i, projection="3d")
    sc = ax.scatter(z3[:, 0], z3[:, 1], z3[:, 2], c=y, cmap="tab10", s=3)
    ax.set_title(label, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_zticks([])
  fig.colorbar(sc, ax=fig.axes, shrink=0.6, label="class")
  save_figure(fig, path, dpi=120)
  plt.close(fig)


# ---------------------------------------------------------------- a sweep's figures


def pick_ran(rows: list, min_accuracy: float = 0.95) -> Optional[dict]:
  """The RAN point shown in figures: highest worst-case error with accuracy >= min_accuracy,
  else the most accurate one."""
  ran = [r for r in rows if r["method"] == "ran"]
  if not ran:
    return None
  ok = [r for r in ran if float(r["accuracy"]) >= min_accuracy]
  if ok:
    return max(ok, key=lambda r: float(r["worst_mse_sum"]))
  return max(ran, key=lambda r: float(r["accuracy"]))


def _point_name(row: dict) -> str:
  if row["method"] == "variant":
    return f"variant_{row['setting']}"
  if row["method"] == "ran":
    return f"ran_lam{results.setting_key(float(row['lam']))}"
  if row["method"] == "dnn":
    return "dnn"
  return f"{row['method']}_f{results.setting_key(float(row['noise_factor']))}"


def _closest(rows, method, factor):
  c = [r for r in rows if r["method"] == method]
  return min(c, key=lambda r: abs(float(r["noise_factor"]) - factor)) if c else None


def write_figures(rows: list, arts: dict, out: str, task: str, show_factor: float = 0.5,
                  value_range=(0.0, 1.0)) -> None:
  pareto(rows, os.path.join(out, "pareto.png"),
                 f"{task}: privacy-utility trade-off (cf. Fig. 3)")
  grid, panels = [], []
  first = next(iter(arts.values()), {})
  if "x_show" in first:
    grid.append(("raw", first["x_show"]))

  def add(row, label):
    if row is None:
      return
    art = arts[_point_name(row)]
    att = row["worst_attacker"]
    grid.append((f"{label}\n{att}\nacc {float(row['accuracy']):.3f}\n"
                 f"mse {float(row['worst_mse_sum']):.3g}", art[f"rec_{att}"]))

  nz = _closest(rows, "noisy", show_factor)
  if nz is not None:
    grid.append((f"noisy f={results.setting_key(float(nz['noise_factor']))}",
                 arts[_point_name(nz)]["rec_identity"]))
  dnn = next((r for r in rows if r["method"] == "dnn"), None)
  add(dnn, "from DNN")
  rs = _closest(rows, "dnn_resized", show_factor)
  add(rs, f"DNN(resized)\nf={results.setting_key(float(rs['noise_factor']))}" if rs else "")
  ran = pick_ran(rows)
  add(ran, f"from RAN λ={results.setting_key(float(ran['lam']))}" if ran else "")
  if ran is not None:
    grid.append((f"RAN λ={results.setting_key(float(ran['lam']))}\nown decoder",
                 arts[_point_name(ran)]["rec_own_decoder"]))
  for row in [r for r in rows if r["method"] == "variant"]:
    add(row, row["setting"])
  if len(grid) > 1:
    recon_grid(grid, os.path.join(out, "reconstructions.png"), value_range=value_range,
                       title=f"{task}: test inputs and their reconstructions by the strongest "
                             "attacker of each method (cf. Fig. 6)")
  for row, label in ((dnn, "DNN features"), (ran, "RAN features")):
    if row is not None:
      a = arts[_point_name(row)]
      lam = results.setting_key(float(row["lam"]))
      lab = label + (f" (λ={lam})" if row["method"] == "ran" else "")
      panels.append((lab, a["z3"], a["y_scatter"]))
  if panels:
    scatter3d(panels, os.path.join(out, "features3d.png"))


IDENTITY_PARTS = (("single", "x", "one release"), ("clean", "s", "clean features"),
                  ("person", "^", "N releases of the person"))


def identity_front(points: list, path: str, chance: float, title: str = "",
                   threshold: Optional[float] = None,
                   xlabel: str = "test accuracy (service classifier)",
                   label_only: Optional[float] = None,
                   label_only_person: Optional[float] = None) -> bool:
  """Task accuracy vs identity top-1 (attribute inference). Returns False (no file) when
  no point has an identity score.

  points: dicts {'label', 'accuracy', 'single', 'clean', 'person', 'worst', 'group'}
  (None or '' where not measured); 'group' points are joined in the given order, and a
  point with 'highlight' is circled (a string 'highlight' is its legend text, else
  'chosen'). The filled marker is the worst case of the three settings, the small open ones
  each setting. `label_only` (one example) and
  `label_only_person` (examples of one person combined): the same attackers given only the
  task label, the floor no representation that carries the task can go under; drawn when given.
  """
  pts = [p for p in points if not math.isnan(_f(p.get("worst")))]
  if not pts:
    return False
  fig, ax = plt.subplots(figsize=(10, 5))
  groups = list(dict.fromkeys(p.get("group", "") for p in pts))
  palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  colors = iter(palette if len(groups) <= len(palette) else plt.cm.tab20.colors)
  for group in groups:
    gp = [p for p in pts if p.get("group", "") == group]
    color = next(colors, "k")
    ax.plot([_f(p["accuracy"]) for p in gp], [_f(p["worst"]) for p in gp],
            "-o" if len(gp) > 1 else "o", color=color, ms=7, label=f"{group}: worst case")
    for p in gp:
      ax.annotate(p["label"], (_f(p["accuracy"]), _f(p["worst"])), fontsize=7,
                  xytext=(4, 3), textcoords="offset points")
      for key, mk, _ in IDENTITY_PARTS:
        ax.plot(_f(p["accuracy"]), _f(p.get(key)), mk, color=color, ms=5, fillstyle="none",
                alpha=0.6)
      if p.get("highlight"):
        text = p["highlight"] if isinstance(p["highlight"], str) else "chosen"
        ax.plot(_f(p["accuracy"]), _f(p["worst"]), "o", ms=15, mfc="none", color="k",
                label=f"{text}: {p['label']}")
  for _, mk, text in IDENTITY_PARTS:
    ax.plot([], [], mk, color="gray", fillstyle="none", label=text)
  ax.axhline(chance, color="gray", ls=":", lw=1, label=f"chance {chance:.3g}")
  for value, ls, text in ((label_only, "-.", "label-only floor, one example"),
                          (label_only_person, (0, (1, 3)), "label-only floor, person")):
    if value is not None and not math.isnan(_f(value)):
      ax.axhline(_f(value), color="tab:red", ls=ls, lw=1, label=f"{text} {_f(value):.3g}")
  if threshold is not None:
    ax.axvline(threshold, color="gray", ls="--", lw=1,
               label=f"budget: accuracy >= {threshold:.4f}")
  ax.set_ylim(0.0, 1.02)
  ax.set_xlabel(xlabel)
  ax.set_ylabel("identity top-1 (attribute attackers trained after freezing)")
  ax.set_title(title or "Task accuracy vs identity leakage", fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
  fig.tight_layout()
  save_figure(fig, path, dpi=110)
  plt.close(fig)
  return True
