"""Flax modules of RAN: Encoder E, Classifier C and the mirrored Decoder D."""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp
import numpy as np

from ran_jax.models import fast_conv
from ran_jax.models.spec import ConvSpec, EncoderSpec, PoolSpec, layer_shapes, same_pad_lo

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
# 'fast': convs as row-patches + matmul, transposed convs as cropped sub-pixel
# stride-1 convs, reshape max-pool (fast_conv.py): the winner on CPU, where XLA's
# convolutions are slow. 'xla': Flax's nn.Conv / nn.ConvTranspose / nn.max_pool
# (cuDNN / TPU convs on accelerators). 'auto': 'fast' on CPU, 'xla' elsewhere.
# All give the same parameters and the same results within float tolerance.
CONV_IMPLS = ("auto", "fast", "xla")


def _check_impl(impl: str) -> None:
  if impl not in CONV_IMPLS:
    raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {impl!r}.")


def resolve_conv_impl(impl: str) -> str:
  """'auto' -> 'fast' on the CPU backend, 'xla' on GPU/TPU."""
  _check_impl(impl)
  if impl == "auto":
    return "fast" if jax.default_backend() == "cpu" else "xla"
  return impl


class FastConv(nn.Module):
  """nn.Conv's parameters ('kernel' [kh, kw, C, O], 'bias'), computed by fast_conv.conv2d."""

  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: str = "SAME"
  use_bias: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):  # [B, H, W, C] -> [B, Ho, Wo, O]
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        tuple(self.kernel_size) + (x.shape[-1], self.features), jnp.float32)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    y = fast_conv.conv2d(x, kernel, self.strides, self.padding)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,),
                         jnp.float32).astype(y.dtype)
    return y


class FastConvTranspose(nn.Module):
  """nn.ConvTranspose(padding='VALID')'s parameters, computed already cropped.

  Returns rows/cols [crop_lo, crop_lo + out_hw) of the full transposed conv
  (zero past its end), which is what the decoder keeps of it.
  """

  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int]
  crop_lo: tuple[int, int]
  out_hw: tuple[int, int]
  use_bias: bool = True
  dtype: jnp.dtype = jnp.float32
  # Un-pooling of the input folded into this layer (stride 1 only): z is then the
  # pooled-size input, and the result equals this layer applied to unpool(z).
  unpool: tuple[int, int] | None = None

  @nn.compact
  def __call__(self, z):  # [B, h, w, C] -> [B, out_h, out_w, O]
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        tuple(self.kernel_size) + (z.shape[-1], self.features), jnp.float32)
    z, kernel = nn.dtypes.promote_dtype(z, kernel, dtype=self.dtype)
    if self.unpool is not None:
      y = fast_conv.unpool_conv_transpose_cropped(z, kernel, self.unpool, self.crop_lo,
                                                  self.out_hw)
    else:
      y = fast_conv.conv_transpose_cropped(z, kernel, self.strides, self.crop_lo, self.out_hw)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,),
                         jnp.float32).astype(y.dtype)
    return y


