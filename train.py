"""Trains a Reconstructive Adversarial Network.

  python train.py --config=configs/digits_lenet.py --workdir=runs/digits
  python train.py --config=configs/mnist_lenet.py --config.ran.lam=0.3 --workdir=...

Rerunning the same command resumes from the newest good checkpoint in --workdir.
Several processes (hosts) run the same command; on a Cloud TPU pod slice they find
each other automatically, elsewhere pass --coordinator_address, --num_processes and
--process_id (or RAN_COORDINATOR_ADDRESS / RAN_NUM_PROCESSES / RAN_PROCESS_ID).
"""

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py[:smoke]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory (local or gs://) for checkpoints, metrics, config.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.mark_flags_as_required(["config", "workdir"])


def _fail(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def parse_flags(argv):
  """absl's flag parsing, ending like a bad config value (`error: ...`, exit 2) on bad flags."""
  from ran_jax.config_lib import unknown_override  # no JAX: runs before anything is loaded

  try:
    args = FLAGS(argv)
  except (AttributeError, KeyError) as e:
    # ml_collections raises these (not absl's flags.Error) for an override of a field
    # the locked config does not have, e.g. --config.ran.lamda=0.3.
    _fail(unknown_override(argv) or f"unknown config field: {e}")
  except flags.Error as e:  # e.g. --config.ran.k=abc, a missing flag, a failing config file
    lines = str(e).strip().splitlines()
    if len(lines) > 1 and "Traceback" in str(e):  # a config file raised: keep its message
      lines = [lines[0].split(" Error whilst parsing")[0] + " " + lines[-1].strip()]
    _fail("\n".join(lines))
  try:
    FLAGS.config.get("seed")  # a config file that could not be read fails on first access
  except OSError as e:
    _fail(str(e))
  return args


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  from ran_jax import parallel

  parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)

  from ran_jax import trainer
  from ran_jax.checkpointing import CheckpointError
  from ran_jax.config_lib import ConfigError
  from ran_jax.input_pipeline import DataError
  from ran_jax.models import ShapeError

  try:
    trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (ConfigError, DataError, ShapeError, CheckpointError, trainer.NonFiniteError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
