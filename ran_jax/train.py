"""Trains a Reconstructive Adversarial Network.

  ran-train --config=digits_lenet --workdir=runs/digits
  ran-train --config=mnist_lenet --config.ran.lam=0.3 --workdir=...
  In Python: ran_jax.train("digits_lenet", "runs/digits")   # returns the final test metrics

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
from typing import Optional


def train(config, workdir: str, *, overrides: Optional[dict] = None) -> dict:
  """Trains a RAN per the config into `workdir` and returns the final test metrics.

  Args:
    config: an `ml_collections.ConfigDict`, or a config spec as `--config` takes it: a
      packaged config's name or a path, optionally with variants
      (e.g. "digits_lenet:smoke", "configs/mnist_lenet.py:paper").
    workdir: directory (local or gs://) for checkpoints, metrics, the resolved config and
      the export; a rerun resumes from its newest good checkpoint.
    overrides: {dotted field: value}, e.g. {"ran.lam": 0.3, "num_epochs": 5}, applied as
      `--config.<field>=VALUE` would be (unknown fields refused).

  Returns:
    The final test metrics (also WORKDIR/final_metrics.json), e.g. 'accuracy'.

  Progress (a line per epoch with the ETA, a closing summary) goes to the "ran_jax" logger,
  on stderr at INFO unless the caller has configured Python logging; a bar is drawn too when
  stderr is a terminal.

  Raises:
    ran_jax.config_lib.ConfigError: a config value outside what RAN accepts.
    ran_jax.data.source.DataError: data that cannot be read or prepared.
    ValueError: an unknown config name or path, or an override of an unknown field.
  """
  from ran_jax import configs, progress

  progress.ensure_logging()   # INFO lines on stderr, unless the caller configured logging
  if isinstance(config, str):
    config = configs.get_config(config)
  if overrides:
    from ran_jax import sweep

    config = sweep.apply_overrides(config, overrides)
  return train_and_deploy(config, workdir)


def train_and_deploy(config, workdir: str) -> dict:
  """`trainer.train_and_evaluate`, then (config.export_deployment) WORKDIR/deploy/.

  The deployment (the phone-side encoder as LiteRT .tflite, the classifier as jax.export,
  `ran_jax.deploy.export_deployment`) is the job's next step after training, not part of
  the training loop, which needs no TensorFlow. Returns the final test metrics.
  """
  from ran_jax import trainer

  final = trainer.train_and_evaluate(config, workdir)
  if config.get("export_deployment", True):   # as the trainer read it before
    from ran_jax import deploy  # the conversion loads TensorFlow

    if deploy.export_deployment(workdir):  # process 0 writes; the others get {}
      d = deploy.deploy_dir(workdir)
      logging.getLogger("ran_jax").info(
          "deployment: phone encoder %s, server classifier %s",
          f"{d}/{deploy.ENCODER_FILE}", f"{d}/{deploy.CLASSIFIER_FILE}")
  return final


def define_flags():
  """The command's flags (defined when it runs, so importing this module defines none)."""
  from absl import flags

  from ran_jax import configs

  configs.define_config_flag("config")
  flags.DEFINE_string("workdir", None,
                      "Directory (local or gs://) for checkpoints, metrics, config.")
  flags.DEFINE_string("coordinator_address", None,
                      "host:port of process 0, for multi-process runs.")
  flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
  flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
  flags.DEFINE_integer("heartbeat_timeout_s", None,
                       "Multi-process: seconds without a heartbeat after which a process is "
                       "declared lost and the others stop (default JAX's, 100; or "
                       "RAN_HEARTBEAT_TIMEOUT_S).")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  from absl import flags

  FLAGS = flags.FLAGS
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  from ran_jax import parallel

  try:
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                    FLAGS.process_id, FLAGS.heartbeat_timeout_s)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)

  from ran_jax import trainer
  from ran_jax.checkpointing import CheckpointError
  from ran_jax.config_lib import ConfigError
  from ran_jax.input_pipeline import DataError
  from ran_jax.models import ShapeError

  import jax

  try:
    train(FLAGS.config, FLAGS.workdir)
  except (ConfigError, DataError, ShapeError, CheckpointError, trainer.NonFiniteError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except jax.errors.JaxRuntimeError as e:
    if jax.process_count() == 1:
      raise
    lost_process_exit(e)


LOST_PROCESS_EXIT = 75   # EX_TEMPFAIL: rerun the same command


def lost_process_exit(error: BaseException):
  """Ends this process of a multi-process run whose device or collective call failed,
  most often because another process was lost (a host killed, no notice): one clear
  line, then exit LOST_PROCESS_EXIT at once. Waiting for JAX's orderly shutdown would
  only abort later at its shutdown barrier, which the lost process never reaches."""
  import os

  first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  logging.getLogger("ran_jax").error(
      "a device or collective operation failed in this multi-process run (%s). If another "
      "process was lost, this one stops too: rerun the same command on every host to resume "
      "from the newest complete checkpoint.", first)
  for stream in (sys.stdout, sys.stderr):
    stream.flush()
  os._exit(LOST_PROCESS_EXIT)


def run():
  """The command (`ran-train`, `python -m ran_jax.train`, `python train.py`)."""
  from ran_jax import commands  # no JAX: flags are parsed before anything loads

  define_flags()
  commands.run_app(main, __doc__)


if __name__ == "__main__":
  run()
else:
  from ran_jax import commands as _commands

  _commands.callable_module(__name__)
