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
"""

from __future__ import annotations

import logging
import os

from absl import app, flags

from ran_jax import config_lib, export, input_pipeline
from ran_jax.checkpointing import CheckpointError
from ran_jax.privacy import cli, methods, protocol

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A finished training run (holds export/).")
flags.DEFINE_string("out", None, "Output directory (default WORKDIR/eval).")
cli.define_attack_flags()
flags.mark_flag_as_required("workdir")


def format_table(result: dict) -> str:
  lines = [f"{result['name']}: accuracy {result.get('accuracy', float('nan')):.4f}, "
           f"retrained {result.get('accuracy_retrained', float('nan')):.4f}",
           f"{'attacker':18s}{'mse_sum':>10s}{'mse_mean':>10s}{'psnr':>8s}{'ssim':>8s}"]
  for a, m in result["attackers"].items():
    lines.append(f"{a:18s}{m['mse_sum']:10.4g}{m['mse_mean']:10.4g}{m['psnr']:8.2f}"
                 f"{m['ssim']:8.4f}")
  w = result["worst"]
  lines.append(f"{'worst (' + w['attacker'] + ')':18s}{w['mse_sum']:10.4g}{w['mse_mean']:10.4g}"
               f"{w['psnr']:8.2f}{w['ssim']:8.4f}")
  return "\n".join(lines)


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  cfg = cli.attack_config_from_flags()
  try:
    trained = export.load_trained(FLAGS.workdir)
  except (FileNotFoundError, CheckpointError) as e:
    config_lib.exit_with_error(str(e))
  data = protocol.prepare_data(input_pipeline.load_dataset(trained.config.data), cfg)
  result, art = methods.attack_trained(trained, data, cfg, name=f"lam={trained.config.ran.lam:g}")
  result["eval_config"] = cfg.to_dict()
  out = FLAGS.out or os.path.join(FLAGS.workdir, "eval")
  protocol.save(out, result, art)
  print(format_table(result))
  print(f"wrote {out}/{protocol.RESULT_FILE}")


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.parse_flags_or_exit)
