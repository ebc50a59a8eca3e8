"""Attacker evaluation of the frozen encoder of a finished training run.

  python -m ran_jax.attack --workdir=runs/digits [--attackers=mlp_decoder,ridge] \
      [--attack_train_limit=20000] [--attack_max_epochs=100]

Trains the attackers of `ran_jax.privacy.attackers` from scratch on
(input, released E(input)) pairs of the whole training split by default (encoder
frozen; for a noisy encoder fresh release noise on every batch; early stopping on a
validation part), scores them on the test split's releases together with RAN's own
decoder, reports the service classifier's and a retrained classifier's test accuracy,
the worst case over attackers and, for a noisy release, the Fisher bound.
Writes WORKDIR/eval/result.json (and artifacts.npz) and prints a table.
MSE convention: see `ran_jax.privacy.metrics`.

Repeated releases: for a noisy release every attacker family is also trained, validated
and scored on the mean of N releases of each input (`--releases`, default 4 and 16) and on
the clean features (the limit: an attacker holding the encoder computes them), under
result['releases'].

Identity: with an attribute (`--attribute=subject`, default the run's data.attribute)
attribute attackers (`ran_jax.privacy.identity`) are trained on the releases too, for
one release, N releases of one input, the clean features, the raw input, and N
releases of one person (`--person_releases`); result['identity'].
`--noreconstruction` runs only these.
"""

from __future__ import annotations

import logging
import os

from absl import flags

from ran_jax import config_lib, export, input_pipeline
from ran_jax.checkpointing import CheckpointError
from ran_jax.data.source import DataError
from ran_jax.privacy import cli, identity, methods, protocol

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A finished training run (holds export/).")
flags.DEFINE_string("out", None, "Output directory (default WORKDIR/eval).")
flags.DEFINE_bool("reconstruction", True, "Train the reconstruction attackers (False: only "
                  "the attribute attacks).")
cli.define_attack_flags()
cli.define_identity_flags()
flags.mark_flag_as_required("workdir")


def _row(label: str, m: dict) -> str:
  return (f"{label:24s}{m['mse_sum']:10.4g}{m['mse_mean']:10.4g}{m['psnr']:8.2f}"
          f"{m['ssim']:8.4f}")


def format_table(result: dict) -> str:
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
  if result.get("identity"):
    lines.append(identity.format_identity(result["identity"]))
  return "\n".join(lines)


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  cfg = cli.attack_config_from_flags()
  icfg = cli.identity_config_from_flags()
  try:
    trained = export.load_trained(FLAGS.workdir)
  except (FileNotFoundError, CheckpointError) as e:
    config_lib.exit_with_error(str(e))
  attribute = (FLAGS.attribute if FLAGS.attribute is not None
               else trained.config.data.get("attribute", "")) or ""
  data_config = trained.config.data
  data_config.attribute = attribute
  try:
    source = input_pipeline.load_dataset(data_config)
  except DataError as e:
    config_lib.exit_with_error(str(e))
  name = f"lam={trained.config.ran.lam:g}"
  result, art = {"name": name}, {}
  if FLAGS.reconstruction:
    data = protocol.prepare_data(source, cfg)
    result, art = methods.attack_trained(trained, data, cfg, name=name, releases=icfg.releases,
                                         clean=True)
  result["eval_config"] = cfg.to_dict()
  if attribute:
    result["identity"] = identity.attack_identity(trained, source, icfg)
  out = FLAGS.out or os.path.join(FLAGS.workdir, "eval")
  protocol.save(out, result, art)
  print(format_table(result))
  print(f"wrote {out}/{protocol.RESULT_FILE}")


def run():
  """The command (`ran-attack`, `python -m ran_jax.attack`)."""
  from ran_jax import commands

  commands.run_app(main, __doc__)


if __name__ == "__main__":
  run()
