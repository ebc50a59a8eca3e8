"""`python -m bench.mocked_train --mock_examples=N <train.py flags>`: train.py on TFDS fake data.

For smoke runs of a task whose real data is absent (ImageNet on a lent accelerator): the
TFDS builder named by the config is served by `tfds.testing.mock_data` (random examples of
the dataset's real feature spec, the same ones for every call), so the whole trainer runs
unchanged: input pipeline, compiled iteration, checkpoints, SIGTERM handling, export. It
is a benchmark tool, never used by the library; with --mock_examples=0 it is train.py.
"""

import os
import runpy
import sys


def main():
  argv, n = [], 0
  for a in sys.argv[1:]:
    if a.startswith("--mock_examples="):
      n = int(a.split("=", 1)[1])
    else:
      argv.append(a)
  train_py = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train.py")
  sys.argv = [train_py] + argv
  if n <= 0:
    runpy.run_path(train_py, run_name="__main__")
    return
  from unittest import mock

  import tensorflow_datasets as tfds

  # mock_data serves reads but leaves `is_prepared()` False, which the ImageNet loader
  # (rightly) treats as "manual download needed"; the fake data counts as prepared.
  with tfds.testing.mock_data(num_examples=n), \
       mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True):
    runpy.run_path(train_py, run_name="__main__")


if __name__ == "__main__":
  main()
