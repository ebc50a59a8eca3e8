"""Trains a Reconstructive Adversarial Network.

  ran-train --config=digits_lenet --workdir=runs/digits
  ran-train --config=mnist_lenet --config.ran.lam=0.3 --workdir=...
  python train.py --config=configs/digits_lenet.py --workdir=runs/digits   (repository root)

The same command as `python -m ran_jax.train`. --config takes a packaged config by name
or a path to a config file, with ':smoke' for the seconds-long variant; any config field
is overridden with --config.<section>.<field>=VALUE.
Rerunning the same command resumes from the newest good checkpoint in --workdir.
Several processes (hosts) run the same command; on a Cloud TPU pod slice they find
each other automatically, elsewhere pass --coordinator_address, --num_processes and
--process_id (or RAN_COORDINATOR_ADDRESS / RAN_NUM_PROCESSES / RAN_PROCESS_ID).
"""

import logging
import sys

from absl import flags

from ran_jax import configs

FLAGS = flags.FLAGS


def define_flags():
  """The command's flags (defined when it runs, so importing this module defines none)."""
  configs.define_config_flag("config")
  flags.DEFINE_string("workdir", None,
                      "Directory (local or gs://) for checkpoints, metrics, config.")
  flags.DEFINE_string("coordinator_address", None,
                      "host:port of process 0, for multi-process runs.")
  flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
  flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
  flags.mark_flags_as_required(["config", "workdir"])


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


def run():
  """The command (`ran-train`, `python -m ran_jax.train`, `python train.py`)."""
  from ran_jax import commands  # no JAX: flags are parsed before anything loads

  define_flags()
  commands.run_app(main, __doc__)


if __name__ == "__main__":
  run()
