"""The library's layers: the training loop needs no TensorFlow and writes no deployment;
the deployment is the job's next step (ran_jax.train.train_and_deploy)."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, subprocess_env

_LOOP_ONLY = """
import json, os, sys
from ran_jax import configs, trainer
c = configs.get_config("digits_lenet:smoke")
c.export_deployment = True   # the loop ignores it: deploying is the job's step
trainer.train_and_evaluate(c, sys.argv[1])
print(json.dumps({"tensorflow": sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow"),
                  "deploy": os.path.exists(os.path.join(sys.argv[1], "deploy"))}))
"""


@pytest.mark.slow
def test_the_training_loop_loads_no_tensorflow_and_writes_no_deployment(tmp_path):
  r = subprocess.run([sys.executable, "-c", _LOOP_ONLY, str(tmp_path / "wd")], cwd=ROOT,
                     env=subprocess_env({"TF_CPP_MIN_LOG_LEVEL": "2"}), capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  seen = json.loads(r.stdout.strip().splitlines()[-1])
  assert seen == {"tensorflow": [], "deploy": False}, seen
  assert os.path.exists(tmp_path / "wd" / "final_metrics.json")
