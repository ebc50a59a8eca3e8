"""Trains a Reconstructive Adversarial Network.

  python train.py --config=configs/digits_lenet.py --workdir=/tmp/ran_digits
  python train.py --config=configs/mnist_lenet.py --config.ran.lam=0.3 --workdir=...
"""

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from ran_jax import trainer
from ran_jax.checkpointing import CheckpointError
from ran_jax.config_lib import ConfigError
from ran_jax.input_pipeline import DataError
from ran_jax.models import ShapeError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py[:smoke]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the resolved config.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  try:
    trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (ConfigError, DataError, ShapeError, CheckpointError, trainer.NonFiniteError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