class GroupBatchNorm(nn.Module):
  """Batch-norm whose training statistics are taken over groups of `group_size` examples.

  nn.BatchNorm's parameters and statistics ('scale', 'bias'; 'mean', 'var'), so a
  checkpoint does not depend on the grouping. In training, the batch [B, ...] is split
  into B / group_size consecutive groups and each is normalised with its own mean and
  (biased) variance; the running statistics move towards the groups' average. When the
  groups line up with the devices' shards of a data-parallel batch (group_size divides
  the per-device batch), no statistic crosses a device: the normalisation needs no
  all-reduce, and results do not depend on the number of devices (ghost batch-norm,
  Hoffer et al. 2017, with groups of a fixed size). Evaluation uses the running statistics.
  """

  group_size: int
  use_running_average: bool = False
  momentum: float = BN_MOMENTUM
  epsilon: float = BN_EPSILON
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):  # [B, ..., C]
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones_init(), (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (c,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
      y = (x.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + self.epsilon)
      return (y * scale + bias).astype(self.dtype)
    b, g = x.shape[0], int(self.group_size)
    if g <= 0 or b % g:
      raise ValueError(f"model.bn_group_size={g} must divide the batch of {b} examples.")
    xg = x.astype(jnp.float32).reshape((b // g, g) + x.shape[1:])   # [groups, g, ..., C]
    axes = tuple(range(1, xg.ndim - 1))
    mean = jnp.mean(xg, axes, keepdims=True)
    var = jnp.maximum(jnp.mean(jnp.square(xg), axes, keepdims=True) - jnp.square(mean), 0.0)
    y = ((xg - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
    if not self.is_initializing():
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1 - m) * jnp.mean(mean.reshape(-1, c), 0)
      ra_var.value = m * ra_var.value + (1 - m) * jnp.mean(var.reshape(-1, c), 0)
    return (y * scale + bias).astype(self.dtype)


def _bn(train: bool, name: str, dtype, group_size: int = 0) -> nn.Module:
  if group_size:
    return GroupBatchNorm(group_size, use_running_average=not train, name=name, dtype=dtype)
  return nn.BatchNorm(
      use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name,
      dtype=dtype)


def _conv_bn_relu(mdl, x, conv, bn):
  # A function of the calling module (nn.remat of a function keeps its parameters'
  # names in that module's scope, so a checkpoint does not depend on `remat`).
  del mdl
  return nn.relu(bn(checkpoint_name(conv(x), "conv_out")))


# `model.remat`: what the backward pass recomputes of each conv -> batch-norm -> ReLU block
# instead of keeping it from the forward pass. 'conv': keeps only the convolution's output
# and recomputes the batch-norm and ReLU from it (elementwise work, no extra flops in the
# convolutions); 'full': keeps only the block's input and recomputes the convolution too.
REMAT_POLICIES = ("none", "conv", "full")
_REMAT_BLOCKS = {
    "conv": nn.remat(_conv_bn_relu, static_argnums=(2, 3),
                     policy=jax.checkpoint_policies.save_only_these_names("conv_out")),
    "full": nn.remat(_conv_bn_relu, static_argnums=(2, 3)),
}


def _block(remat: str, train: bool):
  if remat not in REMAT_POLICIES:
    raise ValueError(f"model.remat must be one of {REMAT_POLICIES}, got {remat!r}.")
  return _REMAT_BLOCKS[remat] if train and remat != "none" else _conv_bn_relu


BOTTLENECK_KINDS = ("dense", "conv1x1")


class Encoder(nn.Module):
  """Runs an `EncoderSpec`: conv -> batch-norm -> ReLU, and max-pooling.

  bottleneck_dim > 0 ends the encoder in a learned projection to that many
  channels ('dense': flat features [B, d]; 'conv1x1': [B, h, w, d]), without ReLU,
  bounded by tanh. `bounded` (implied by a bottleneck) puts the features through
  tanh, so that noise of a given scale means the same whatever the weights.
  """

  spec: EncoderSpec
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = "auto"
  bottleneck_dim: int = 0
  bottleneck_kind: str = "dense"
  bounded: bool = False
  bn_group_size: int = 0           # >0: batch-norm statistics over groups of this many examples
  remat: str = "none"              # REMAT_POLICIES: what the backward pass recomputes

  @nn.compact
  def __call__(self, x, train: bool):  # x: [B, H, W, C] -> [B, h, w, c]
    fast = resolve_conv_impl(self.conv_impl) == "fast"
    for layer in self.spec:
      if isinstance(layer, ConvSpec):
        conv = FastConv if fast else nn.Conv
        # No bias: batch-norm removes it, so its gradient is pure float noise that
        # Adam would turn into lr-sized random steps (and layout-dependent results).
        conv = conv(layer.features, layer.kernel, layer.strides, padding=layer.padding,
                    use_bias=False, name=layer.name, dtype=self.dtype)
        bn = _bn(train, f"{layer.name}_bn", self.dtype, self.bn_group_size)
        x = _block(self.remat, train)(self, x, conv, bn)
      elif fast:
        x = fast_conv.max_pool(x, layer.window, layer.strides)
      else:
        x = nn.max_pool(x, layer.window, layer.strides, padding="VALID")
    if self.bottleneck_dim:
      if self.bottleneck_kind == "dense":
        x = nn.Dense(self.bottleneck_dim, name="bottleneck", dtype=self.dtype)(
            x.reshape((x.shape[0], -1)))                                   # [B, d]
      else:
        x = nn.Conv(self.bottleneck_dim, (1, 1), name="bottleneck", dtype=self.dtype)(x)
    if self.bottleneck_dim or self.bounded:
      x = jnp.tanh(x)
    return x


def _fit_axis(x, axis: int, start: int, size: int, mode: str):
  """Takes x[start:start+size] along `axis`, padding at the end if x is short."""
  n = x.shape[axis]
  x = jax.lax.slice_in_dim(x, start, min(start + size, n), axis=axis)
  short = size - x.shape[axis]
  if short > 0:
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, short)
    x = jnp.pad(x, pad, mode=mode)
  return x


def unpool(x, strides: Sequence[int], target_hw: Sequence[int]):
  """Un-pooling without switches: each value fills its pooling block.

  The attacker only sees E(x), never the pooling indices, so the decoder cannot
  use switch-based un-pooling; nearest-neighbour un-pooling is its mirror.
  Rows/columns dropped by the floor of a VALID pool are filled from the edge.
  """
  sh, sw = strides
  x = jnp.repeat(jnp.repeat(x, sh, axis=1), sw, axis=2)
  x = _fit_axis(x, 1, 0, target_hw[0], "edge")
  return _fit_axis(x, 2, 0, target_hw[1], "edge")


def _crop_transposed(deconv, z, lo, out):
  z = deconv(z)
  z = _fit_axis(z, 1, lo[0], out[0], "constant")
  return _fit_axis(z, 2, lo[1], out[1], "constant")


class Decoder(nn.Module):
  """The encoder mirrored layer by layer, read from the encoder's own spec.

  conv(k, s, pad) -> transposed conv(k, s) cropped exactly as the adjoint of that
  padding; max-pool -> un-pool. Every hidden layer has batch-norm + ReLU; the last
  maps into the data's value range [lo, hi] through a scaled sigmoid.
  """

  spec: EncoderSpec
  input_shape: tuple[int, int, int]
  value_range: tuple[float, float] = (0.0, 1.0)
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = "auto"
  bottleneck_dim: int = 0          # the encoder's bottleneck, mirrored by the first layer
  bottleneck_kind: str = "dense"
  width_mult: int = 1              # hidden channels x width_mult (a wider decoder family)
  bn_group_size: int = 0           # >0: batch-norm statistics over groups of this many examples
  remat: str = "none"              # REMAT_POLICIES (transposed convs of the 'xla' path)

  @nn.compact
  def __call__(self, z, train: bool):  # z: [B, h, w, c] (or [B, d]) -> [B, H, W, C]
    fast = resolve_conv_impl(self.conv_impl) == "fast"
    shapes = layer_shapes(self.spec, self.input_shape)
    n = len(self.spec)
    m = int(self.width_mult)
    if self.bottleneck_dim:
      h, w, c = shapes[-1]
      if self.bottleneck_kind == "dense":
        z = nn.Dense(h * w * c * m, use_bias=False, name="debottleneck", dtype=self.dtype)(
            z.reshape((z.shape[0], -1))).reshape((-1, h, w, c * m))
      else:
        z = nn.Conv(c * m, (1, 1), use_bias=False, name="debottleneck", dtype=self.dtype)(z)
      z = nn.relu(_bn(train, "debottleneck_bn", self.dtype, self.bn_group_size)(z))
    pending = None  # an un-pooling folded into the next transposed conv (fast path)
    for i in reversed(range(n)):
      layer, (th, tw, tc) = self.spec[i], shapes[i]
      tc = tc * m if i > 0 else tc
      if isinstance(layer, PoolSpec):
        nxt = self.spec[i - 1] if i > 0 else None
        if (fast and isinstance(nxt, ConvSpec) and tuple(nxt.strides) == (1, 1)
            and (th, tw) == (z.shape[1] * layer.strides[0], z.shape[2] * layer.strides[1])):
          pending = tuple(layer.strides)
        else:
          z = unpool(z, layer.strides, (th, tw))
        continue
      kh, kw = layer.kernel
      sh, sw = layer.strides
      lo_h = same_pad_lo(th, kh, sh) if layer.padding == "SAME" else 0
      lo_w = same_pad_lo(tw, kw, sw) if layer.padding == "SAME" else 0
      has_bn = i > 0  # hidden layers are batch-normalised: no bias (see Encoder)
      if fast and sh <= kh and sw <= kw:
        # Computes only the kept window: no lhs-dilated zeros, no cropped-away rows,
        # and no un-pooled tensor when the un-pooling before it is folded in.
        z = FastConvTranspose(tc, layer.kernel, layer.strides, (lo_h, lo_w), (th, tw),
                              use_bias=not has_bn, name=f"de{layer.name}", dtype=self.dtype,
                              unpool=pending)(z)
        pending = None
      else:
        deconv = nn.ConvTranspose(tc, layer.kernel, layer.strides, padding="VALID",
                                  use_bias=not has_bn, name=f"de{layer.name}", dtype=self.dtype)
        if has_bn and self.remat != "none" and train:
          crop = functools.partial(_crop_transposed, deconv, lo=(lo_h, lo_w), out=(th, tw))
          bn = _bn(train, f"de{layer.name}_bn", self.dtype, self.bn_group_size)
          z = _block(self.remat, train)(self, z, crop, bn)
          continue
        z = _crop_transposed(deconv, z, (lo_h, lo_w), (th, tw))
      if has_bn:
        z = _bn(train, f"de{layer.name}_bn", self.dtype, self.bn_group_size)(z)
        z = nn.relu(z)
    if isinstance(self.spec[0], PoolSpec):
      raise ValueError("An encoder spec must start with a convolution.")
    lo, hi = self.value_range
    return (lo + (hi - lo) * nn.sigmoid(z.astype(jnp.float32)))


class MLPDecoder(nn.Module):
  """A fully-connected decoder: [B, ...] features -> [B, H, W, C] in value_range."""

  output_shape: tuple
  hidden: tuple = (1024, 1024)
  value_range: tuple = (0.0, 1.0)

  @nn.compact
  def __call__(self, z, train: bool = False):
    del train
    z = z.reshape((z.shape[0], -1)).astype(jnp.float32)
    for i, w in enumerate(self.hidden, start=1):
      z = nn.relu(nn.Dense(w, name=f"fc{i}")(z))
    out = nn.Dense(int(np.prod(self.output_shape)), name="out")(z)
    lo, hi = self.value_range
    return (lo + (hi - lo) * nn.sigmoid(out)).reshape((-1,) + tuple(self.output_shape))


class Classifier(nn.Module):
  """MLP on the flattened features: hidden Dense+ReLU layers, then logits."""

  hidden: Sequence[int]
  num_classes: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  # (x, role) -> x, given by the program when fc1/fc2 are sharded over devices
  # (`ran_jax.parallel.classifier_constraints`): where the activations must be laid out.
  constrain: Callable | None = None

  @nn.compact
  def __call__(self, z, train: bool):  # z: [B, ...] -> [B, num_classes]
    z = z.reshape((z.shape[0], -1))
    sharded = self.constrain is not None and len(self.hidden) >= 2
    if sharded:
      z = self.constrain(z, "gather")
    for i, width in enumerate(self.hidden, start=1):
      z = nn.Dense(width, name=f"fc{i}", dtype=self.dtype)(z)
      if sharded and i <= 2:
        z = self.constrain(z, "hidden" if i == 1 else "batch")
      z = nn.relu(z)
      if self.dropout > 0:
        z = nn.Dropout(self.dropout, deterministic=not train)(z)
    return nn.Dense(self.num_classes, name="logits", dtype=self.dtype)(z).astype(jnp.float32)


# Decoder families an adversarial ensemble can hold besides RAN's mirrored decoder.
EXTRA_DECODERS = ("mlp", "wide")
# Attribute adversaries (the attribute game): 'linear' (logistic regression on the released
# features) and 'mlp' (one hidden layer of `attribute_hidden` units).
ATTRIBUTE_HEADS = ("linear", "mlp")


class RANModels:
  """The modules of one RAN, built for one input shape and class count.

  encoder (with its bottleneck and bound), classifier, the mirrored decoder D and
  `adversaries`: extra decoder families trained beside D ('mlp': an MLP decoder,
  'wide': the mirrored decoder with wider hidden layers). `feature_noise` is the
  standard deviation of the Gaussian noise added to the released features (see
  `ran_jax.stages.release`). `attribute_heads` (with `num_attributes` > 0) are the
  attribute adversaries of the attribute game: classifiers of a sensitive attribute
  (e.g. the speaker) on the features before the release noise, trained beside the decoders.
  """

  def __init__(self, spec: EncoderSpec, input_shape, num_classes: int, classifier_hidden,
               value_range=(0.0, 1.0), dropout: float = 0.0, dtype=jnp.float32,
               conv_impl: str = "auto", bottleneck_dim: int = 0, bottleneck_kind: str = "dense",
               feature_noise: float = 0.0, extra_decoders=(), mlp_decoder_hidden=(1024,),
               wide_decoder_mult: int = 2, num_attributes: int = 0, attribute_heads=(),
               attribute_hidden=(256,), bn_group_size: int = 0, remat: str = "none",
               release_step: float = 0.0):
    _check_impl(conv_impl)
    if bottleneck_kind not in BOTTLENECK_KINDS:
      raise ValueError(f"bottleneck_kind must be one of {BOTTLENECK_KINDS}, "
                       f"got {bottleneck_kind!r}.")
    unknown = [d for d in extra_decoders if d not in EXTRA_DECODERS]
    if unknown:
      raise ValueError(f"Unknown decoder families {unknown}; allowed: {list(EXTRA_DECODERS)}.")
    self.spec = spec
    self.input_shape = tuple(int(d) for d in input_shape)
    self.num_classes = num_classes
    self.conv_impl = conv_impl
    self.feature_noise = float(feature_noise)
    self.release_step = float(release_step or 0.0)
    vr = tuple(float(v) for v in value_range)
    self.value_range = vr
    bn = dict(bottleneck_dim=int(bottleneck_dim), bottleneck_kind=bottleneck_kind,
              bn_group_size=int(bn_group_size), remat=str(remat))
    self.encoder = Encoder(spec, dtype=dtype, conv_impl=conv_impl, bounded=self.feature_noise > 0,
                           **bn)
    self.decoder = Decoder(spec, self.input_shape, vr, dtype=dtype, conv_impl=conv_impl, **bn)
    self.classifier = Classifier(tuple(classifier_hidden), num_classes, dropout, dtype=dtype)
    families = {
        "mlp": lambda: MLPDecoder(self.input_shape, tuple(mlp_decoder_hidden), vr),
        "wide": lambda: Decoder(spec, self.input_shape, vr, dtype=dtype, conv_impl=conv_impl,
                                width_mult=int(wide_decoder_mult), **bn),
    }
    self.adversaries = {name: families[name]() for name in extra_decoders}
    bad_heads = [h for h in attribute_heads if h not in ATTRIBUTE_HEADS]
    if bad_heads:
      raise ValueError(f"Unknown attribute heads {bad_heads}; allowed: {list(ATTRIBUTE_HEADS)}.")
    if attribute_heads and int(num_attributes) < 2:
      raise ValueError("Attribute adversaries need a sensitive attribute with at least 2 values "
                       f"(got num_attributes={num_attributes}); set data.attribute.")
    self.num_attributes = int(num_attributes) if attribute_heads else 0
    heads = {"linear": (), "mlp": tuple(attribute_hidden)}
    self.attribute_heads = {name: Classifier(heads[name], self.num_attributes, 0.0, dtype=dtype)
                            for name in attribute_heads}

  def init(self, rng):
    """Returns (params, batch_stats): dicts over encoder/classifier/decoder (+adversaries)."""
    # One compiled program: op-by-op the fast path's many small slices each compile.
    return jax.jit(self._init)(rng)

  def feature_example(self):
    """A zero feature batch of one example, as the encoder releases it."""
    x = jnp.zeros((1,) + self.input_shape, jnp.float32)
    return jax.eval_shape(lambda: self.encoder.init_with_output(
        jax.random.PRNGKey(0), x, train=False)[0])

  def init_decoders(self, rng):
    """Fresh (params, batch_stats) of every adversary the generative stage trains.

    {'decoder', ['adversaries'], ['attribute']}: D, the extra decoder families and the
    attribute heads (which have no batch statistics).
    """
    z = jnp.zeros(self.feature_example().shape, jnp.float32)
    dv = self.decoder.init(rng, z, train=False)
    params, stats = {"decoder": dv["params"]}, {"decoder": dv.get("batch_stats", {})}
    if self.adversaries:
      av = {name: m.init(jax.random.fold_in(rng, i + 1), z, train=False)
            for i, (name, m) in enumerate(self.adversaries.items())}
      params["adversaries"] = {n: v["params"] for n, v in av.items()}
      stats["adversaries"] = {n: v.get("batch_stats", {}) for n, v in av.items()}
    if self.attribute_heads:
      params["attribute"] = {
          n: m.init(jax.random.fold_in(rng, 0x617474 + i), z, train=False)["params"]
          for i, (n, m) in enumerate(self.attribute_heads.items())}
    return params, stats

  def _init(self, rng):
    k_e, k_c, k_d = jax.random.split(rng, 3)
    x = jnp.zeros((1,) + self.input_shape, jnp.float32)
    ev = self.encoder.init(k_e, x, train=False)
    z = self.encoder.apply(ev, x, train=False)
    cv = self.classifier.init(k_c, z, train=False)
    dp, ds = self.init_decoders(k_d)
    params = {"encoder": ev["params"], "classifier": cv["params"], **dp}
    stats = {"encoder": ev.get("batch_stats", {}), **ds}
    return params, stats
