"""RAN with a 1-D LeNet-5 on UCI HAR smartphone inertial windows: the paper's T5.

Windows of 128 steps x 9 channels are laid out [128, 1, 9] (time, 1, channels),
so LeNet-5's kernels become 1-D (5-tap convolutions, 2x pooling along time).
Inputs are standardised per channel and clipped to +-4 std (the decoder's range).
Prepares the package's TFDS builder `uci_har` offline from the official
"UCI HAR Dataset" folder/zip or from `har_windows.npz` (HAPT re-derivation):

  ran-train --config=har_lenet \
      --config.data.manual_dir=/path/to/uci_har --workdir=runs/har

Measured here (har_windows.npz, 2 heavily shared CPU cores, about 14 minutes, lambda=0.5):
test accuracy 0.914 after the default 8 epochs (0.913-0.930 over epochs 1-8);
see docs/data.md.
"""

from ran_jax.configs import common


def get_config(arg=None):
  c = common.get_base_config()
  c.data.name = "uci_har"
  c.data.image_size = 0        # not used: windows keep their [128, 1, 9] shape
  c.data.num_classes = 6
  c.model.encoder = "lenet5"
  c.model.widths = (32, 64)
  c.model.classifier_hidden = (128,)
  c.batch_size = 64
  c.num_epochs = 8
  c.log_every_steps = 115
  c.ran.lam = 0.5
  common.stable_end(c)         # cosine decay + EMA: an end that does not depend on luck
  return common.finish(c, arg)
