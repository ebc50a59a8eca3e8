"""The budget search's report, written from its saved state: DIR/report.md and its figures.

`write_report(workdir, state, confirm)` writes DIR/report.md, DIR/front.png (and
DIR/front_identity.png for the identity objective) and DIR/reconstructions.png from the
search state (`search_state.json`) and the confirmation attacks; `ran_jax.search` calls it
at the end of a search.
"""

from __future__ import annotations

import logging
import math
import os

from ran_jax import storage
from ran_jax.search_space import KNOBS

log = logging.getLogger("ran_jax")


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
  storage.write_text(path, "\n".join(lines))
  return path


# ---------------------------------------------------------------- the function
