"""PyTorch reference of the attacker training, for `python -m bench attackers`.

The straightforward implementation a user would write of the attackers of
`ran_jax.privacy.attackers`, trained as the protocol trains them: a Python loop over
the epoch's batches (the same index batches as the JAX side), fresh release noise
N(0, sigma^2) added to each batch of features, the decoder in train mode (batch
statistics), per-example summed squared error averaged over the batch
(`bench.torch_reference.recon_error`), Adam; then a validation pass in eval mode.

  mirrored  the encoder's mirror with its bottleneck: Linear (no bias) to the last
            encoder shape, BatchNorm, ReLU, then `bench.torch_reference.Decoder`
            (ConvTranspose2d + crop, nearest un-pooling), as `ran_jax.models.Decoder`.
  resnet    `ran_jax.privacy.attackers.ResNetDecoder`: Linear to a coarse grid, per
            stage nearest up-sampling, 3x3 conv, residual blocks; 3x3 conv out.

Batch-norm momenta and epsilons follow the Flax modules. tests/test_bench.py checks
that each network has exactly the parameter count of its JAX twin.
torch is not a dependency of ran_jax: `pip install torch==2.13.0` (CPU build).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.torch_reference import Decoder, recon_error
from ran_jax.models import layer_shapes
from ran_jax.models.modules import BN_EPSILON, BN_MOMENTUM

FLAX_BN_MOMENTUM = 0.99   # nn.BatchNorm's default (the residual decoder uses it)


class MirroredDecoder(nn.Module):
  """`ran_jax.models.Decoder` with a dense bottleneck of `bottleneck_dim` (0: none)."""

  def __init__(self, spec, input_shape, value_range, bottleneck_dim: int = 0):
    super().__init__()
    h, w, c = layer_shapes(spec, input_shape)[-1]
    self.grid = (c, h, w)
    self.debottleneck = None
    if bottleneck_dim:
      self.debottleneck = nn.Linear(bottleneck_dim, h * w * c, bias=False)
      self.bn = nn.BatchNorm2d(c, momentum=1 - BN_MOMENTUM, eps=BN_EPSILON)
    self.decoder = Decoder(spec, input_shape, value_range)

  def forward(self, z):
    if self.debottleneck is not None:
      z = F.relu(self.bn(self.debottleneck(z.flatten(1)).view(-1, *self.grid)))
    return self.decoder(z)


class ResNetDecoder(nn.Module):
  """`ran_jax.privacy.attackers.ResNetDecoder` in PyTorch (NCHW)."""

  def __init__(self, in_features, output_shape, value_range=(0.0, 1.0), width=64, blocks=1,
               stages=2):
    super().__init__()
    h, w, c = output_shape
    f = 2 ** stages
    self.out_hw = (h, w)
    self.up = (2 if h > 1 else 1, 2 if w > 1 else 1)
    self.grid_shape = (width, -(-h // f) if h > 1 else 1, -(-w // f) if w > 1 else 1)
    self.value_range = value_range
    bn = lambda ch: nn.BatchNorm2d(ch, momentum=1 - FLAX_BN_MOMENTUM, eps=BN_EPSILON)  # noqa: E731
    self.grid = nn.Linear(in_features, int(np.prod(self.grid_shape)))
    self.grid_bn = bn(width)
    self.stages = nn.ModuleList()
    ch = width
    for _ in range(stages):
      prev, ch = ch, max(ch // 2, 8)
      res = nn.ModuleList([nn.ModuleList([nn.Conv2d(ch, ch, 3, padding=1, bias=False), bn(ch),
                                          nn.Conv2d(ch, ch, 3, padding=1, bias=False), bn(ch)])
                           for _ in range(blocks)])
      self.stages.append(nn.ModuleList([nn.Conv2d(prev, ch, 3, padding=1), bn(ch), res]))
    self.out = nn.Conv2d(ch, c, 3, padding=1)

  def forward(self, z):
    y = self.grid(z.flatten(1)).view(-1, *self.grid_shape)
    y = F.relu(self.grid_bn(y))
    for conv, bn, res in self.stages:
      y = F.interpolate(y, scale_factor=self.up, mode="nearest")
      y = F.relu(bn(conv(y)))
      for ca, ba, cb, bb in res:
        y = F.relu(y + bb(cb(F.relu(ba(ca(y))))))
    y = self.out(y)[:, :, :self.out_hw[0], :self.out_hw[1]]
    lo, hi = self.value_range
    return lo + (hi - lo) * torch.sigmoid(y)


class TorchAttacker:
  """One attacker, its Adam and the protocol's epoch: train steps, then validation."""

  def __init__(self, net: nn.Module, z, x, z_val, x_val, noise: float, lr: float = 1e-3,
               val_chunk: int = 512):
    self.net = net
    self.opt = torch.optim.Adam(net.parameters(), lr=lr)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    nchw = lambda a: np.transpose(a, (0, 3, 1, 2))  # noqa: E731
    self.z, self.x = t(z), t(nchw(x))
    self.z_val, self.x_val = t(z_val), t(nchw(x_val))
    self.noise, self.val_chunk = float(noise), val_chunk

  def epoch(self, order: np.ndarray) -> float:
    """Adam steps over the batches `order` [steps, batch], then the validation loss."""
    self.net.train()
    for idx in torch.from_numpy(np.asarray(order, np.int64)):
      zb, xb = self.z[idx], self.x[idx]
      if self.noise:
        zb = zb + self.noise * torch.randn_like(zb)
      self.opt.zero_grad(set_to_none=True)
      loss = recon_error(xb, self.net(zb))
      loss.backward()
      self.opt.step()
    self.net.eval()
    tot = 0.0
    with torch.no_grad():
      for s in range(0, len(self.z_val), self.val_chunk):
        xb = self.x_val[s:s + self.val_chunk]
        se = (self.net(self.z_val[s:s + self.val_chunk]) - xb).square().flatten(1).sum(1)
        tot += float(se.sum())
    return tot / len(self.z_val)


def parameter_count(net: nn.Module) -> int:
  return sum(p.numel() for p in net.parameters())
