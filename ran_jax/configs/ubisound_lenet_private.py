"""The recommended private spoken-digit encoder (FSDD, the open stand-in for UbiSound):
LeNet-5 + bottleneck + within-class compactness + a rounded, noisy release
(docs/privacy_identity.md).

  ran-train --config=ubisound_lenet_private \
      --config.data.manual_dir=/path/to/fsdd --workdir=runs/fsdd_private
  ran-attack --workdir=runs/fsdd_private    # reconstruction + speaker attackers

The encoder ends in a 64-d tanh bottleneck and releases its features rounded to multiples of
0.5 plus N(0, 0.5^2) noise; compactness 3.25 pulls each digit's features together; lambda =
1.0. `data.attribute='speaker'` makes `ran-attack` measure speaker identification.

Expected: test accuracy 0.973 (DNN 0.986; 3 trainings); the speaker named, by the searched
`thorough` attackers on one training (docs/results/attacker_budgets.md, lower bounds), from
one release 28.0 %, 10 releases of a speaker 61.4 %, the clean features 52.3 % (chance
16.7 %): these defences do not hide the speaker from a searched attacker.
How the settings were chosen: docs/results/config_notes.md.
Smoke variant for tests: configs/ubisound_lenet_private.py:smoke.
"""

from ran_jax.configs import common, ubisound_lenet


def get_config(arg=None):
  c = ubisound_lenet.get_config(None)
  c.data.attribute = "speaker"
  c.model.bottleneck_dim = 64
  c.model.feature_noise = 0.5
  c.ran.lam = 1.0
  c.ran.compactness = 3.25
  c.model.release_step = 0.5
  return common.finish(c, arg)
