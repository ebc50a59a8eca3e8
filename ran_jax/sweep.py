"""Privacy-utility sweep: RAN over lambda, the §3.1 baselines, defences, results.csv, figures.

  ran-sweep --config=digits_lenet --workdir=runs/sweep_digits     (python -m ran_jax.sweep ...)
  ran-sweep --config=mnist_lenet --workdir=/tmp/ran_sweeps/mnist --lams=paper \\
      --noise_factors=paper --preset=strong [--config.num_epochs=1] \\
      [--variant='bn64_s0.5:config.model.bottleneck_dim=64,config.model.feature_noise=0.5']
  In Python: rows = ran_jax.sweep("digits_lenet", "runs/sweep_digits")

For every lambda a RAN is trained with `ran_jax.train.train_and_deploy` in
WORKDIR/runs/ran_lam<lambda>, the DNN baseline (lambda = 1.0, see
`ran_jax.privacy.methods`) in WORKDIR/runs/dnn; every point (RAN, DNN,
DNN(resized) and Noisy at each noise factor) is evaluated by the same attackers
(`--preset`, as `ran-attack`) into WORKDIR/points/<point>/result.json. The sweep resumes:
a point with a result.json is neither retrained nor re-evaluated, a run with an export is
not retrained (and an interrupted run resumes from its checkpoint); a finished point asked
for more `--attackers` trains only the new families and takes the worst case over all.
A `--variant` (repeatable) is an encoder trained with config overrides, spelled as on the
command line without the dashes (`NAME:config.<section>.<field>=VALUE,...`), e.g. a
defence (the documentation's results page 'Reconstruction privacy and defences').
`--config.<field>=VALUE` overrides apply to every point. Every config to be trained is
validated before anything runs. Finally it writes WORKDIR/results.csv (schema:
`ran_jax.privacy.results.CSV_COLUMNS`), WORKDIR/pareto.png, WORKDIR/reconstructions.png
and WORKDIR/features3d.png.

Identity: with an attribute (the config's data.attribute, or `--attribute`; '' turns it
off) every point is also attacked for it (`ran_jax.privacy.identity`, full attack, test
part, into WORKDIR/points/<point>/identity.json): RAN, DNN and variants as released, Noisy
and DNN(resized) as their noisy releases (`NoisyRelease`, `ResizedRelease`). results.csv
gains the `attribute_*` columns (`results.IDENTITY_COLUMNS`) and
WORKDIR/pareto_identity.png is drawn.

`--methods=ran,dnn` (etc.) computes only some of the points and `--attackers`
chooses the attacker families, so that independent processes can fill one sweep
directory in parallel; each point records the evaluation settings it was run with.

Default grid (no grid flag): lambda 0.1, 0.5, 0.9 and noise factors 0.3, 0.6 (4
trainings, 8 points: minutes on the digits default). `--lams=paper` and
`--noise_factors=paper` select the paper's grid (lambda 0.01 ... 0.9, noise factors
0.1 ... 0.9: 13 trainings, 31 points). The MSE convention is the one of
`ran_jax.privacy.metrics` (sum over input values per example, averaged over the test
examples; images in [0, 1]).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ran_jax import config_lib, export, input_pipeline, storage
from ran_jax import train as train_job
from ran_jax.privacy import figures, identity, methods, protocol, results
from ran_jax.privacy.results import setting_key as _key

log = logging.getLogger("ran_jax")

PAPER_LAMS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
PAPER_NOISE = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DEFAULT_LAMS = (0.1, 0.5, 0.9)   # a first sweep: minutes on the digits default
DEFAULT_NOISE = (0.3, 0.6)
GRIDS = {"paper": (PAPER_LAMS, PAPER_NOISE), "default": (DEFAULT_LAMS, DEFAULT_NOISE)}
DNN_LAM = 1.0

METHODS = ("ran", "dnn", "dnn_resized", "noisy", "variant")
IDENTITY_FILE = "identity.json"   # a point's identity attack, beside its result.json


def parse_variant(text: str) -> tuple[str, dict]:
  """'name:config.section.field=value,config.section.field=value' -> (name, {field: value}).

  The overrides are spelled as on the command line without the dashes
  (`config.model.feature_noise=0.5`); values are Python literals (numbers, strings in
  quotes, tuples), a bare word is a string. A variant is a trained encoder with these
  config overrides, e.g. a defence:
  'bn64_s0.5:config.model.bottleneck_dim=64,config.model.feature_noise=0.5,config.ran.lam=1.0'.
  The older spelling without 'config.' still works for one release, with a note.
  """
  import ast

  name, _, body = text.partition(":")
  if not name or not body or "/" in name:
    raise ValueError(f"Bad variant {text!r}: expected 'name:config.section.field=value,...'.")
  overrides, old = {}, []
  for item in _split_top(body):
    key, eq, value = item.partition("=")
    if not eq:
      raise ValueError(f"Bad override {item!r} in variant {name!r}: expected "
                       "config.section.field=value.")
    key = key.strip().lstrip("-")
    if key.startswith("config."):
      key = key[len("config."):]
    else:
      old.append(key)
    try:
      overrides[key] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      overrides[key] = value.strip()   # a bare word: a string value
  if old:
    from ran_jax.commands import deprecation_note

    log.warning(deprecation_note(f"the variant override spelling {old[0]}=...",
                                 f"config.{old[0]}=... (as --config.{old[0]}=...)"))
  return name, overrides


def _split_top(body: str) -> list:
  """Splits on commas outside parentheses (tuple values stay whole)."""
  parts, depth, cur = [], 0, ""
  for ch in body:
    depth += ch in "(["
    depth -= ch in ")]"
    if ch == "," and depth == 0:
      parts.append(cur)
      cur = ""
    else:
      cur += ch
  return [p for p in parts + [cur] if p.strip()]


def apply_overrides(config, overrides: dict):
  """A copy of config with dotted-field overrides applied (unknown fields refused)."""
  cfg = config.copy_and_resolve_references()
  for key, value in overrides.items():
    node, parts = cfg, key.split(".")
    for part in parts[:-1]:
      if part not in node:
        raise ValueError(f"Unknown config field {key!r}.")
      node = node[part]
    if parts[-1] not in node:
      raise ValueError(f"Unknown config field {key!r}.")
    node[parts[-1]] = value
  return cfg


def plan(lams: Sequence[float], noise_factors: Sequence[float],
         resized_factors: Sequence[float], include: Sequence[str] = METHODS,
         variants: Sequence[str] = ()) -> list:
  """The points of a sweep, in order: (method, setting, point directory name, value)."""
  pts = [("ran", f"lam={_key(lam)}", f"ran_lam{_key(lam)}", float(lam)) for lam in lams]
  pts.append(("dnn", f"lam={_key(DNN_LAM)}", "dnn", DNN_LAM))
  pts += [("dnn_resized", f"factor={_key(f)}", f"dnn_resized_f{_key(f)}", float(f))
          for f in resized_factors]
  pts += [("noisy", f"factor={_key(f)}", f"noisy_f{_key(f)}", float(f)) for f in noise_factors]
  for text in variants:
    name, overrides = parse_variant(text)
    pts.append(("variant", name, f"variant_{name}", overrides))
  unknown = set(include) - set(METHODS)
  if unknown:
    raise ValueError(f"Unknown methods {sorted(unknown)}; allowed: {METHODS}.")
  return [p for p in pts if p[0] in include]


def train_point(config, value, workdir: str, train_fn: Callable) -> float:
  """Trains unless the workdir already holds an export; returns seconds spent.

  value: lambda (RAN, DNN) or a dict of config overrides (a variant).
  """
  if storage.exists(os.path.join(workdir, export.EXPORT_DIR, "model.json")):
    return 0.0
  cfg = _point_config(config, value)
  t0 = time.perf_counter()
  train_fn(cfg, workdir)
  return time.perf_counter() - t0


def _point_config(config, value):
  """The config a trained point uses: lambda set (RAN, DNN) or overrides applied (variant)."""
  if isinstance(value, dict):
    return apply_overrides(config, value)
  cfg = config.copy_and_resolve_references()
  cfg.ran.lam = float(value)
  return cfg


def _missing_attackers(result: dict, eval_cfg) -> list:
  """Trained-attacker families requested now that a saved point does not have yet."""
  have = set(result.get("attackers", {}))
  return [a for a in eval_cfg.attackers if a in protocol.ATTACKERS and a not in have]


class NoisyRelease:
  """The Noisy baseline as a release for the identity attacks: x + Laplace noise of `scale`
  (clean features: the raw input)."""

  def __init__(self, scale: float):
    self.feature_noise = float(scale)

  def features(self, x):
    return x

  def encode(self, x, key=None):
    return x + self.feature_noise * jax.random.laplace(key, x.shape, x.dtype)


class ResizedRelease:
  """DNN(resized) (`methods.ResizedEncoder`) as a release for the identity attacks: the DNN
  features on their top principal components plus Laplace noise, mapped back (clean
  features: the projection without noise)."""

  def __init__(self, trained, enc: methods.ResizedEncoder):
    self.trained, self.shape = trained, enc.shape
    self.mean, self.components, self.scale = (jnp.asarray(a, jnp.float32) for a in
                                              (enc.mean, enc.components, enc.scale))
    self.feature_noise = 1.0   # noisy: repeated releases differ

  def _project(self, x):
    z = self.trained.features(x).reshape(x.shape[0], -1)
    return (z - self.mean) @ self.components.T                   # [B, k]

  def _back(self, p):
    return (p @ self.components + self.mean).reshape((-1,) + tuple(self.shape))

  def features(self, x):
    return self._back(self._project(x))

  def encode(self, x, key=None):
    p = self._project(x)
    return self._back(p + jax.random.laplace(key, p.shape, p.dtype) * self.scale)


def identity_point(pdir: str, release, source, cfg: identity.IdentityConfig) -> dict:
  """PDIR/identity.json: `identity.attack_identity(release, source, cfg)`, computed unless
  there (then read back), so a resumed sweep does not attack a point twice."""
  path = os.path.join(pdir, IDENTITY_FILE)
  if storage.exists(path):
    return json.loads(storage.read_text(path))
  t0 = time.perf_counter()
  result = identity.attack_identity(release(), source, cfg)
  result["eval_seconds"] = time.perf_counter() - t0
  storage.makedirs(pdir)
  storage.write_text(path, json.dumps(result, indent=2, default=float))
  return result


def identity_rows(rows: list) -> list:
  """Rows with an identity score -> `figures.identity_front` points (one group per method)."""
  names = {"ran": "RAN", "dnn": "DNN", "dnn_resized": "DNN(resized)", "noisy": "Noisy"}
  key = lambda r: (_num(r["lam"]) if r["method"] == "ran" else _num(r["noise_factor"]))  # noqa
  pts = []
  for r in sorted((r for r in rows if r.get("attribute_worst_top1") != ""),
                  key=lambda r: (METHODS.index(r["method"]), key(r))):
    pts.append({"label": r["setting"], "accuracy": r["accuracy"],
                "group": r["setting"] if r["method"] == "variant" else names[r["method"]],
                **{k: r[f"attribute_{k}_top1"] for k in ("single", "clean", "person", "worst")}})
  return pts


def _num(v) -> float:
  try:
    return float(v)
  except (TypeError, ValueError):
    return 0.0


def same_encoder_note(config, out: str, points) -> Optional[str]:
  """Why every lambda gave one row, when the trained points (RAN's lambdas and the DNN) ended
  with the same test metrics; None when they differ or fewer than two were trained."""
  finals = []
  for method, _, name, _ in points:
    path = os.path.join(out, "runs", name, "final_metrics.json")
    if method in ("ran", "dnn") and storage.exists(path):
      finals.append(json.loads(storage.read_text(path)))
  if len(finals) < 2:
    return None
  first = finals[0]
  if any(not math.isclose(m[k], first[k], rel_tol=1e-5, abs_tol=1e-6)
         for m in finals for k in ("accuracy", "recon_sse")):
    return None
  same = (f"every lambda and the DNN trained the same encoder (test accuracy "
          f"{first['accuracy']:.4f}, reconstruction error {first['recon_sse']:.4g} at each of "
          f"{len(finals)} points, {first.get('step', '?')} steps)")
  psnr = float(config.ran.target_psnr or 0.0)
  if psnr > 0:
    return (same + f": the reconstruction term stayed capped at ran.target_psnr={psnr:g} dB "
            "for the whole run (RAN's decoder never got below that error), so the encoder's "
            "loss was lambda times its cross-entropy, and Adam's steps do not depend on that "
            "factor. Full-length runs reach the target and lambda takes effect; a short sweep "
            "shows it with --config.ran.target_psnr=0.")
  return same + ": the runs are too short for lambda to change the encoder."


def run_sweep(config, out: str, lams: Sequence[float] = PAPER_LAMS,
              noise_factors: Sequence[float] = PAPER_NOISE,
              resized_factors: Optional[Sequence[float]] = None,
              eval_cfg: Optional[protocol.AttackConfig] = None, n_components: int = 8,
              show_factor: float = 0.5, train_fn: Callable = train_job.train_and_deploy,
              make_figures: bool = True, include: Sequence[str] = METHODS,
              variants: Sequence[str] = (), attribute: Optional[str] = None,
              identity_cfg: Optional[identity.IdentityConfig] = None,
              progress: bool = False) -> list:
  """Runs (or resumes) the sweep in directory `out` and returns the CSV rows (the engine of
  `sweep`, with the attack settings as configs).

  attribute: the sensitive attribute the identity attacks infer at every point (None: the
  config's data.attribute; '': none); identity_cfg: their settings (default: the full
  attack, `identity.IdentityConfig()`), scored on the attack's test part.
  """
  eval_cfg = eval_cfg or protocol.AttackConfig()
  attribute = (config.data.get("attribute", "") if attribute is None else attribute) or ""
  identity_cfg = identity_cfg or identity.IdentityConfig()
  resized_factors = noise_factors if resized_factors is None else resized_factors
  storage.makedirs(out)
  storage.write_text(os.path.join(out, "sweep.json"), json.dumps(
      {"config": json.loads(config.to_json_best_effort()), "lams": list(lams),
       "noise_factors": list(noise_factors), "resized_factors": list(resized_factors),
       "n_components": n_components, "variants": list(variants), "eval": eval_cfg.to_dict(),
       **({"attribute": attribute, "identity": identity_cfg.to_dict()} if attribute else {})},
      indent=2, default=str))
  points = plan(lams, noise_factors, resized_factors, include, variants)
  # Every config the sweep will train, checked before anything is trained or loaded.
  for method, _, name, value in points:
    if method in ("ran", "dnn", "variant"):
      try:
        config_lib.validate_config(_point_config(config, value))
      except config_lib.ConfigError as e:
        raise config_lib.ConfigError(f"sweep point {name}: {e}") from None
  data = None
  dnn_trained = None
  rows, arts, value_range = [], {}, None
  id_source = None
  if attribute:   # loaded first: an unknown attribute stops the sweep before any training
    data_config = config.data.copy_and_resolve_references()
    data_config.attribute = attribute
    id_source = input_pipeline.load_dataset(data_config)

  def identity_of(method: str, value, name: str, pdir: str) -> Optional[dict]:
    """The point's identity headline (attacking it unless done), or None without attribute."""
    if not attribute:
      return None

    def release():
      nonlocal dnn_trained
      if method in ("ran", "dnn", "variant"):
        return export.load_trained(os.path.join(out, "runs", name))
      if method == "noisy":
        lo, hi = id_source.value_range
        return NoisyRelease(float(value) * (hi - lo))
      if dnn_trained is None:
        dnn_trained = export.load_trained(os.path.join(out, "runs", "dnn"))
      # the public projection, fitted on training features as for the reconstruction attack
      fit = id_source.train.get(np.arange(min(len(id_source.train), 4096)))["image"]
      return ResizedRelease(dnn_trained, methods.ResizedEncoder(
          dnn_trained, fit, float(value), n_components, seed=identity_cfg.seed))

    log.info("=== sweep point %s: identity (%s)", name, attribute)
    return identity.headline(identity_point(pdir, release, id_source, identity_cfg))

  from ran_jax import progress as job_progress

  # A bar on a terminal (with `progress`), and a line with the ETA after every point.
  bar = job_progress.Track(points, desc="ran-sweep", unit="point",
                           enabled=None if progress else False)
  for method, setting, name, value in bar:
    bar.set_postfix_str(name)
    pdir = os.path.join(out, "points", name)
    result, art = protocol.load(pdir)
    if result is None:
      log.info("=== sweep point %s %s", method, setting)
      if data is None:
        data = protocol.prepare_data(input_pipeline.load_dataset(config.data), eval_cfg)
      t_train = 0.0
      if method in ("ran", "dnn", "variant"):
        wd = os.path.join(out, "runs", name)
        t_train = train_point(config, value, wd, train_fn)
        t0 = time.perf_counter()
        result, art = methods.attack_trained(export.load_trained(wd), data, eval_cfg, name=name)
      elif method == "dnn_resized":
        if dnn_trained is None:
          dnn_trained = export.load_trained(os.path.join(out, "runs", "dnn"))
        t0 = time.perf_counter()
        result, art = methods.attack_dnn_resized(dnn_trained, data, eval_cfg, value,
                                                   n_components, name=name)
      else:
        t0 = time.perf_counter()
        result, art = methods.attack_noisy(config.model, data, eval_cfg, value, name=name)
      result.update(method=method, setting=setting, train_seconds=t_train,
                    eval_seconds=time.perf_counter() - t0, eval_config=eval_cfg.to_dict())
      protocol.save(pdir, result, art)
    elif method in ("ran", "dnn", "variant") and _missing_attackers(result, eval_cfg):
      # A finished point asked for more attacker families: train only those, and the
      # worst case is taken over all of them.
      missing = _missing_attackers(result, eval_cfg)
      log.info("=== sweep point %s %s: adding attackers %s", method, setting, missing)
      if data is None:
        data = protocol.prepare_data(input_pipeline.load_dataset(config.data), eval_cfg)
      extra_cfg = dataclasses.replace(eval_cfg, attackers=tuple(missing), retrain_classifier=False)
      t0 = time.perf_counter()
      extra, extra_art = methods.attack_trained(
          export.load_trained(os.path.join(out, "runs", name)), data, extra_cfg, name=name)
      result["attackers"].update({a: extra["attackers"][a] for a in missing})
      result["worst"] = protocol.worst_case(result["attackers"])
      result["eval_seconds"] = result.get("eval_seconds", 0.0) + time.perf_counter() - t0
      result.setdefault("added_attackers", []).extend(missing)
      art.update({k: v for k, v in extra_art.items() if k.startswith("rec_")})
      protocol.save(pdir, result, art)
    else:
      log.info("=== sweep point %s %s: done, skipped", method, setting)
    rows.append(results.to_row(method, setting, result, identity_of(method, value, name, pdir)))
    arts[name] = art
    if value_range is None and result.get("value_range"):
      value_range = tuple(result["value_range"])
  results.write_csv(rows, os.path.join(out, "results.csv"))
  note = same_encoder_note(config, out, points)
  if note:
    log.warning("%s", note)
  if make_figures:
    if value_range is None:  # points saved before results recorded it: the images' span
      xs = [a["x_show"] for a in arts.values() if "x_show" in a]
      value_range = ((min(0.0, float(min(x.min() for x in xs))),
                      max(1.0, float(max(x.max() for x in xs)))) if xs else (0.0, 1.0))
    figures.write_figures(rows, arts, out, config.data.name, show_factor, value_range)
    pts = identity_rows(rows)
    if pts:
      chance = next(float(r["attribute_chance"]) for r in rows if r["attribute_chance"] != "")
      floors = [next((r[c] for r in rows if r.get(c, "") not in ("", None)), None)
                for c in ("attribute_label_only_top1", "attribute_label_only_person_top1")]
      figures.identity_front(pts, os.path.join(out, "pareto_identity.png"), chance,
                             title=f"{config.data.name}: task accuracy vs identity "
                                   f"({attribute}) leakage",
                             label_only=floors[0], label_only_person=floors[1])
  return rows


def sweep(config, workdir: str, *, lams: Sequence[float] = DEFAULT_LAMS,
          noise_factors: Sequence[float] = DEFAULT_NOISE,
          resized_factors: Optional[Sequence[float]] = None, methods: Sequence[str] = METHODS,
          variants: Sequence = (), attribute: Optional[str] = None, n_components: int = 8,
          show_factor: float = 0.5, figures: bool = True, progress: bool = True,
          **attack_options) -> list:
  """Trains and attacks RAN over lambda, the DNN and the §3.1 baselines; returns the rows.

  Args:
    config: a ConfigDict or a config spec ("digits_lenet", "configs/x.py:smoke"); every
      trained point starts from it.
    workdir: the sweep directory (runs/, points/, results.csv, figures); a rerun resumes.
    lams: RAN lambdas (default `DEFAULT_LAMS`; `PAPER_LAMS` is the paper's grid).
    noise_factors: the Noisy baseline's factors (default `DEFAULT_NOISE`; `PAPER_NOISE`).
    resized_factors: DNN(resized) factors (default: noise_factors).
    methods: which points to compute, from `METHODS`.
    variants: encoders trained with config overrides: strings
      'NAME:config.section.field=VALUE,...' or (name, {dotted field: value}) pairs.
    attribute: the sensitive attribute the identity attacks infer at every point (None:
      the config's data.attribute; '': none).
    n_components: principal components kept by DNN(resized).
    show_factor: noise factor shown in the reconstruction figure.
    figures: draw pareto.png, reconstructions.png, features3d.png (and pareto_identity.png).
    progress: a progress bar over the points, with an ETA, on stderr.
    **attack_options: the attackers, as `ran_jax.attack` takes them: preset ('light' by
      default, or 'strong'), attackers, attack_max_epochs, attacker_seed,
      attack_train_limit, test_limit, patience, resnet_width, and for the identity attacks
      identity_attackers, identity_seeds, releases, person_releases, person_groups.

  Returns:
    The rows of WORKDIR/results.csv (dicts keyed by `ran_jax.privacy.results.CSV_COLUMNS`).
  """
  from ran_jax import attack, configs
  from ran_jax import progress as job_progress

  job_progress.ensure_logging()   # INFO lines on stderr, unless the caller configured logging
  if isinstance(config, str):
    config = configs.get_config(config)
  known = set(_ATTACK_OPTIONS)
  unknown = sorted(set(attack_options) - known)
  if unknown:
    raise TypeError(f"sweep() got unexpected keyword arguments {unknown}; attack options: "
                    f"{sorted(known)}.")
  texts = [v if isinstance(v, str) else
           f"{v[0]}:" + ",".join(f"config.{k}={v[1][k]!r}" for k in v[1]) for v in variants]
  return run_sweep(config, workdir, lams, noise_factors, resized_factors,
                   attack.attack_config(**attack_options), n_components, show_factor,
                   make_figures=figures, include=tuple(methods), variants=tuple(texts),
                   attribute=attribute, identity_cfg=attack.identity_config(**attack_options),
                   progress=progress)


_ATTACK_OPTIONS = ("preset", "attackers", "attack_max_epochs", "attack_train_limit",
                   "test_limit", "patience", "resnet_width", "attacker_seed",
                   "identity_attackers", "identity_seeds", "releases", "person_releases",
                   "person_groups")


# ---------------------------------------------------------------- CLI


def _grid_flag(values, name: str) -> tuple:
  """--lams / --noise_factors: numbers, or 'paper' / 'default' for a named grid."""
  if len(values) == 1 and values[0] in GRIDS:
    return GRIDS[values[0]][0 if name == "lams" else 1]
  try:
    return tuple(float(v) for v in values)
  except ValueError:
    raise ValueError(f"--{name}={','.join(values)}: numbers, or one of {sorted(GRIDS)}.") from None


def define_flags():
  """The command's flags (defined when it runs, so importing this module defines none)."""
  from absl import flags

  from ran_jax import commands, configs

  configs.define_config_flag("config")
  flags.DEFINE_string("workdir", None, "Sweep directory (runs/, points/, results.csv, figures).")
  flags.DEFINE_list("lams", [_key(v) for v in DEFAULT_LAMS],
                    "RAN lambdas, or 'paper' for the paper's 12.")
  flags.DEFINE_list("noise_factors", [_key(v) for v in DEFAULT_NOISE],
                    "Noisy baseline factors, or 'paper' for the paper's 9.")
  flags.DEFINE_list("resized_factors", None, "DNN(resized) factors (default: noise_factors).")
  flags.DEFINE_integer("n_components", 8, "Principal components kept by DNN(resized).")
  commands.define_attack_flags()
  commands.define_identity_flags()   # --attribute='' turns the identity attacks off
  flags.DEFINE_float("show_factor", 0.5, "Noise factor shown in the reconstruction grid.")
  flags.DEFINE_list("methods", list(METHODS), "Methods to run (DNN(resized) needs DNN's run).")
  flags.DEFINE_multi_string("variant", [], "A trained encoder with config overrides, spelled "
                            "as on the command line without the dashes, e.g. "
                            "'bn64_s0.5:config.model.bottleneck_dim=64,"
                            "config.model.feature_noise=0.5,config.ran.lam=1.0' (repeatable).")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  from absl import flags

  from ran_jax import commands

  FLAGS = flags.FLAGS
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  try:
    resized = [float(v) for v in FLAGS.resized_factors] if FLAGS.resized_factors else None
    rows = sweep(FLAGS.config, FLAGS.workdir, lams=_grid_flag(FLAGS.lams, "lams"),
                 noise_factors=_grid_flag(FLAGS.noise_factors, "noise_factors"),
                 resized_factors=resized, methods=tuple(FLAGS.methods),
                 variants=tuple(FLAGS.variant), attribute=FLAGS.attribute,
                 n_components=FLAGS.n_components, show_factor=FLAGS.show_factor,
                 **commands.attack_options_from_flags())
  except (config_lib.ConfigError, ValueError) as e:
    config_lib.exit_with_error(str(e))
  for r in rows:
    print(f"{r['method']:12s} {r['setting']:12s} acc {float(r['accuracy']):.4f}  worst "
          f"{r['worst_attacker']:16s} mse_sum {float(r['worst_mse_sum']):9.4g}"
          + (f"  identity {float(r['attribute_worst_top1']):.4f} (chance "
             f"{float(r['attribute_chance']):.4f})" if r["attribute_worst_top1"] != "" else ""))
  print(f"wrote {os.path.join(FLAGS.workdir, 'results.csv')}")


def run():
  """The command (`ran-sweep`, `python -m ran_jax.sweep`)."""
  from ran_jax import commands

  define_flags()
  commands.run_app(main, __doc__, renamed=commands.RENAMED["sweep"])


if __name__ == "__main__":
  run()
else:
  from ran_jax import commands as _commands

  _commands.callable_module(__name__)
