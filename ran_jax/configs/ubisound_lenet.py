"""RAN with LeNet-5 on log-mel spectrograms: the paper's T4 (acoustic events).

UbiSound is private; the open stand-in is the Free Spoken Digit Dataset (TFDS
`spoken_digit`: 3,000 8 kHz recordings of spoken digits 0-9, 6 speakers),
turned into 32x32 log-mel images in [0, 1]. It is speech, not environmental
sound. Recordings numbered 0-4 are the test set (FSDD's official 10% split).
Prepares `spoken_digit` offline from the local recordings:

  ran-train --config=ubisound_lenet \
      --config.data.manual_dir=/path/to/fsdd --workdir=runs/fsdd

Measured here (2 heavily shared CPU cores, about 17 minutes, lambda=0.5): test
accuracy 0.977 after the default 12 epochs (300 test clips); it moves between
0.87 and 0.98 from epoch to epoch under the adversarial stage (docs/data.md).
"""

from ran_jax.configs import common


def get_config(arg=None):
  c = common.get_base_config()
  c.data.name = "spoken_digit"
  c.data.image_size = 32       # log-mel bands x frames
  c.data.num_classes = 10
  c.model.encoder = "lenet5"
  c.model.classifier_hidden = (120, 84)
  c.batch_size = 64
  c.num_epochs = 12
  c.log_every_steps = 42
  c.ran.lam = 0.5
  common.stable_end(c)         # cosine decay + EMA: an end that does not depend on luck
  return common.finish(c, arg)
