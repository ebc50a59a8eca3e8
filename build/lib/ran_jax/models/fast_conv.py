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
import numpy as np
from jax import lax

from ran_jax.models.spec import same_pads

Pads = tuple[tuple[int, int], tuple[int, int]]


# ---------------------------------------------------------------- padding helpers


def conv_pads(in_hw: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
              padding: str) -> Pads:
  """Explicit (lo, hi) pads per spatial axis, as XLA resolves 'SAME' / 'VALID'."""
  if padding == "VALID":
    return ((0, 0), (0, 0))
  if padding != "SAME":
    raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
  return tuple(same_pads(n, k, s) for n, k, s in zip(in_hw, kernel, strides))


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


# ---------------------------------------------------------------- row-Toeplitz matmul

CONV_METHODS = ("auto", "toeplitz", "rows", "xla")

# A conv takes the Toeplitz form when its banded weight matrix stays small (it is
# rebuilt from the kernel in every step) and the matmul's zero band does not waste
# more than this factor of work over the direct conv.
TOEPLITZ_MAX_ELEMENTS = 1 << 20
TOEPLITZ_MAX_REDUNDANCY = 8.0


def _toeplitz_plan(xp_shape, w_shape, strides):
  _, hp, wp, c = xp_shape
  kh, kw, _, o = w_shape
  wo = (wp - kw) // strides[1] + 1
  elements = kh * wp * c * wo * o
  redundancy = wp / kw  # matmul MACs over the direct conv's MACs
  return elements, redundancy


def _use_toeplitz(xp_shape, w_shape, strides) -> bool:
  elements, redundancy = _toeplitz_plan(xp_shape, w_shape, strides)
  return elements <= TOEPLITZ_MAX_ELEMENTS and redundancy <= TOEPLITZ_MAX_REDUNDANCY


def choose_method(xp_shape, w_shape, strides) -> str:
  """The formulation `conv2d(method='auto')` uses for a padded input / kernel shape.

  From per-layer timings (forward and backward, 1 and 2 CPU cores, LeNet-5 and
  AlexNet-CIFAR layers and their decoder mirrors; docs/performance.md):
  * Toeplitz wherever its banded matrix is small: every LeNet layer, 2-7x faster
    than the alternatives there;
  * XLA's own convolution for thin layers (a side under 16 channels: AlexNet's
    first conv and last decoder layer, where the others build huge intermediates)
    and for larger kernels;
  * row patches for 3x3-or-smaller kernels over wide channels (10-20 % over XLA's
    backward pass there).
  """
  kh, kw, c, o = w_shape
  if _use_toeplitz(xp_shape, w_shape, strides):
    return "toeplitz"
  if min(c, o) < 16 or kh * kw > 9:
    return "xla"
  return "rows"


def _width_selector(wp: int, wo: int, kw: int, sw: int, dtype):
  """0/1 tensor S[p, q, j] = [p == q*sw + j]: input column p meets output q at tap j."""
  sel = np.zeros((wp, wo, kw), np.float32)
  for q in range(wo):
    for j in range(kw):
      sel[q * sw + j, q, j] = 1.0
  return jnp.asarray(sel, dtype)


def _conv_toeplitz(x, w, strides, pads: Pads):
  """Correlation as ONE matmul: kh-row patches times a banded (Toeplitz) weight matrix.

  Rows of the output are independent along W, so a whole output row y[b, h, :, :]
  is (kh input rows, flattened to kh*Wp*C) @ T [kh*Wp*C, Wo*O], where T holds the
  kernel on a band (T[i, p, c, q, o] = w[i, p - q*sw, c, o]). For RAN's
  small-channel layers (LeNet's 1- and 6-channel convs and their mirrors) this
  replaces several thin matmuls and large shifted-sum intermediates by one
  well-shaped matmul, at the price of multiplying the band's zeros (Wp / kw more
  MACs, bounded by TOEPLITZ_MAX_REDUNDANCY). T is built from w by a contraction
  with a constant 0/1 selector, so the kernel's gradient is one more small matmul.
  """
  kh, kw, c, o = w.shape
  sh, sw = strides
  xp = _pad_hw(x, pads)
  b, hp, wp, _ = xp.shape
  ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
  if kh == 1:
    rows = lax.slice_in_dim(xp, 0, (ho - 1) * sh + 1, sh, axis=1)[:, :, None]
  else:
    rows = jnp.stack([lax.slice_in_dim(xp, i, i + (ho - 1) * sh + 1, sh, axis=1)
                      for i in range(kh)], axis=2)  # [B, Ho, kh, Wp, C]
  if wp == kw and wo == 1:
    t = w.reshape(kh * kw * c, o)  # the band is the whole kernel (e.g. HAR's [T,1,C])
  else:
    sel = _width_selector(wp, wo, kw, sw, w.dtype)
    t = jnp.einsum("pqj,ijco->ipcqo", sel, w).reshape(kh * wp * c, wo * o)
  y = jnp.dot(rows.reshape(b * ho, kh * wp * c), t)
  return y.reshape(b, ho, wo, o)


