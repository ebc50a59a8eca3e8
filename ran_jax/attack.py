"""Attacker evaluation of the frozen encoder of a finished training run.

  ran-attack --workdir=runs/digits                        (python -m ran_jax.attack ...)
  ran-attack --workdir=runs/mnist_private --preset=thorough [--attackers=mlp_decoder,ridge]
  In Python: report = ran_jax.attack(workdir="runs/digits")   # the report as a dict

Trains reconstruction attackers (`ran_jax.privacy.attackers`) from scratch on (input,
released E(input)) pairs of the whole training split by default (encoder frozen; for a
noisy encoder fresh release noise on every batch; early stopping on a validation part),
scores them on the test split's releases together with RAN's own decoder, reports the
service classifier's and a retrained classifier's test accuracy, the worst case over
attackers and, for a noisy release, the Fisher bound.
Writes WORKDIR/eval/result.json (and artifacts.npz; `--eval_dir` for another directory)
and prints a table. MSE convention: see `ran_jax.privacy.metrics`.

Attacker budgets (`--preset`, `ran_jax.privacy.budget`): every attacker is *searched* on
the attacker's validation part under a declared budget, written into the result.
'light' (the default, minutes on 2 CPU cores: the mirrored and MLP decoders and ridge, fits
capped at 15 epochs; identity: logistic regression, MLP, kNN, random forest, extremely
randomized trees, with 1 or 4 noise draws per training input) and 'thorough' (what
published figures use; 'strong' is its earlier name: adds the residual decoder, wider and
deeper MLP decoders, two learning rates, white-box inversion through the encoder, fits to
100 epochs, the means of 4 and 16 releases; identity: capacity grids, gradient-boosted
trees, 16 noise draws). Every worst case carries a convergence mark: 'converged', or
'lower bound' when the last doubling of the fit set or of a searched capacity still moved
it by more than the budget's tolerance. `--attackers`, `--attack_max_epochs` and
`--releases` override the budget's.

Repeated releases: for a noisy release every attacker family is also trained, validated
and scored on the clean features (the limit: an attacker holding the encoder computes
them) and on the mean of N releases of each input (`--releases`; the thorough budget's 4
and 16), under result['releases'].

Identity: with an attribute (`--attribute=subject`, default the run's data.attribute)
attribute attackers (`ran_jax.privacy.identity`) are trained on the releases too, for
one release, N releases of one input, the clean features, the raw input, and N
releases of one person (`--person_releases`: per-release probabilities calibrated on
validation and summed, or a set attacker on the group's pooled statistics, the stronger of
the two); result['identity'].
`--noreconstruction` runs only these.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Optional, Sequence

from ran_jax.privacy import budget as budget_lib

log = logging.getLogger("ran_jax")

# The declared attacker budgets (`ran_jax.privacy.budget`); 'strong' is the earlier name of
# 'thorough'.
PRESETS = {**budget_lib.BUDGETS,
           **{old: budget_lib.BUDGETS[new] for old, new in budget_lib.ALIASES.items()}}


def attack_config(*, preset: str = "light", attackers: Optional[Sequence[str]] = None,
                  attack_max_epochs: Optional[int] = None, attack_train_limit: int = 0,
                  test_limit: int = 0, patience: int = 3, resnet_width: int = 64,
                  attacker_seed: int = 0, **unused):
  """The `protocol.AttackConfig` of a budget (`preset`), explicit choices overriding it.

  Raises ValueError for an unknown budget or attacker family. `unused`: other keywords of
  `ran_jax.attack` (the identity ones), ignored here.
  """
  from ran_jax.privacy import attackers as atk
  from ran_jax.privacy import protocol

  del unused
  b = budget_lib.get_budget(preset)
  r = b.reconstruction
  attackers = tuple(r.attackers if attackers is None else attackers)
  unknown = sorted(set(attackers) - set(protocol.ATTACKERS))
  if unknown:
    raise ValueError(f"attackers: unknown {unknown}; allowed: {list(protocol.ATTACKERS)}.")
  epochs = r.max_epochs if attack_max_epochs is None else int(attack_max_epochs)
  if epochs < 1 or patience < 1:
    raise ValueError("attack_max_epochs and patience must be >= 1.")
  fit = atk.FitConfig(max_epochs=epochs, patience=patience, seed=attacker_seed)
  # The retrained classifier is a utility figure, cheap to fit: the budget's cap applies to
  # the attackers only (an explicit attack_max_epochs caps both).
  classifier_fit = dataclasses.replace(
      fit, max_epochs=max(epochs, budget_lib.BUDGETS["thorough"].reconstruction.max_epochs)
      if attack_max_epochs is None else epochs)
  return protocol.AttackConfig(attack_train_limit=attack_train_limit, test_limit=test_limit,
                               attackers=attackers, attacker_fit=fit,
                               classifier_fit=classifier_fit,
                               seed=attacker_seed, resnet_width=resnet_width,
                               mlp_hidden=tuple(r.mlp_hidden),
                               learning_rates=tuple(r.learning_rates),
                               inversion=r.inversion, inversion_steps=r.inversion_steps,
                               inversion_weights=tuple(r.inversion_weights),
                               fit_fractions=tuple(r.fit_fractions),
                               tolerance=b.reconstruction_tolerance, budget=b.name)


def identity_config(*, preset: str = "light", attacker_seed: int = 0,
                    identity_attackers: Optional[Sequence[str]] = None, identity_seeds: int = 3,
                    releases: Optional[Sequence[int]] = None, person_releases: int = 10,
                    person_groups: int = 1000, **unused):
  """The `identity.IdentityConfig` of the attribute attacks (ValueError for bad values);
  releases: None takes the preset's."""
  from ran_jax.privacy import identity

  del unused
  b = budget_lib.get_budget(preset)
  releases = b.reconstruction.releases if releases is None else releases
  families = tuple(b.identity.families if identity_attackers is None else identity_attackers)
  unknown = sorted(set(families) - set(identity.FAMILIES))
  if unknown or not families:
    raise ValueError(f"identity_attackers: unknown {unknown}; allowed: "
                     f"{list(identity.FAMILIES)}.")
  releases = tuple(int(n) for n in releases)
  if any(n < 2 for n in releases):
    raise ValueError(f"releases={list(releases)}: integers >= 2 expected.")
  if identity_seeds < 1 or person_releases < 0 or person_groups < 1:
    raise ValueError("identity_seeds and person_groups must be >= 1, person_releases >= 0.")
  return identity.IdentityConfig.from_budget(
      b, attackers=families, seeds=tuple(range(attacker_seed, attacker_seed + identity_seeds)),
      releases=releases, person_releases=person_releases, person_groups=person_groups,
      seed=attacker_seed)


