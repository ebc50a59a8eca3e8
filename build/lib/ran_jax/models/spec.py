"""Layer specifications shared by the encoders and their mirrored decoders.

An encoder is described by a tuple of `ConvSpec` / `PoolSpec` entries. The
encoder module executes the tuple forwards; the decoder reads the *same* tuple
backwards (pool -> un-pool, conv -> transposed conv), so every encoder gets its
exact mirror without a hand-written twin.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence, Union


@dataclasses.dataclass(frozen=True)
class ConvSpec:
  """A convolution followed by batch-norm and ReLU."""

  name: str
  features: int
  kernel: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: str = "SAME"  # 'SAME' or 'VALID'


@dataclasses.dataclass(frozen=True)
class PoolSpec:
  """A max-pooling layer."""

  name: str
  window: tuple[int, int] = (2, 2)
  strides: tuple[int, int] = (2, 2)


LayerSpec = Union[ConvSpec, PoolSpec]
EncoderSpec = tuple[LayerSpec, ...]


class ShapeError(ValueError):
  """An input shape that the model cannot process."""


def _out_len(n: int, k: int, s: int, padding: str) -> int:
  if padding == "SAME":
    return -(-n // s)
  return (n - k) // s + 1


def same_pads(n: int, k: int, s: int) -> tuple[int, int]:
  """(leading, trailing) padding XLA/Flax use for a 'SAME' window of size k, stride s.

  The one statement of the rule: the fast convs, the mirrored decoder's crop and the
  PyTorch reference all take it from here.
  """
  out = -(-n // s)
  total = max((out - 1) * s + k - n, 0)
  return total // 2, total - total // 2


def same_pad_lo(n: int, k: int, s: int) -> int:
  """Leading padding of a 'SAME' window (see `same_pads`)."""
  return same_pads(n, k, s)[0]


def layer_shapes(spec: Sequence[LayerSpec],
                 input_shape: Sequence[int]) -> list[tuple[int, int, int]]:
  """Returns the [H, W, C] shape entering each layer, plus the final output shape.

  Raises ShapeError naming the layer when the input is too small or malformed.
  """
  if len(input_shape) != 3 or any(int(d) < 1 for d in input_shape):
    raise ShapeError(
        f"Encoder input must be [H, W, C] with positive sizes, got {tuple(input_shape)}."
    )
  h, w, c = (int(d) for d in input_shape)
  shapes = [(h, w, c)]
  for layer in spec:
    if isinstance(layer, ConvSpec):
      kh, kw = layer.kernel
      sh, sw = layer.strides
      if layer.padding not in ("SAME", "VALID"):
        raise ShapeError(f"Layer {layer.name}: padding must be 'SAME' or 'VALID', "
                         f"got {layer.padding!r}.")
      nh, nw = _out_len(h, kh, sh, layer.padding), _out_len(w, kw, sw, layer.padding)
      c = layer.features
    elif isinstance(layer, PoolSpec):
      (kh, kw), (sh, sw) = layer.window, layer.strides
      nh, nw = _out_len(h, kh, sh, "VALID"), _out_len(w, kw, sw, "VALID")
    else:
      raise TypeError(f"Unknown layer spec {layer!r}")
    if nh < 1 or nw < 1:
      raise ShapeError(
          f"Input shape {tuple(input_shape)} is too small: layer {layer.name} "
          f"(window {kh}x{kw}, stride {sh}x{sw}) gets {h}x{w} and would produce {nh}x{nw}."
      )
    h, w = nh, nw
    shapes.append((h, w, c))
  return shapes


def feature_shape(spec: Sequence[LayerSpec], input_shape: Sequence[int]) -> tuple[int, int, int]:
  return layer_shapes(spec, input_shape)[-1]