def conv2d(x, w, strides: Sequence[int] = (1, 1), padding="SAME", method: str = "auto"):
  """Same result as `lax.conv_general_dilated(x, w, strides, padding)` in NHWC/HWIO.

  `padding` is 'SAME', 'VALID' or explicit ((lo, hi), (lo, hi)) pads (negative
  pads crop). `method`: 'toeplitz' (`_conv_toeplitz`), 'rows' (`_conv_matmul`),
  'xla' (`lax.conv_general_dilated`) or 'auto' (`choose_method`).
  """
  strides = tuple(int(s) for s in strides)
  if isinstance(padding, str):
    padding = conv_pads(x.shape[1:3], w.shape[:2], strides, padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  if method not in CONV_METHODS:
    raise ValueError(f"method must be one of {CONV_METHODS}, got {method!r}")
  if method == "auto":
    xp_shape = (x.shape[0], x.shape[1] + sum(padding[0]), x.shape[2] + sum(padding[1]),
                x.shape[3])
    method = choose_method(xp_shape, w.shape, strides)
  if method == "toeplitz":
    return _conv_toeplitz(x, w, strides, padding)
  if method == "xla":
    return lax.conv_general_dilated(_pad_hw(x, padding), w, strides, "VALID",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
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
                           out_hw: Sequence[int], method: str = "auto"):
  """Flax `ConvTranspose(padding='VALID', transpose_kernel=False)` then crop.

  Equals taking rows [lo, lo+t) (zero beyond the end) of the full transposed conv
  of z [B, n_h, n_w, C] with w [kh, kw, C, O], for strides s <= kernel size.
  """
  kh, kw, c, o = w.shape
  (sh, sw), (th, tw) = strides, out_hw
  if sh > kh or sw > kw:
    raise ValueError("sub-pixel transposed conv needs strides <= kernel size")
  _, nh, nw, _ = z.shape
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
  return _phase_conv(z, wc.astype(w.dtype), ((plo_h, phi_h), (plo_w, phi_w)), (sh, sw),
                     (ah, aw), (th, tw), o, method)


def _phase_conv(z, wc, pads: Pads, phases, a_hw, out_hw, o: int, method: str):
  """Stride-1 correlation giving all sh*sw output phases as channels, interleaved
  back into space (depth-to-space) and cropped to out_hw."""
  (sh, sw), (ah, aw), (th, tw) = phases, a_hw, out_hw
  y = conv2d(z, wc, (1, 1), pads, method)
  if sh != 1 or sw != 1:
    b = z.shape[0]
    y = y.reshape(b, ah, aw, sh, sw, o).transpose(0, 1, 3, 2, 4, 5).reshape(b, ah * sh, aw * sw, o)
  return y[:, :th, :tw, :]


# ---------------------------------------------------------------- un-pool + transposed conv


def _unpool_axis_plan(n: int, k: int, s: int, lo: int, t: int):
  """One axis of: repeat z (length n) s times, stride-1 ConvTranspose(k), crop [lo, lo+t).

  The stride-1 transposed conv cropped to [lo, lo+t) is a correlation of the
  un-pooled u (length s*n) zero-padded by (k-1-lo) in front. Output q = s*a + r
  reads u[q + j - (k-1-lo)] = z[a + (r + j - (k-1-lo)) // s] through tap j, so
  each phase r is a correlation of z itself with taps summed per input offset.
  Returns (A [s, M, k] 0/1 numpy: A[r, m, j] = tap j lands on offset m of phase r,
  pad_lo, pad_hi, a_len) with out[s*a + r] = sum_m zpad[a + m] (A[r, m] . w).
  """
  plo = k - 1 - lo
  offs = [[(r + j - plo) // s for j in range(k)] for r in range(s)]
  mmin = min(min(o) for o in offs)
  mmax = max(max(o) for o in offs)
  m_len = mmax - mmin + 1
  a = np.zeros((s, m_len, k), np.float32)
  for r in range(s):
    for j in range(k):
      a[r, offs[r][j] - mmin, j] = 1.0
  a_len = -(-t // s)
  pad_lo = -mmin
  pad_hi = a_len + m_len - 1 - n - pad_lo
  return a, pad_lo, pad_hi, a_len


def unpool_conv_transpose_cropped(z, w, pool: Sequence[int], crop_lo: Sequence[int],
                                  out_hw: Sequence[int], method: str = "auto"):
  """`conv_transpose_cropped(unpool(z, pool), w, (1, 1), crop_lo, out_hw)` on z itself.

  The decoder's nearest-neighbour un-pooling (each value fills its s x s block)
  followed by a stride-1 transposed conv is linear in z, and every output phase
  (q mod s) sees z through a small summed kernel (5x5 after 2x2 un-pooling -> 3x3
  per phase). One stride-1 correlation of z with all phases as output channels,
  then a depth-to-space interleave, gives the same values with the un-pooled
  tensor never built and about s*s fewer multiply-adds. The un-pooled size must be
  exactly s * z's size (the decoder checks).
  """
  kh, kw, c, o = w.shape
  (sh, sw), (th, tw) = pool, out_hw
  _, nh, nw, _ = z.shape
  ah_, plo_h, phi_h, ah = _unpool_axis_plan(nh, kh, sh, crop_lo[0], th)
  aw_, plo_w, phi_w, aw = _unpool_axis_plan(nw, kw, sw, crop_lo[1], tw)
  mh, mw = ah_.shape[1], aw_.shape[1]
  wc = jnp.einsum("rmi,snj,ijco->mncrso", jnp.asarray(ah_, w.dtype), jnp.asarray(aw_, w.dtype), w)
  wc = wc.reshape(mh, mw, c, sh * sw * o)
  return _phase_conv(z, wc, ((plo_h, phi_h), (plo_w, phi_w)), (sh, sw), (ah, aw), (th, tw), o,
                     method)


# ---------------------------------------------------------------- max-pool


def _window_slices(x, window):
  """The wh*ww strided views of non-overlapping windows, in row-major window order."""
  wh, ww = window
  return [x[:, i::wh, j::ww, :] for i in range(wh) for j in range(ww)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _pool_windows(x, window):
  return _pool_fwd(x, window)[0]


def _pool_fwd(x, window):
  # A running max over the window's strided views: elementwise, one fusion, no
  # 6-D reshapes or transposes. The winner's index is taken here, in the same
  # computation as the max: comparing `x == y` in the backward pass instead is
  # unsafe, since XLA may recompute x there with a different fusion (other
  # rounding), the equality then fails for some windows and their gradient is
  # silently dropped. Strict '>' keeps the first maximum in row-major order, as
  # XLA's select-and-scatter does.
  views = _window_slices(x, window)
  m, idx = views[0], jnp.zeros(views[0].shape, jnp.int8)
  for t, v in enumerate(views[1:], start=1):
    better = v > m
    m = jnp.where(better, v, m)
    idx = jnp.where(better, jnp.int8(t), idx)
  return m, idx


def _pool_bwd(window, idx, dy):
  wh, ww = window
  b, h2, w2, c = dy.shape
  zero = jnp.zeros((), dy.dtype)
  parts = jnp.stack([jnp.where(idx == t, dy, zero) for t in range(wh * ww)], axis=3)
  dx = parts.reshape(b, h2, w2, wh, ww, c).transpose(0, 1, 3, 2, 4, 5)
  return (dx.reshape(b, h2 * wh, w2 * ww, c),)


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
