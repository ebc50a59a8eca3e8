"""RAN with AlexNet on CIFAR-10: the paper's T2.

Prepares TFDS `cifar10` offline from the canonical `cifar-10-binary.tar.gz`
(checksum verified) or, when only that is at hand, from the LOSSY JPEG copy
`cifar10_jpg.tar.gz` (builder `cifar10_jpg`; quality-75 JPEG re-encodes, so
numbers differ slightly from the original pixels):

  ran-train --config=cifar10_alexnet \
      --config.data.manual_dir=/path/to/cifar10 --workdir=runs/cifar10

Sized for one accelerator; not trained to convergence here (accuracy: not
measured here).
"""

from ran_jax.configs import common


def get_config(arg=None):
  c = common.get_base_config()
  c.data.name = "cifar10"
  c.data.image_size = 32
  c.data.num_classes = 10
  c.model.encoder = "alexnet"
  c.model.classifier_hidden = (384, 192)
  c.batch_size = 128
  c.num_epochs = 30
  c.log_every_steps = 100
  c.ran.lam = 0.5
  return common.finish(c, arg, smoke=_smoke)


def _smoke(c):
  """Seconds on CPU: narrow layers, same code path."""
  c.model.widths = (8, 8, 8, 8, 8)
  c.model.classifier_hidden = (16, 16)
  return c
