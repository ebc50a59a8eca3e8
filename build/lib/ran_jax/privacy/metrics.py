"""Reconstruction metrics with their conventions stated once.

Convention (the project's and the paper's |I - I'|^2): inputs are in the data's
`value_range` (images: [0, 1], pixel / 255).
  mse_sum   per example, squared error summed over all input values (H*W*C),
            then averaged over the test examples (the paper's Euclidean error).
  mse_mean  per example, squared error averaged over the input values, then over
            examples (= mse_sum / (H*W*C)).
  psnr      10*log10(R^2 / mse_mean) dB with R = hi - lo of `value_range`,
            computed from the test-set mse_mean (so it orders attackers like MSE).
  ssim      Wang et al. (2004) SSIM, Gaussian window sigma=1.5 truncated at 3.5 sigma
            (11 taps), K1=0.01, K2=0.03, data_range=R, computed per channel on the
            spatial axes and averaged over pixels, channels and test examples.
            Axes of size 1 (HAR windows laid out [T, 1, C]) are not filtered.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _flat(x) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x.reshape(x.shape[0], -1)


def mse_per_example(x, x_rec, reduction: str = "sum") -> np.ndarray:
  """[N] squared error of each example, summed ('sum') or averaged ('mean') over values."""
  se = np.square(_flat(x) - _flat(x_rec))
  return se.sum(-1) if reduction == "sum" else se.mean(-1)


def psnr(mse_mean: float, data_range: float) -> float:
  """Peak signal-to-noise ratio in dB from a per-value MSE; +inf for an exact copy."""
  if mse_mean <= 0:
    return float("inf")
  return float(10.0 * np.log10(data_range ** 2 / mse_mean))


def ssim_per_example(x, y, data_range: float) -> np.ndarray:
  """[N] mean SSIM of each [H, W, C] example pair (see the module docstring)."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  if x.shape != y.shape or x.ndim != 4:
    raise ValueError(f"ssim expects two [N, H, W, C] arrays of one shape, got {x.shape}, {y.shape}")
  sigma = [0.0, SSIM_SIGMA if x.shape[1] > 1 else 0.0, SSIM_SIGMA if x.shape[2] > 1 else 0.0, 0.0]

  def filt(a):
    return ndimage.gaussian_filter(a, sigma, mode="reflect", truncate=SSIM_TRUNCATE)

  c1 = (SSIM_K1 * data_range) ** 2
  c2 = (SSIM_K2 * data_range) ** 2
  mx, my = filt(x), filt(y)
  vx = filt(x * x) - mx * mx
  vy = filt(y * y) - my * my
  cxy = filt(x * y) - mx * my
  s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
  return s.reshape(s.shape[0], -1).mean(-1)


def reconstruction_metrics(x, x_rec, value_range=(0.0, 1.0), batch: int = 2048) -> dict:
  """mse_sum, mse_mean, psnr, ssim of reconstructions x_rec of the test inputs x."""
  lo, hi = (float(v) for v in value_range)
  rng_ = hi - lo
  x = np.asarray(x)
  x_rec = np.asarray(x_rec)
  sums, means, ssims = [], [], []
  for s in range(0, len(x), batch):
    xb, rb = x[s:s + batch], x_rec[s:s + batch]
    sums.append(mse_per_example(xb, rb, "sum"))
    means.append(mse_per_example(xb, rb, "mean"))
    ssims.append(ssim_per_example(xb, rb, rng_))
  mse_mean = float(np.concatenate(means).mean())
  return {
      "mse_sum": float(np.concatenate(sums).mean()),
      "mse_mean": mse_mean,
      "psnr": psnr(mse_mean, rng_),
      "ssim": float(np.concatenate(ssims).mean()),
  }
