"""Convolutions formulated for speed on CPU: patches + matmul, sub-pixel transposed convs.

XLA's CPU convolutions are slow on RAN's small-channel layers (a 1-channel 5x5
transposed conv dominated a LeNet iteration), while its matmuls run near the
machine's ceiling. This module computes the same functions as
`lax.conv_general_dilated` / Flax's `ConvTranspose` + crop, in forms that lower to
slices, one concatenation and one dot:

* `conv2d`: a 2-D correlation as patches [B*Ho*Wo, kh*kw*C] @ kernel [kh*kw*C, O].
  Its backward pass is written out (custom VJP): the input gradient of a
  stride-1 correlation is another stride-1 correlation (of the output gradient
  with the flipped, in/out-swapped kernel), so it too is patches + matmul
  instead of a scatter of [N, kh*kw*C] patch gradients back onto the image.
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


def _out_len(n: int, k: int, s: int, lo: int, hi: int) -> int:
  return (n + lo + hi - k) // s + 1


# ---------------------------------------------------------------- patches + matmul


def _patches(xp, kernel: Sequence[int], strides: Sequence[int], out_hw: Sequence[int]):
  """[B, Hp, Wp, C] (already padded) -> [B, Ho, Wo, kh*kw*C], tap-major like HWIO."""
  kh, kw = kernel
  sh, sw = strides
  ho, wo = out_hw
  if (kh, kw) == (1, 1) and (sh, sw) == (1, 1):
    return xp[:, :ho, :wo, :]
  cols = []
  for i in range(kh):
    for j in range(kw):
      cols.append(lax.slice(xp, (0, i, j, 0),
                            (xp.shape[0], i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, xp.shape[3]),
                            (1, sh, sw, 1)))
  return jnp.concatenate(cols, axis=-1) if len(cols) > 1 else cols[0]


def _conv_matmul(x, w, strides, pads: Pads):
  """Correlation of x [B,H,W,C] with w [kh,kw,C,O] as patches @ kernel."""
  kh, kw, c, o = w.shape
  b, h, wd, _ = x.shape
  ho = _out_len(h, kh, strides[0], *pads[0])
  wo = _out_len(wd, kw, strides[1], *pads[1])
  p = _patches(_pad_hw(x, pads), (kh, kw), strides, (ho, wo))  # [B, Ho, Wo, kh*kw*C]
  y = jnp.dot(p.reshape(b * ho * wo, kh * kw * c), w.reshape(kh * kw * c, o),
              preferred_element_type=jnp.float32 if x.dtype == jnp.float32 else None)
  return y.reshape(b, ho, wo, o).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_s1(x, w, pads: Pads):
  return _conv_matmul(x, w, (1, 1), pads)


def _conv_s1_fwd(x, w, pads):
  return _conv_matmul(x, w, (1, 1), pads), (x, w)


def _conv_s1_bwd(pads, res, dy):
  x, w = res
  kh, kw, c, o = w.shape
  b, h, wd, _ = x.shape
  _, ho, wo, _ = dy.shape
  # dW: patches(x)^T @ dy, one [K, N] x [N, O] matmul.
  p = _patches(_pad_hw(x, pads), (kh, kw), (1, 1), (ho, wo)).reshape(b * ho * wo, kh * kw * c)
  dw = jnp.dot(p.T, dy.reshape(b * ho * wo, o)).reshape(kh, kw, c, o).astype(w.dtype)
  # dx[i] = sum_j dy[i + lo - j] w[j]: a correlation of dy with the flipped kernel.
  w_t = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)  # [kh, kw, O, C]
  dpads = tuple((k - 1 - lo, n + k - 1 - m - (k - 1 - lo))
                for (lo, _), k, n, m in zip(pads, (kh, kw), (h, wd), (ho, wo)))
  dx = _conv_matmul(dy, w_t, (1, 1), dpads).astype(x.dtype)
  return dx, dw


_conv_s1.defvjp(_conv_s1_fwd, _conv_s1_bwd)


def conv2d(x, w, strides: Sequence[int] = (1, 1), padding="SAME"):
  """Same result as `lax.conv_general_dilated(x, w, strides, padding)` in NHWC/HWIO.

  `padding` is 'SAME', 'VALID' or explicit ((lo, hi), (lo, hi)) pads.
  """
  strides = tuple(int(s) for s in strides)
  if isinstance(padding, str):
    padding = conv_pads(x.shape[1:3], w.shape[:2], strides, padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  if strides == (1, 1):
    return _conv_s1(x, w, padding)
  # Strided convs (AlexNet-224's first layer) keep autodiff's backward pass.
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
  y = _pool_windows(x, window)
  return y, (x, y)


def _pool_bwd(window, res, dy):
  x, y = res
  b, h, w, c = x.shape
  wh, ww = window
  xr = x.reshape(b, h // wh, wh, w // ww, ww, c)
  hit = xr == y[:, :, None, :, None, :]
  # First maximum in row-major window order takes the gradient (ties are common:
  # constant background regions), like XLA's select-and-scatter with `ge`.
  taken = jnp.zeros_like(hit[:, :, 0, :, 0, :])
  grads = []
  for i in range(wh):
    row = []
    for j in range(ww):
      sel = hit[:, :, i, :, j, :] & ~taken
      taken = taken | sel
      row.append(jnp.where(sel, dy, jnp.zeros_like(dy)))
    grads.append(jnp.stack(row, axis=3))  # [B, h2, w2, ww, C]
  dx = jnp.stack(grads, axis=2)  # [B, h2, wh, w2, ww, C]
  return (dx.reshape(b, h, w, c),)


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