def skipped_attackers(cfg) -> list:
  """The reconstruction attacker families an AttackConfig leaves out."""
  from ran_jax.privacy import protocol

  return [a for a in protocol.ATTACKERS if a not in cfg.attackers]


def attack(workdir: str, *, preset: str = "light", attackers: Optional[Sequence[str]] = None,
           attribute: Optional[str] = None, reconstruction: bool = True,
           eval_dir: Optional[str] = None, attack_max_epochs: Optional[int] = None,
           attack_train_limit: int = 0, test_limit: int = 0, patience: int = 3,
           resnet_width: int = 64, attacker_seed: int = 0,
           releases: Optional[Sequence[int]] = None,
           identity_attackers: Optional[Sequence[str]] = None, identity_seeds: int = 3,
           person_releases: int = 10, person_groups: int = 1000,
           progress: bool = True) -> dict:
  """Attacks the frozen encoder of the finished run in `workdir`; returns the report.

  Attackers are trained after freezing on what the server receives (the release, noise
  included) and scored on the test split: the worst case over them is the figure to quote.

  Args:
    workdir: a finished training run (holds export/).
    preset: the attacker budget: 'light' or 'thorough' ('strong': its earlier name); see
      `ran_jax.privacy.budget.BUDGETS` and the module docstring.
    attackers: reconstruction attacker families (default: the preset's), from
      `ran_jax.privacy.protocol.ATTACKERS`.
    attribute: sensitive attribute for the identity attacks (None: the run's
      data.attribute; '': none).
    reconstruction: False runs only the identity attacks.
    eval_dir: where result.json and artifacts.npz go (default WORKDIR/eval).
    attack_max_epochs: epoch cap of each early-stopped fit (default: the preset's).
    attack_train_limit, test_limit: first N training / test examples (0: all).
    patience: epochs without validation improvement before a learning-rate cut or stop.
    resnet_width: channels of the residual decoder's coarsest stage.
    attacker_seed: seed of the attackers' split and fits (identity: the first seed).
    releases: N of the 'mean of N releases of one input' threats (noisy encoders; default:
      the budget's, () for light, (4, 16) for thorough).
    identity_attackers, identity_seeds, person_releases, person_groups: the identity
      attacks (`ran_jax.privacy.identity.IdentityConfig`).
    progress: show a progress bar per phase and per fit on stderr (on a terminal; a log
      gets the per-attacker lines and, per fit, its epochs with the time left at most).

  Returns:
    The report written to EVAL_DIR/result.json: 'name', 'accuracy' (the service
    classifier on the releases), 'accuracy_retrained', 'attackers' ({family: {'mse_sum',
    'mse_mean', 'psnr', 'ssim', 'epochs', 'converged', ...}}), 'worst' (the worst case
    and its attacker), 'releases' (noisy encoders), 'fisher_bound' (noisy encoders),
    'identity' (with an attribute), 'eval_config', 'preset', 'skipped_attackers'.

  Raises:
    FileNotFoundError, ran_jax.checkpointing.CheckpointError: no finished run in workdir.
    ran_jax.data.source.DataError: the dataset cannot be loaded.
    ValueError: a bad argument.
  """
  from ran_jax import export, input_pipeline
  from ran_jax import progress as job_progress
  from ran_jax.privacy import protocol

  job_progress.ensure_logging()   # INFO lines on stderr, unless the caller configured logging

  cfg = attack_config(preset=preset, attackers=attackers, attack_max_epochs=attack_max_epochs,
                      attack_train_limit=attack_train_limit, test_limit=test_limit,
                      patience=patience, resnet_width=resnet_width, attacker_seed=attacker_seed)
  icfg = identity_config(preset=preset, attacker_seed=attacker_seed,
                         identity_attackers=identity_attackers,
                         identity_seeds=identity_seeds, releases=releases,
                         person_releases=person_releases, person_groups=person_groups)
  trained = export.load_trained(workdir)
  attribute = (attribute if attribute is not None
               else trained.config.data.get("attribute", "")) or ""
  data_config = trained.config.data
  data_config.attribute = attribute
  source = input_pipeline.load_dataset(data_config)
  name = f"lam={trained.config.ran.lam:g}"
  phases = (["reconstruction"] if reconstruction else []) + (["identity"] if attribute else [])
  bar = job_progress.open_bar(len(phases), desc="ran-attack", unit="phase",
                              enabled=None if progress else False)
  log.info("attack: budget %s (%s)", budget_lib.get_budget(preset).name,
           budget_lib.get_budget(preset).describe())
  try:
    with job_progress.bars(None if progress else False):
      result, art = _attack_phases(trained, source, cfg, icfg, name, preset, reconstruction,
                                   attribute, bar)
  finally:
    bar.close()
  protocol.save(eval_dir or os.path.join(workdir, "eval"), result, art)
  return result


