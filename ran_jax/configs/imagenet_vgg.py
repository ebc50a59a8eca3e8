"""RAN with VGG-16 on ImageNet (ILSVRC2012) at 224x224: the paper's T3.

Prepares TFDS `imagenet2012` from the standard manual-download tars
(ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar) into --config.data.data_dir;
the validation split is the test split. Images are decoded per batch (JPEG,
shorter side to 256, centre crop 224, [0, 1]) in a thread pool:

  ran-train --config=imagenet_vgg \
      --config.data.manual_dir=/path/to/imagenet_tars \
      --config.data.data_dir=/path/to/tensorflow_datasets --workdir=runs/imagenet

Sized for a multi-accelerator host (bfloat16 compute); accuracy: not measured
here (only the data path was tested, on a tiny fake tree).
"""

from ran_jax.configs import common


def get_config(arg=None):
  c = common.get_base_config()
  c.data.name = "imagenet2012"
  c.data.image_size = 224
  c.data.num_classes = 1000
  c.data.decode_workers = 16   # threads decoding each batch's JPEGs (PIL releases the GIL)
  c.model.encoder = "vgg16"
  c.model.classifier_hidden = (4096, 4096)
  c.model.dtype = "bfloat16"
  # Batch-norm statistics over groups of 32 examples: the per-chip batch of a 256 batch on
  # 8 chips, so no statistic crosses a chip (docs/cloud_tpu.md). When scaling the slice,
  # keep the per-chip batch (batch_size / chips) a multiple of 32.
  c.model.bn_group_size = 32
  # The classifier's 25088x4096 and 4096x4096 layers split over groups of 4 chips: their
  # activations are gathered within a group instead of their gradients (411 MB in float32
  # for the first alone) being all-reduced over the slice at each of the iteration's four
  # encoder-classifier updates; their weights and Adam moments take a quarter of the HBM.
  c.model.classifier_shards = 4
  # One compiled program per stage (7 dispatches per iteration, under 1 % of a TPU step):
  # a lower peak of HBM than the fused iteration, and about a third of its compile time.
  c.ran.fused = False
  c.batch_size = 256
  c.eval_batch_size = 256
  c.num_epochs = 90
  c.log_every_steps = 500
  c.checkpoint_every_steps = 5000
  c.ran.lam = 0.5
  return common.finish(c, arg, smoke=_smoke)


def _smoke(c):
  """Seconds on CPU: small images and narrow layers, same code path."""
  c.data.image_size = 32
  c.model.widths = (4, 4, 8, 8, 8)
  c.model.classifier_hidden = (16, 16)
  c.model.dtype = "float32"
  c.model.bn_group_size = 4    # 16 examples: groups of 4 (one per device of the tests' 4)
  c.model.classifier_shards = 1  # the tests shard it themselves (tests/test_tpu_plan.py)
  c.checkpoint_every_steps = 0
  return c
