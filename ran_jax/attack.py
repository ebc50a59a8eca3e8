"""Attacker evaluation of the frozen encoder of a finished training run.

  ran-attack --workdir=runs/digits                        (python -m ran_jax.attack ...)
  ran-attack --workdir=runs/mnist_private --preset=strong [--attackers=mlp_decoder,ridge]
  In Python: report = ran_jax.attack(workdir="runs/digits")   # the report as a dict

Trains reconstruction attackers (`ran_jax.privacy.attackers`) from scratch on (input,
released E(input)) pairs of the whole training split by default (encoder frozen; for a
noisy encoder fresh release noise on every batch; early stopping on a validation part),
scores them on the test split's releases together with RAN's own decoder, reports the
service classifier's and a retrained classifier's test accuracy, the worst case over
attackers and, for a noisy release, the Fisher bound.
Writes WORKDIR/eval/result.json (and artifacts.npz; `--eval_dir` for another directory)
and prints a table. MSE convention: see `ran_jax.privacy.metrics`.

Presets (`--preset`): 'light' (the default, minutes on 2 CPU cores: the mirrored and MLP
decoders and ridge, each fit capped at 15 epochs) and 'strong' (adds the residual
decoder, the strongest and slowest attacker, caps at 100 epochs and adds the means of 4
and 16 releases: what published figures use). The command prints the attackers a preset
skipped. `--attackers`, `--attack_max_epochs` and `--releases` override the preset's.

Repeated releases: for a noisy release every attacker family is also trained, validated
and scored on the clean features (the limit: an attacker holding the encoder computes
them) and on the mean of N releases of each input (`--releases`; the strong preset's 4
and 16), under result['releases'].

Identity: with an attribute (`--attribute=subject`, default the run's data.attribute)
attribute attackers (`ran_jax.privacy.identity`) are trained on the releases too, for
one release, N releases of one input, the clean features, the raw input, and N
releases of one person (`--person_releases`); result['identity'].
`--noreconstruction` runs only these.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Optional, Sequence

log = logging.getLogger("ran_jax")


@dataclasses.dataclass(frozen=True)
class Preset:
  """How hard the reconstruction attackers try: which families, and each fit's epoch cap."""

  attackers: tuple
  max_epochs: int
  releases: tuple   # N of the 'mean of N releases of one input' threats (noisy encoders)

  def describe(self) -> str:
    means = (f", the mean of {'/'.join(map(str, self.releases))} releases too"
             if self.releases else "")
    return (f"{', '.join(self.attackers)}, at most {self.max_epochs} epochs per fit, one "
            f"release and the clean features{means}")


PRESETS = {
    "light": Preset(("mirrored_decoder", "mlp_decoder", "ridge"), 15, ()),
    "strong": Preset(("mirrored_decoder", "mlp_decoder", "resnet_decoder", "ridge"), 100,
                     (4, 16)),
}


def attack_config(*, preset: str = "light", attackers: Optional[Sequence[str]] = None,
                  attack_max_epochs: Optional[int] = None, attack_train_limit: int = 0,
                  test_limit: int = 0, patience: int = 3, resnet_width: int = 64,
                  attacker_seed: int = 0, **unused):
  """The `protocol.AttackConfig` of a preset, with explicit choices overriding it.

  Raises ValueError for an unknown preset or attacker family. `unused`: other keywords of
  `ran_jax.attack` (the identity ones), ignored here.
  """
  from ran_jax.privacy import attackers as atk
  from ran_jax.privacy import protocol

  del unused
  if preset not in PRESETS:
    raise ValueError(f"preset={preset!r}: allowed: {sorted(PRESETS)}.")
  p = PRESETS[preset]
  attackers = tuple(p.attackers if attackers is None else attackers)
  unknown = sorted(set(attackers) - set(protocol.ATTACKERS))
  if unknown:
    raise ValueError(f"attackers: unknown {unknown}; allowed: {list(protocol.ATTACKERS)}.")
  epochs = p.max_epochs if attack_max_epochs is None else int(attack_max_epochs)
  if epochs < 1 or patience < 1:
    raise ValueError("attack_max_epochs and patience must be >= 1.")
  fit = atk.FitConfig(max_epochs=epochs, patience=patience, seed=attacker_seed)
  # The retrained classifier is a utility figure, cheap to fit: the preset's cap applies to
  # the attackers only (an explicit attack_max_epochs caps both).
  classifier_fit = dataclasses.replace(
      fit, max_epochs=max(epochs, PRESETS["strong"].max_epochs)
      if attack_max_epochs is None else epochs)
  return protocol.AttackConfig(attack_train_limit=attack_train_limit, test_limit=test_limit,
                               attackers=attackers, attacker_fit=fit,
                               classifier_fit=classifier_fit,
                               seed=attacker_seed, resnet_width=resnet_width)


