"""Encoder layer specifications of the paper's networks (§2.3, §3).

Each builder returns an `EncoderSpec` for a given input shape; the convolutional
part of LeNet-5, AlexNet and VGG-16, each convolution followed by batch-norm and
ReLU, with max-pooling between stages.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from ran_jax.models.spec import ConvSpec, EncoderSpec, PoolSpec, ShapeError, layer_shapes


def _axis_kernel(size: int, k: int) -> int:
  # A spatial axis of size 1 (e.g. a HAR window laid out as [T, 1, channels])
  # is convolved and pooled along the other axis only.
  return 1 if size == 1 else k


def lenet5(input_shape: Sequence[int], widths: Optional[Sequence[int]] = None) -> EncoderSpec:
  """LeNet-5 convolutional part: conv5x5(6) - pool - conv5x5(16) - pool.

  For 28x28 images this is the classic 5x5x16 = 400-d feature map. Non-image
  inputs such as HAR windows use a [T, 1, C] layout: 1-D kernels along T.
  """
  widths = tuple(widths or (6, 16))
  if len(widths) != 2:
    raise ValueError(f"lenet5 takes two conv widths, got {widths}.")
  h, w, _ = input_shape
  k = (_axis_kernel(h, 5), _axis_kernel(w, 5))
  p = (_axis_kernel(h, 2), _axis_kernel(w, 2))
  # conv2 is VALID like the original LeNet when the map is large enough (14x14 -> 10x10).
  half = (h // p[0], w // p[1])
  conv2_pad = "VALID" if min(s for s, kk in zip(half, k) if kk > 1) >= 10 else "SAME"
  return (
      ConvSpec("conv1", widths[0], k, padding="SAME"),
      PoolSpec("pool1", p, p),
      ConvSpec("conv2", widths[1], k, padding=conv2_pad),
      PoolSpec("pool2", p, p),
  )


def alexnet(input_shape: Sequence[int], widths: Optional[Sequence[int]] = None) -> EncoderSpec:
  """AlexNet convolutional part: five convs, max-pooling after conv1, conv2, conv5.

  At CIFAR size (32x32) the first conv is 5x5 stride 1 (the usual CIFAR AlexNet);
  at ImageNet size (>= 128) it is the original 11x11 stride 4.
  """
  widths = tuple(widths or (64, 192, 384, 256, 256))
  if len(widths) != 5:
    raise ValueError(f"alexnet takes five conv widths, got {widths}.")
  big = min(input_shape[0], input_shape[1]) >= 128
  first = ConvSpec("conv1", widths[0], (11, 11), (4, 4), "SAME") if big else ConvSpec(
      "conv1", widths[0], (5, 5))
  return (
      first,
      PoolSpec("pool1"),
      ConvSpec("conv2", widths[1], (5, 5)),
      PoolSpec("pool2"),
      ConvSpec("conv3", widths[2], (3, 3)),
      ConvSpec("conv4", widths[3], (3, 3)),
      ConvSpec("conv5", widths[4], (3, 3)),
      PoolSpec("pool5"),
  )


VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def vgg16(input_shape: Sequence[int], widths: Optional[Sequence[int]] = None) -> EncoderSpec:
  """VGG-16 convolutional part: 13 3x3 convs in five blocks, each block max-pooled.

  224x224 inputs give 7x7x512 features; the 32x32 variant gives 1x1x512.
  `widths` (five numbers) scales the blocks' widths, e.g. for tests.
  """
  blocks = VGG16_BLOCKS
  if widths is not None:
    widths = tuple(widths)
    if len(widths) != 5:
      raise ValueError(f"vgg16 takes five block widths, got {widths}.")
    blocks = tuple((wd,) * len(b) for wd, b in zip(widths, VGG16_BLOCKS))
  spec = []
  for bi, block in enumerate(blocks, start=1):
    for ci, feats in enumerate(block, start=1):
      spec.append(ConvSpec(f"conv{bi}_{ci}", feats, (3, 3)))
    spec.append(PoolSpec(f"pool{bi}"))
  return tuple(spec)


ENCODERS: dict[str, Callable[..., EncoderSpec]] = {
    "lenet5": lenet5,
    "alexnet": alexnet,
    "vgg16": vgg16,
}


def build_encoder_spec(name: str, input_shape: Sequence[int], widths=None) -> EncoderSpec:
  """Looks up an encoder by name and checks that `input_shape` fits it."""
  if name not in ENCODERS:
    raise ValueError(f"Unknown encoder {name!r}; allowed: {sorted(ENCODERS)}.")
  if len(input_shape) != 3:
    raise ShapeError(f"Encoder {name} needs inputs [H, W, C], got shape {tuple(input_shape)}.")
  spec = ENCODERS[name](tuple(int(d) for d in input_shape), widths)
  try:
    layer_shapes(spec, input_shape)
  except ShapeError as e:
    raise ShapeError(f"Encoder {name}: {e}") from None
  return spec
