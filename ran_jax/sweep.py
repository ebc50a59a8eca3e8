"""Privacy-utility sweep: RAN over lambda, the §3.1 baselines, defences, results.csv, figures.

  python -m ran_jax.sweep --config=configs/mnist_lenet.py --out=/tmp/ran_sweeps/mnist \
      [--lams=0.01,0.1,0.5,0.9] [--noise_factors=0.1,0.5,0.9] [--config.num_epochs=1] \
      [--variant='bn64_s0.5:model.bottleneck_dim=64,model.feature_noise=0.5,ran.lam=1.0']

For every lambda a RAN is trained with `ran_jax.trainer.train_and_evaluate` in
OUT/runs/ran_lam<lambda>, the DNN baseline (lambda = 1.0, see
`ran_jax.privacy.methods`) in OUT/runs/dnn; every point (RAN, DNN,
DNN(resized) and Noisy at each noise factor) is evaluated by the same attackers
into OUT/points/<point>/result.json. The sweep resumes: a point with a
result.json is neither retrained nor re-evaluated, a run with an export is not
retrained (and an interrupted run resumes from its checkpoint); a finished point asked
for more `--attackers` trains only the new families and takes the worst case over all.
A `--variant` (repeatable) is an encoder trained with config overrides, e.g. a defence
(docs/privacy.md). Every config to be trained is validated before anything runs. Finally
it writes OUT/results.csv (schema: `ran_jax.privacy.results.CSV_COLUMNS`), OUT/pareto.png,
OUT/reconstructions.png and OUT/features3d.png.

Identity: with an attribute (the config's data.attribute, or `--attribute`; '' turns it
off) every point is also attacked for it (`ran_jax.privacy.identity`, full attack, test
part, into OUT/points/<point>/identity.json): RAN, DNN and variants as released, Noisy and
DNN(resized) as their noisy releases (`NoisyRelease`, `ResizedRelease`). results.csv gains
the `attribute_*` columns (`results.IDENTITY_COLUMNS`) and OUT/pareto_identity.png is drawn.

`--methods=ran,dnn` (etc.) computes only some of the points and `--attackers`
chooses the attacker families, so that independent processes can fill one sweep
directory in parallel; each point records the evaluation settings it was run with.

Defaults are the paper's grid (lambda 0.01 ... 0.9, noise factors 0.1 ... 0.9);
the MSE convention is the one of `ran_jax.privacy.metrics` (sum over input
values per example, averaged over the test examples; images in [0, 1]).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from ran_jax import config_lib, configs, export, input_pipeline, trainer
from ran_jax.privacy import cli, figures, identity, methods, protocol, results
from ran_jax.privacy.results import setting_key as _key

log = logging.getLogger("ran_jax")

PAPER_LAMS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
PAPER_NOISE = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DNN_LAM = 1.0

METHODS = ("ran", "dnn", "dnn_resized", "noisy", "variant")
IDENTITY_FILE = "identity.json"   # a point's identity attack, beside its result.json


def parse_variant(text: str) -> tuple[str, dict]:
  """'name:section.field=value,section.field=value' -> (name, {dotted field: value}).

  Values are Python literals (numbers, strings in quotes, tuples); a variant is a
  trained encoder with these config overrides, e.g. a defence:
  'bn64_s0.5:model.bottleneck_dim=64,model.feature_noise=0.5,ran.lam=1.0'.
  """
  import ast

  name, _, body = text.partition(":")
  if not name or not body or "/" in name:
    raise ValueError(f"Bad variant {text!r}: expected 'name:section.field=value,...'.")
  overrides = {}
  for item in _split_top(body):
    key, eq, value = item.partition("=")
    if not eq:
      raise ValueError(f"Bad override {item!r} in variant {name!r}: expected field=value.")
    try:
      overrides[key.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      overrides[key.strip()] = value.strip()   # a bare word: a string value
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
        raise ValueError(f"Unknown config field {key!r} in a sweep variant.")
      node = node[part]
    if parts[-1] not in node:
      raise ValueError(f"Unknown config field {key!r} in a sweep variant.")
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
  if os.path.exists(os.path.join(workdir, export.EXPORT_DIR, "model.json")):
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
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  t0 = time.perf_counter()
  result = identity.attack_identity(release(), source, cfg)
  result["eval_seconds"] = time.perf_counter() - t0
  os.makedirs(pdir, exist_ok=True)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2, default=float)
  os.replace(path + ".tmp", path)
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


def run_sweep(config, out: str, lams: Sequence[float] = PAPER_LAMS,
              noise_factors: Sequence[float] = PAPER_NOISE,
              resized_factors: Optional[Sequence[float]] = None,
              eval_cfg: Optional[protocol.AttackConfig] = None, n_components: int = 8,
              show_factor: float = 0.5, train_fn: Callable = trainer.train_and_evaluate,
              make_figures: bool = True, include: Sequence[str] = METHODS,
              variants: Sequence[str] = (), attribute: Optional[str] = None,
              identity_cfg: Optional[identity.IdentityConfig] = None) -> list:
  """Runs (or resumes) the sweep and returns the CSV rows.

  attribute: the sensitive attribute the identity attacks infer at every point (None: the
  config's data.attribute; '': none); identity_cfg: their settings (default: the full
  attack, `identity.IdentityConfig()`), scored on the attack's test part.
  """
  eval_cfg = eval_cfg or protocol.AttackConfig()
  attribute = (config.data.get("attribute", "") if attribute is None else attribute) or ""
  identity_cfg = identity_cfg or identity.IdentityConfig()
  resized_factors = noise_factors if resized_factors is None else resized_factors
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "sweep.json"), "w", encoding="utf-8") as f:
    json.dump({"config": json.loads(config.to_json_best_effort()), "lams": list(lams),
               "noise_factors": list(noise_factors), "resized_factors": list(resized_factors),
               "n_components": n_components, "variants": list(variants),
               "eval": eval_cfg.to_dict(),
               **({"attribute": attribute, "identity": identity_cfg.to_dict()}
                  if attribute else {})}, f, indent=2,
              default=str)
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

  for method, setting, name, value in points:
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
  if make_figures:
    if value_range is None:  # points saved before results recorded it: the images' span
      xs = [a["x_show"] for a in arts.values() if "x_show" in a]
      value_range = ((min(0.0, float(min(x.min() for x in xs))),
                      max(1.0, float(max(x.max() for x in xs)))) if xs else (0.0, 1.0))
    figures.write_figures(rows, arts, out, config.data.name, show_factor, value_range)
    pts = identity_rows(rows)
    if pts:
      chance = next(float(r["attribute_chance"]) for r in rows if r["attribute_chance"] != "")
      figures.identity_front(pts, os.path.join(out, "pareto_identity.png"), chance,
                             title=f"{config.data.name}: task accuracy vs identity "
                                   f"({attribute}) leakage")
  return rows


# ---------------------------------------------------------------- CLI

FLAGS = flags.FLAGS


def _define_flags():
  configs.define_config_flag("config")
  flags.DEFINE_string("out", None, "Sweep directory (runs/, points/, results.csv, figures).")
  flags.DEFINE_list("lams", [_key(v) for v in PAPER_LAMS], "RAN lambdas.")
  flags.DEFINE_list("noise_factors", [_key(v) for v in PAPER_NOISE], "Noisy baseline factors.")
  flags.DEFINE_list("resized_factors", None, "DNN(resized) factors (default: noise_factors).")
  flags.DEFINE_integer("n_components", 8, "Principal components kept by DNN(resized).")
  cli.define_attack_flags()
  cli.define_identity_flags()   # --attribute='' turns the identity attacks off
  flags.DEFINE_float("show_factor", 0.5, "Noise factor shown in the reconstruction grid.")
  flags.DEFINE_list("methods", list(METHODS), "Methods to run (DNN(resized) needs DNN's run).")
  flags.DEFINE_multi_string("variant", [], "A trained encoder with config overrides, e.g. "
                            "'bn64_s0.5:model.bottleneck_dim=64,model.feature_noise=0.5,"
                            "ran.lam=1.0' "
                            "(repeatable).")
  flags.mark_flags_as_required(["config", "out"])


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  eval_cfg = cli.attack_config_from_flags()
  identity_cfg = cli.identity_config_from_flags()
  try:
    resized = [float(v) for v in FLAGS.resized_factors] if FLAGS.resized_factors else None
    rows = run_sweep(FLAGS.config, FLAGS.out, [float(v) for v in FLAGS.lams],
                     [float(v) for v in FLAGS.noise_factors], resized, eval_cfg,
                     FLAGS.n_components, FLAGS.show_factor, include=tuple(FLAGS.methods),
                     variants=tuple(FLAGS.variant), attribute=FLAGS.attribute,
                     identity_cfg=identity_cfg)
  except (config_lib.ConfigError, ValueError) as e:
    config_lib.exit_with_error(str(e))
  for r in rows:
    print(f"{r['method']:12s} {r['setting']:12s} acc {float(r['accuracy']):.4f}  worst "
          f"{r['worst_attacker']:16s} mse_sum {float(r['worst_mse_sum']):9.4g}"
          + (f"  identity {float(r['attribute_worst_top1']):.4f} (chance "
             f"{float(r['attribute_chance']):.4f})" if r["attribute_worst_top1"] != "" else ""))
  print(f"wrote {os.path.join(FLAGS.out, 'results.csv')}")


def run():
  """The command (`ran-sweep`, `python -m ran_jax.sweep`)."""
  from ran_jax import commands

  _define_flags()
  commands.run_app(main, __doc__)


if __name__ == "__main__":
  run()
