"""RAN with LeNet-5 on scikit-learn's bundled handwritten digits: the embedded default.

No network or dataset download: the 1,797 real 8x8 digits ship with scikit-learn;
they are resized to 28x28 and run through the MNIST LeNet-5 (1,437 train / 360 test).

  ran-train --config=digits_lenet --workdir=runs/digits

Sized for 2 CPU cores: 30 epochs of 22 Algorithm-1 iterations (k=3, batch 64) take
under a minute (39-41 s measured on a 2-core machine, start-up and the deployment export
included) at lambda=0.5, with the RAN decoder's reconstruction error reported per epoch.
Final test accuracy over 5 seeds x 2 convolution paths: 0.9667-0.9833, each run within
1 point of its best epoch (docs/robustness/digits_lenet.md).
Mirrors the paper's T1 (MNIST) setting at small scale.
"""

from ran_jax.configs import common


def get_config(arg=None):
  c = common.get_base_config()
  c.data.name = "digits"
  c.data.image_size = 28
  c.model.encoder = "lenet5"
  c.model.classifier_hidden = (120, 84)
  c.batch_size = 64
  c.num_epochs = 30
  c.log_every_steps = 22
  c.ran.lam = 0.5
  common.stable_end(c)         # cosine decay + EMA: an end that does not depend on luck
  # The game's push ends at 17 dB (sum error about 16 on 784 pixels, the level the
  # training decoder reaches by mid-run): past it the encoder kept drifting away from
  # the decoder and test accuracy slid by 1-2 points in the last epochs (docs/training.md).
  c.ran.target_psnr = 17.0
  return common.finish(c, arg)
