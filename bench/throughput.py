"""Input throughput of a real dataset next to what the trainer consumes.

  python -m bench input --config=configs/mnist_lenet.py \
      --config.data.manual_dir=/path/to/mnist [--steps=300] [--train_steps=30]

Prints the examples/s that `InputPipeline.train_batches` delivers as global arrays
(host batch assembly, normalisation, device placement, prefetch thread;
`bench.engines.input_rate`), the examples/s that the config's Algorithm-1 iteration
consumes on the same machine (`bench.engines.JaxEngine`, the program the trainer
builds), and their ratio. The input side must stay well above 1x so that the
trainer never waits on data.
"""

from __future__ import annotations

import sys

import jax

from bench.engines import JaxEngine, input_rate, median_time
from ran_jax import input_pipeline, parallel
from ran_jax.program import InputSpec


def report(config, input_steps: int = 300, train_steps: int = 30) -> dict:
  mesh = parallel.make_mesh()
  source = input_pipeline.load_dataset(config.data)
  pipeline = input_pipeline.InputPipeline(source, config.batch_size, config.eval_batch_size,
                                          config.seed, mesh)
  inp = input_rate(pipeline, min(input_steps, 10 * pipeline.steps_per_epoch))
  batch = source.train.get(list(range(config.batch_size)))
  engine = JaxEngine(config, mesh, InputSpec.of(source), batch)
  for _ in range(2):  # warm-up
    engine.run()
  train = config.batch_size / (median_time(engine.run, train_steps))
  return {"dataset": source.name, "batch_size": config.batch_size, "input_examples_per_s": inp,
          "trainer_examples_per_s": train, "ratio": inp / train}


def run(argv=None):
  """The `python -m bench input` command (absl flags, a config file as in train.py)."""
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  config_flags.DEFINE_config_file("config", None, "configs/*.py[:smoke]", lock_config=True)
  flags.DEFINE_integer("steps", 300, "input batches to time")
  flags.DEFINE_integer("train_steps", 30, "trainer iterations to time (median)")
  flags.mark_flags_as_required(["config"])

  def main(_):
    fl = flags.FLAGS
    r = report(fl.config, fl.steps, fl.train_steps)
    print(f"dataset {r['dataset']} batch {r['batch_size']} on {jax.devices()[0].platform}: "
          f"input {r['input_examples_per_s']:.0f} examples/s, trainer consumes "
          f"{r['trainer_examples_per_s']:.0f} examples/s, ratio {r['ratio']:.1f}x")

  app.run(main, argv=argv if argv is not None else sys.argv)


if __name__ == "__main__":
  run()