def _attack_phases(trained, source, cfg, icfg, name, preset, reconstruction, attribute, bar):
  from ran_jax.privacy import identity, methods, protocol

  result, art = {"name": name}, {}
  if reconstruction:
    skipped = skipped_attackers(cfg)
    if skipped:
      log.info("attack: skipping %s (budget %s; --preset=thorough or --attackers adds them)",
               ", ".join(skipped), preset)
    bar.set_postfix_str(f"reconstruction: {', '.join(cfg.attackers)}")
    data = protocol.prepare_data(source, cfg)
    result, art = methods.attack_trained(trained, data, cfg, name=name, releases=icfg.releases,
                                         clean=True)
    result["skipped_attackers"] = skipped
    bar.update()
  result["preset"] = preset
  result["budget"] = budget_lib.get_budget(preset).to_dict()
  result["eval_config"] = cfg.to_dict()
  if attribute:
    bar.set_postfix_str(f"identity ({attribute})")
    result["identity"] = identity.attack_identity(trained, source, icfg)
    bar.update()
  return result, art


# ---------------------------------------------------------------- the report


def _row(label: str, m: dict, mark: str = "") -> str:
  return (f"{label:28s}{m['mse_sum']:10.4g}{m['mse_mean']:10.4g}{m['psnr']:8.2f}"
          f"{m['ssim']:8.4f}" + (f"  {mark}" if mark else ""))


