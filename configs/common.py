"""Shared defaults for every RAN config and the ':smoke' shrink used by tests.

Loss convention (`ran.recon_reduction`): 'sum' (default, the paper's Eq. 3-4)
weighs each example's cross-entropy against its squared reconstruction error
*summed* over all input values, averaged over the batch; 'mean' averages it over
the input values instead (H*W*C times smaller), which changes what a lambda means.

These are all the fields a config may have: `ran_jax.config_lib.validate_config` rejects
any other (naming the nearest valid ones) and checks every value before any data is
loaded; the comments give the allowed values.
"""

import ml_collections
from ml_collections import config_dict


def get_base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0                   # integer >= 0: parameter init, shuffling, dropout
  c.batch_size = 64            # global, split over all devices (a multiple of their count)
  c.eval_batch_size = 256      # global, a multiple of the device count
  c.num_epochs = 10            # >= 1
  c.max_steps = -1             # -1: num_epochs * steps_per_epoch
  c.log_every_steps = 50       # >= 1
  c.checkpoint_every_steps = 0  # 0: at the end of every epoch
  c.keep_checkpoints = 2       # >= 1

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits"       # a built-in name (input_pipeline.DATASETS) or any TFDS name
  c.data.data_dir = config_dict.placeholder(str)    # prepared TFDS data_dir (local or gs://)
  c.data.manual_dir = config_dict.placeholder(str)  # raw files for offline preparation
  c.data.image_size = 28       # resize to this square size; 0: the dataset's own size
  c.data.train_limit = 0       # >0: use only the first N examples (tests)
  c.data.test_limit = 0
  c.data.decode_workers = 4    # threads decoding JPEG batches (imagenet2012, large TFDS sets)
  c.data.num_classes = config_dict.placeholder(int)  # expected class count (None: the dataset's)

  c.model = ml_collections.ConfigDict()
  c.model.encoder = "lenet5"   # 'lenet5', 'alexnet' or 'vgg16' (ran_jax.models.ENCODERS)
  # None: the paper's widths; else positive ints, lenet5: 2 (per conv), alexnet/vgg16: 5 (per block)
  c.model.widths = config_dict.placeholder(tuple)
  c.model.classifier_hidden = (120, 84)  # hidden widths of the classifier MLP (positive ints)
  c.model.dropout = 0.0        # classifier dropout rate, in [0, 1)
  c.model.dtype = "float32"    # 'bfloat16' computes in bf16 with f32 params (accelerators)
  # 'fast': matmul / sub-pixel convs (CPU); 'xla': Flax's; 'auto': chosen by backend and layer
  c.model.conv_impl = "auto"
  # Defences (docs/privacy.md); all off by default, which is the paper's RAN.
  c.model.bottleneck_dim = 0   # >0: encoder ends in a learned projection to d tanh-bounded channels
  c.model.bottleneck_kind = "dense"  # 'dense' (flat [d] features) or 'conv1x1' ([h, w, d])
  c.model.feature_noise = 0.0  # std (>= 0) of Gaussian noise on the released (tanh-bounded)
                               # features, in training AND at inference; part of the phone-side E

  c.ran = ml_collections.ConfigDict()
  c.ran.k = 3                  # >= 1 inner (discriminative, generative) pairs per mini-batch
  c.ran.lam = 0.5              # lambda of Eq. 4, in [0, 1]
  c.ran.l1 = 1e-3              # Adam learning rate (> 0), discriminative stage
  c.ran.l2 = 1e-3              # generative stage (decoder)
  c.ran.l3 = 1e-3              # adversarial stage
  c.ran.recon_reduction = "sum"  # 'sum' per example (paper) or 'mean' per value
  c.ran.fused = True           # one jitted function per Algorithm-1 iteration (False: per stage)
  # Defences in training (docs/privacy.md); defaults reproduce Algorithm 1 exactly.
  c.ran.extra_decoders = ()    # decoder families trained beside D: 'mlp', 'wide' (each once)
  c.ran.adversary_reduce = "min"  # the adversarial stage fights the strongest: 'min' or 'softmin'
  c.ran.softmin_temperature = 1.0  # 'softmin' temperature (> 0), in reconstruction-error units
  c.ran.mlp_decoder_hidden = (1024,)  # hidden widths of the 'mlp' family
  c.ran.wide_decoder_mult = 2  # hidden-channel multiplier (>= 1) of the 'wide' family
  c.ran.warmup_steps = 0       # iterations before the adversarial term is switched on
  c.ran.reinit_every_steps = 0  # >0: re-initialise every decoder (and its Adam state) this often
  c.ran.target_psnr = 0.0      # >0 dB: stop pushing once the strongest decoder's PSNR is below it
  c.ran.compactness = 0.0      # weight (>= 0) of the within-class feature variance penalty
  return c


def apply_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a config so one run takes seconds on CPU (used by tests)."""
  c.batch_size = 16
  c.eval_batch_size = 32
  c.num_epochs = 2
  c.max_steps = 6
  c.log_every_steps = 2
  c.data.train_limit = 48
  c.data.test_limit = 40
  return c


def finish(c: ml_collections.ConfigDict, arg) -> ml_collections.ConfigDict:
  if arg in (None, ""):
    return c
  if arg == "smoke":
    return apply_smoke(c)
  raise ValueError(f"Unknown config variant {arg!r}; allowed: 'smoke' (configs/x.py:smoke).")
