"""Convolutions formulated for speed on CPU: patches + matmul, sub-pixel transposed convs.

XLA's CPU convolutions are slow on RAN's small-channel layers (a 1-channel 5x5
transposed conv dominated a LeNet iteration), while its matmuls run near the
machine's ceiling. This module computes the same functions as
`lax.conv_general_dilated` / Flax's `ConvTranspose` + crop, in forms that lower to
slices, one small concatenation and one dot:

* `conv2d`: a 2-D correlation as row patches [B*Hp*Wo, kw*C] @ kernel [kw*C, kh*O]
  followed by a sum of kh row-shifted slices (see `_conv_matmul` for why not
  full kh*kw*C patches). Autodiff gives a backward pass of pads, slices and two
  matmuls.
* `conv_transpose_cropped`: Flax's `ConvTranspose(padding='VALID')` (no kernel
  flip) followed by the decoder's crop to the mirrored encoder shape, as ONE
  stride-1 correlation producing all s*s output phases as channels (sub-pixel
  convolution), then a depth-to-space interleave. Only the cropped outputs are
  computed: no lhs-dilated zeros, no full-size output thrown away.
* `max_pool`: non-overlapping pooling as a reshape + max, with a backward pass
  that routes the gradient to the first maximum of each window in row-major
  order, as XLA's select-and-scatter does, but without the scatter.

All functions take NHWC inputs and HWIO kernels, like Flax. Parameter layouts are
the Flax ones, so checkpoints move between `conv_impl='fast'` and `'xla'`.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

Pads = tuple[tuple[int, int], tuple[int, int]]


# ---------------------------------------------------------------- padding helpers


def conv_pads(in_hw: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
              padding: str) -> Pads:
  """Explicit (lo, hi) pads per spatial axis, as XLA resolves 'SAME' / 'VALID'."""
  if padding == "VALID":
    return ((0, 0), (0, 0))
  if padding != "SAME":
    raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
  pads = []
  for n, k, s in zip(in_hw, kernel, strides):
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    pads.append((total // 2, total - total // 2))
  return tuple(pads)


def _pad_hw(x, pads: Pads):
  """Zero-pads (or crops, for negative pads) the H and W axes of [B, H, W, C]."""
  if all(p == 0 for pair in pads for p in pair):
    return x
  cfg = [(0, 0, 0), (pads[0][0], pads[0][1], 0), (pads[1][0], pads[1][1], 0), (0, 0, 0)]
  return lax.pad(x, jnp.zeros((), x.dtype), cfg)


# ---------------------------------------------------------------- row patches + matmul


def _conv_matmul(x, w, strides, pads: Pads):
  """Correlation of x [B,H,W,C] with w [kh,kw,C,O] as one matmul and a row-shift sum.

  Full kh*kw*C patches need a kh*kw-way concatenation, which XLA's CPU backend
  emits as a per-element select chain (slower than its conv). Patches along W
  only (kw operands) times a kernel laid out [kw*C, kh*O] give every row tap's
  contribution at once, Z[b, h, wo, i, o]; the output sums kh row-shifted slices
  of Z, one elementwise fusion. Autodiff of this form is slices, pads and two
  matmuls: no scatter, no transposed convolution.
  """
  kh, kw, c, o = w.shape
  sh, sw = strides
  xp = _pad_hw(x, pads)
  b, hp, wp, _ = xp.shape
  ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
  if kw == 1:
    p = xp[:, :, : (wo - 1) * sw + 1 : sw, :]
  else:
    p = jnp.concatenate([lax.slice_in_dim(xp, j, j + (wo - 1) * sw + 1, sw, axis=2)
                         for j in range(kw)], axis=-1)  # [B, Hp, Wo, kw*C]
  wa = w.transpose(1, 2, 0, 3).reshape(kw * c, kh * o)
  z = jnp.dot(p.reshape(b * hp * wo, kw * c), wa).reshape(b, hp, wo, kh, o)
  y = lax.slice_in_dim(z[:, :, :, 0], 0, (ho - 1) * sh + 1, sh, axis=1)
  for i in range(1, kh):
    y = y + lax.slice_in_dim(z[:, :, :, i], i, i + (ho - 1) * sh + 1, sh, axis=1)
  return y  # [B, Ho, Wo, O]


def conv2d(x, w, strides: Sequence[int] = (1, 1), padding="SAME"):
  """Same result as `lax.conv_general_dilated(x, w, strides, padding)` in NHWC/HWIO.

  `padding` is 'SAME', 'VALID' or explicit ((lo, hi), (lo, hi)) pads (negative
  pads crop).
  """
  strides = tuple(int(s) for s in strides)
  if isinstance(padding, str):
    padding = conv_pads(x.shape[1:3], w.shape[:2], strides, padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _conv_matmul(x, w, strides, padding)


# ---------------------------------------------------------------- transposed conv


def _axis_phases(n: int, k: int, s: int, lo: int, t: int):
  """Sub-pixel plan for one axis of ConvTranspose(VALID) cropped to [lo, lo+t).

  The full transposed conv is out[o] = sum_j xd[o + j - (k-1)] w[j] with xd the
  input dilated by s. Output q = s*a + r of the crop reads input a + d_r + m
  through tap j0_r + s*m. Returns (taps [s][M] with -1 for 'no tap', pad_lo,
  pad_hi, A) so that out[s*a + r] = sum_mm xpad[a + mm] w[taps[r][mm]].
  """
  plans = []
  for r in range(s):
    e = r + lo - (k - 1)
    j0 = (-e) % s
    taps = list(range(j0, k, s))
    d = (e + j0) // s
    plans.append((d, taps))
  dmin = min(d for d, _ in plans)
  m_len = max(d - dmin + len(t_) for d, t_ in plans)
  table = []
  for d, taps_r in plans:
    row = [-1] * m_len
    for m, j in enumerate(taps_r):
      row[d - dmin + m] = j
    table.append(row)
  a_len = -(-t // s)
  pad_lo = -dmin
  pad_hi = a_len + m_len - 1 - n - pad_lo
  return table, pad_lo, pad_hi, a_len


def conv_transpose_cropped(z, w, strides: Sequence[int], crop_lo: Sequence[int],
                           out_hw: Sequence[int]):
  """Flax `ConvTranspose(padding='VALID', transpose_kernel=False)` then crop.

  Equals taking rows [lo, lo+t) (zero beyond the end) of the full transposed conv
  of z [B, n_h, n_w, C] with w [kh, kw, C, O], for strides s <= kernel size.
  """
  kh, kw, c, o = w.shape
  (sh, sw), (th, tw) = strides, out_hw
  if sh > kh or sw > kw:
    raise ValueError("sub-pixel transposed conv needs strides <= kernel size")
  b, nh, nw, _ = z.shape
  tab_h, plo_h, phi_h, ah = _axis_phases(nh, kh, sh, crop_lo[0], th)
  tab_w, plo_w, phi_w, aw = _axis_phases(nw, kw, sw, crop_lo[1], tw)
  mh, mw = len(tab_h[0]), len(tab_w[0])
  if sh == 1 and sw == 1:
    wc = w  # one phase whose taps are 0..k-1 in order: the kernel itself
  else:
    # Combined kernel [mh, mw, C, sh*sw*O]; missing taps are zero.
    wz = jnp.pad(w, ((0, 1), (0, 1), (0, 0), (0, 0)))  # index -1 -> the zero row
    ih = jnp.asarray(tab_h)  # [sh, mh]
    iw = jnp.asarray(tab_w)  # [sw, mw]
    wc = wz[ih[:, :, None, None], iw[None, None, :, :]]  # [sh, mh, sw, mw, C, O]
    wc = wc.transpose(1, 3, 4, 0, 2, 5).reshape(mh, mw, c, sh * sw * o)
  y = conv2d(z, wc.astype(w.dtype), (1, 1), ((plo_h, phi_h), (plo_w, phi_w)))
  if sh != 1 or sw != 1:
    y = y.reshape(b, ah, aw, sh, sw, o).transpose(0, 1, 3, 2, 4, 5).reshape(b, ah * sh, aw * sw, o)
  return y[:, :th, :tw, :]


# ---------------------------------------------------------------- max-pool


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _pool_windows(x, window):
  b, h, w, c = x.shape
  wh, ww = window
  return x.reshape(b, h // wh, wh, w // ww, ww, c).max(axis=(2, 4))


def _pool_fwd(x, window):
  b, h, w, c = x.shape
  wh, ww = window
  xr = x.reshape(b, h // wh, wh, w // ww, ww, c)
  # The winner's position is taken here, in the same computation as the max.
  # Comparing `x == y` in the backward pass instead is unsafe: XLA may recompute
  # x there with a different fusion (other rounding), the equality then fails for
  # some windows and their gradient is silently dropped.
  flat = xr.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // wh, w // ww, c, wh * ww)
  idx = jnp.argmax(flat, axis=-1)  # first maximum in row-major window order
  return xr.max(axis=(2, 4)), idx


def _pool_bwd(window, idx, dy):
  wh, ww = window
  b, h2, w2, c = dy.shape
  onehot = jax.nn.one_hot(idx, wh * ww, dtype=dy.dtype)  # [B, h2, w2, C, wh*ww]
  dx = (onehot * dy[..., None]).reshape(b, h2, w2, c, wh, ww)
  dx = dx.transpose(0, 1, 4, 2, 5, 3).reshape(b, h2 * wh, w2 * ww, c)
  return (dx,)


_pool_windows.defvjp(_pool_fwd, _pool_bwd)


def max_pool(x, window: Sequence[int], strides: Sequence[int]):
  """VALID max-pooling; non-overlapping windows take the reshape path."""
  window, strides = tuple(window), tuple(strides)
  if window != strides:
    from flax import linen as nn  # overlapping windows: the generic lowering
    return nn.max_pool(x, window, strides, padding="VALID")
  b, h, w, c = x.shape
  hh, ww = (h // window[0]) * window[0], (w // window[1]) * window[1]
  if (hh, ww) != (h, w):
    x = x[:, :hh, :ww, :]
  if window == (1, 1):
    return x
  return _pool_windows(x, window)