def format_table(result: dict) -> str:
  """The report as the command prints it."""
  from ran_jax.privacy import identity

  lines = []
  if result.get("attackers"):
    lines += [f"{result['name']}: accuracy {result.get('accuracy', float('nan')):.4f}, "
              f"retrained {result.get('accuracy_retrained', float('nan')):.4f}",
              f"{'attacker':28s}{'mse_sum':>10s}{'mse_mean':>10s}{'psnr':>8s}{'ssim':>8s}"
              "  convergence"]
    for a, m in result["attackers"].items():
      cap = "" if m.get("converged", True) else "fit stopped at its epoch cap"
      lines.append(_row(a, m, cap))
    w = result["worst"]
    lines.append(_row(f"worst ({w['attacker']})", w,
                      budget_lib.mark_label(w.get("convergence"))))
    for name, rel in result.get("releases", {}).items():
      w = rel["worst"]
      lines.append(_row(f"{name} ({w['attacker']})", w,
                        budget_lib.mark_label(w.get("convergence"))))
    ref = result.get("reference", {})
    if ref.get("label_only"):
      lines.append(_row("label-only level", ref["label_only"], "the class-mean input"))
    if result.get("skipped_attackers"):
      lines.append(f"skipped attackers: {', '.join(result['skipped_attackers'])} (budget "
                   f"{result.get('preset', 'light')}; --preset=thorough adds them)")
  if result.get("identity"):
    lines.append(identity.format_identity(result["identity"]))
  return "\n".join(lines)


# ---------------------------------------------------------------- CLI


def define_flags():
  """The command's flags (defined when it runs, so importing this module defines none)."""
  from absl import flags

  from ran_jax import commands

  flags.DEFINE_string("workdir", None, "A finished training run (holds export/); the report "
                      "goes to WORKDIR/eval unless --eval_dir.")
  flags.DEFINE_string("eval_dir", None, "Directory for result.json and artifacts.npz "
                      "(default WORKDIR/eval).")
  flags.DEFINE_bool("reconstruction", True, "Train the reconstruction attackers (False: only "
                    "the attribute attacks).")
  commands.define_attack_flags()
  commands.define_identity_flags()
  flags.mark_flag_as_required("workdir")


def main(argv):
  del argv
  from absl import flags

  from ran_jax import commands, config_lib
  from ran_jax.checkpointing import CheckpointError
  from ran_jax.data.source import DataError

  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  f = flags.FLAGS
  try:
    result = attack(f.workdir, attribute=f.attribute, reconstruction=f.reconstruction,
                    eval_dir=f.eval_dir, **commands.attack_options_from_flags())
  except (FileNotFoundError, CheckpointError, DataError, ValueError) as e:
    config_lib.exit_with_error(str(e))
  print(format_table(result))
  print(f"wrote {os.path.join(f.eval_dir or os.path.join(f.workdir, 'eval'), 'result.json')}")


def run():
  """The command (`ran-attack`, `python -m ran_jax.attack`)."""
  from ran_jax import commands

  define_flags()
  commands.run_app(main, __doc__, renamed=commands.RENAMED["attack"])


if __name__ == "__main__":
  run()
else:
  from ran_jax import commands as _commands

  _commands.callable_module(__name__)
