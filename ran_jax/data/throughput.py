"""Input throughput next to what the trainer consumes.

  python -m ran_jax.data.throughput --config=configs/mnist_lenet.py \
      --config.data.manual_dir=../shared/data/mnist [--steps=300]

Prints examples/s that `InputPipeline.train_batches` delivers as global arrays
(host batch assembly, normalisation, device placement, prefetch thread) and
examples/s that one Algorithm-1 iteration of the trainer consumes on the same
machine, and their ratio. The input side must stay well above 1x (the issue asks
for >= 5x for MNIST/LeNet) so that the trainer never waits on data.
"""

from __future__ import annotations

import time

import jax


def measure_input(pipeline, steps: int) -> float:
  """Examples/s delivered by `pipeline.train_batches` (each batch made ready on device)."""
  it = pipeline.train_batches(0, steps + 5)
  for _ in range(5):  # warm-up: thread start, first placement
    jax.block_until_ready(next(it))
  t = time.perf_counter()
  n = 0
  for batch in it:
    jax.block_until_ready(batch)
    n += 1
  return n * pipeline.global_batch / (time.perf_counter() - t)


def measure_trainer(config, source, mesh, steps: int) -> float:
  """Examples/s consumed by the jitted Algorithm-1 iteration on a fixed batch."""
  from ran_jax import parallel, stages, trainer  # pylint: disable=g-import-not-at-top
  from ran_jax.models import build_models  # pylint: disable=g-import-not-at-top

  models = build_models(config.model, source.input_shape, source.num_classes, source.value_range,
                        dtype=trainer.compute_dtype(config))
  optimizers = stages.make_optimizers(config.ran)
  state = trainer.create_state(models, optimizers, config.seed, mesh)
  iteration = trainer.make_iteration(models, optimizers, config.ran, mesh)
  idx = list(range(config.batch_size))
  batch = parallel.to_global(source.train.get(idx), mesh)
  for _ in range(3):  # compile + warm-up
    state, metrics = iteration(state, batch)
  jax.block_until_ready(metrics)
  t = time.perf_counter()
  for _ in range(steps):
    state, metrics = iteration(state, batch)
  jax.block_until_ready(metrics)
  return steps * config.batch_size / (time.perf_counter() - t)


def report(config, input_steps: int = 300, train_steps: int = 30) -> dict:
  from ran_jax import input_pipeline, parallel  # pylint: disable=g-import-not-at-top

  mesh = parallel.make_mesh()
  source = input_pipeline.load_dataset(config.data)
  pipeline = input_pipeline.InputPipeline(source, config.batch_size, config.eval_batch_size,
                                          config.seed, mesh)
  inp = measure_input(pipeline, min(input_steps, 10 * pipeline.steps_per_epoch))
  train = measure_trainer(config, source, mesh, train_steps)
  return {"dataset": source.name, "batch_size": config.batch_size, "input_examples_per_s": inp,
          "trainer_examples_per_s": train, "ratio": inp / train}


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top

  r = report(flags.FLAGS.config, flags.FLAGS.steps, flags.FLAGS.train_steps)
  print(f"dataset {r['dataset']} batch {r['batch_size']} on {jax.devices()[0].platform}: "
        f"input {r['input_examples_per_s']:.0f} examples/s, trainer consumes "
        f"{r['trainer_examples_per_s']:.0f} examples/s, ratio {r['ratio']:.1f}x")


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "configs/*.py[:smoke]", lock_config=True)
  flags.DEFINE_integer("steps", 300, "input batches to time")
  flags.DEFINE_integer("train_steps", 30, "trainer iterations to time")
  flags.mark_flags_as_required(["config"])
  app.run(main)