def identity_config(*, preset: str = "light", attacker_seed: int = 0,
                    identity_attackers: Optional[Sequence[str]] = None, identity_seeds: int = 3,
                    releases: Optional[Sequence[int]] = None, person_releases: int = 10,
                    person_groups: int = 1000, **unused):
  """The `identity.IdentityConfig` of the attribute attacks (ValueError for bad values);
  releases: None takes the preset's."""
  from ran_jax.privacy import identity

  del unused
  if preset not in PRESETS:
    raise ValueError(f"preset={preset!r}: allowed: {sorted(PRESETS)}.")
  releases = PRESETS[preset].releases if releases is None else releases
  families = tuple(identity.FAMILIES if identity_attackers is None else identity_attackers)
  unknown = sorted(set(families) - set(identity.FAMILIES))
  if unknown or not families:
    raise ValueError(f"identity_attackers: unknown {unknown}; allowed: "
                     f"{list(identity.FAMILIES)}.")
  releases = tuple(int(n) for n in releases)
  if any(n < 2 for n in releases):
    raise ValueError(f"releases={list(releases)}: integers >= 2 expected.")
  if identity_seeds < 1 or person_releases < 0 or person_groups < 1:
    raise ValueError("identity_seeds and person_groups must be >= 1, person_releases >= 0.")
  return identity.IdentityConfig(attackers=families,
                                 seeds=tuple(range(attacker_seed, attacker_seed + identity_seeds)),
                                 releases=releases, person_releases=person_releases,
                                 person_groups=person_groups, seed=attacker_seed)


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
    preset: 'light' (mirrored and MLP decoders, ridge; fits capped at 15 epochs; one
      release and the clean features) or 'strong' (adds the residual decoder; 100 epochs;
      also the means of 4 and 16 releases). See `PRESETS`.
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
      the preset's, () for light, (4, 16) for strong).
    identity_attackers, identity_seeds, person_releases, person_groups: the identity
      attacks (`ran_jax.privacy.identity.IdentityConfig`).
    progress: show a progress bar (per phase) on stderr.

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
  from tqdm.auto import tqdm

  from ran_jax import export, input_pipeline
  from ran_jax.privacy import identity, methods, protocol

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
  bar = tqdm(total=len(phases), desc="ran-attack", unit="phase", disable=not progress,
             bar_format="{desc}: {n}/{total} phases |{bar}| {elapsed} elapsed, ETA {remaining}")
  result, art = {"name": name}, {}
  if reconstruction:
    skipped = skipped_attackers(cfg)
    if skipped:
      log.info("attack: skipping %s (preset %s; --preset=strong or --attackers adds them)",
               ", ".join(skipped), preset)
    bar.set_postfix_str(f"reconstruction: {', '.join(cfg.attackers)}")
    data = protocol.prepare_data(source, cfg)
    result, art = methods.attack_trained(trained, data, cfg, name=name, releases=icfg.releases,
                                         clean=True)
    result["skipped_attackers"] = skipped
    bar.update()
  result["preset"] = preset
  result["eval_config"] = cfg.to_dict()
  if attribute:
    bar.set_postfix_str(f"identity ({attribute})")
    result["identity"] = identity.attack_identity(trained, source, icfg)
    bar.update()
  bar.close()
  protocol.save(eval_dir or os.path.join(workdir, "eval"), result, art)
  return result


# ---------------------------------------------------------------- the report


def _row(label: str, m: dict) -> str:
  return (f"{label:24s}{m['mse_sum']:10.4g}{m['mse_mean']:10.4g}{m['psnr']:8.2f}"
          f"{m['ssim']:8.4f}")


def format_table(result: dict) -> str:
  """The report as the command prints it."""
  from ran_jax.privacy import identity

  lines = []
  if result.get("attackers"):
    lines += [f"{result['name']}: accuracy {result.get('accuracy', float('nan')):.4f}, "
              f"retrained {result.get('accuracy_retrained', float('nan')):.4f}",
              f"{'attacker':24s}{'mse_sum':>10s}{'mse_mean':>10s}{'psnr':>8s}{'ssim':>8s}"]
    for a, m in result["attackers"].items():
      lines.append(_row(a, m))
    w = result["worst"]
    lines.append(_row(f"worst ({w['attacker']})", w))
    for name, rel in result.get("releases", {}).items():
      w = rel["worst"]
      lines.append(_row(f"{name} ({w['attacker']})", w))
    if result.get("skipped_attackers"):
      lines.append(f"skipped attackers: {', '.join(result['skipped_attackers'])} (preset "
                   f"{result.get('preset', 'light')}; --preset=strong adds them)")
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
