"""PyTorch-eager reference of RAN for `ran_jax.bench` (imported only by the benchmark).

The straightforward implementation a user would write: nn.Conv2d / BatchNorm2d /
MaxPool2d encoder, the decoder mirrored from the same `EncoderSpec`
(ConvTranspose2d + crop, nearest un-pooling), an MLP classifier, three Adam
optimizers, and Algorithm 1 as a Python loop of k (discriminative, generative)
passes and one adversarial pass. torch is not a dependency of ran_jax:
`pip install torch==2.13.0` (CPU build) to run it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ran_jax.models.spec import ConvSpec, PoolSpec, layer_shapes, same_pad_lo


def _same_pads(n, k, s):
  out = -(-n // s)
  total = max((out - 1) * s + k - n, 0)
  return total // 2, total - total // 2


class Encoder(nn.Module):

  def __init__(self, spec, input_shape):
    super().__init__()
    shapes = layer_shapes(spec, input_shape)
    self.layers = nn.ModuleList()
    self.kinds = []
    for layer, (h, w, c) in zip(spec, shapes):
      if isinstance(layer, ConvSpec):
        pads = (0, 0, 0, 0)
        if layer.padding == "SAME":
          ph = _same_pads(h, layer.kernel[0], layer.strides[0])
          pw = _same_pads(w, layer.kernel[1], layer.strides[1])
          pads = (pw[0], pw[1], ph[0], ph[1])
        self.layers.append(nn.ModuleList([
            nn.Conv2d(c, layer.features, layer.kernel, layer.strides, bias=False),  # BN follows
            nn.BatchNorm2d(layer.features, momentum=0.1, eps=1e-5)]))
        self.kinds.append(("conv", pads))
      else:
        self.layers.append(nn.MaxPool2d(layer.window, layer.strides))
        self.kinds.append(("pool", None))

  def forward(self, x):  # [B, C, H, W]
    for (kind, pads), layer in zip(self.kinds, self.layers):
      if kind == "conv":
        if any(pads):
          x = F.pad(x, pads)
        x = F.relu(layer[1](layer[0](x)))
      else:
        x = layer(x)
    return x


def _fit(x, dim, start, size, mode):
  n = x.shape[dim]
  x = x.narrow(dim, start, min(size, n - start))
  short = size - x.shape[dim]
  if short > 0:
    pad = [0, 0, 0, 0]
    pad[1 if dim == 3 else 3] = short
    x = F.pad(x, pad, mode="replicate" if mode == "edge" else "constant")
  return x


class Decoder(nn.Module):

  def __init__(self, spec, input_shape, value_range):
    super().__init__()
    self.spec = spec
    self.shapes = layer_shapes(spec, input_shape)
    self.value_range = value_range
    self.convs = nn.ModuleDict()
    self.bns = nn.ModuleDict()
    for i, layer in enumerate(spec):
      if isinstance(layer, ConvSpec):
        tc = self.shapes[i][2]
        self.convs[layer.name] = nn.ConvTranspose2d(layer.features, tc, layer.kernel, layer.strides,
                                                    bias=(i == 0))  # BN follows hidden ones
        if i > 0:
          self.bns[layer.name] = nn.BatchNorm2d(tc, momentum=0.1, eps=1e-5)

  def forward(self, z):  # [B, c, h, w]
    for i in reversed(range(len(self.spec))):
      layer, (th, tw, _) = self.spec[i], self.shapes[i]
      if isinstance(layer, PoolSpec):
        z = F.interpolate(z, scale_factor=layer.strides, mode="nearest")
        z = _fit(_fit(z, 2, 0, th, "edge"), 3, 0, tw, "edge")
        continue
      (kh, kw), (sh, sw) = layer.kernel, layer.strides
      z = self.convs[layer.name](z)
      lo_h = same_pad_lo(th, kh, sh) if layer.padding == "SAME" else 0
      lo_w = same_pad_lo(tw, kw, sw) if layer.padding == "SAME" else 0
      z = _fit(_fit(z, 2, lo_h, th, "constant"), 3, lo_w, tw, "constant")
      if i > 0:
        z = F.relu(self.bns[layer.name](z))
    lo, hi = self.value_range
    return lo + (hi - lo) * torch.sigmoid(z)


class Classifier(nn.Module):

  def __init__(self, in_features, hidden, num_classes):
    super().__init__()
    dims = [in_features, *hidden]
    self.hidden = nn.ModuleList([nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])])
    self.out = nn.Linear(dims[-1], num_classes)

  def forward(self, z):
    z = z.flatten(1)
    for fc in self.hidden:
      z = F.relu(fc(z))
    return self.out(z)


class TorchRAN:
  """RAN's three networks, optimizers and one Algorithm-1 iteration in PyTorch eager."""

  def __init__(self, spec, input_shape, num_classes, hidden=(120, 84), value_range=(0.0, 1.0),
               k=3, lam=0.5, lr=1e-3):
    h, w, c = layer_shapes(spec, input_shape)[-1]
    self.E = Encoder(spec, input_shape)
    self.C = Classifier(h * w * c, hidden, num_classes)
    self.D = Decoder(spec, input_shape, value_range)
    ec = list(self.E.parameters()) + list(self.C.parameters())
    self.opt_d = torch.optim.Adam(ec, lr=lr)
    self.opt_g = torch.optim.Adam(self.D.parameters(), lr=lr)
    self.opt_a = torch.optim.Adam(ec, lr=lr)
    self.k, self.lam = k, lam
    for m in (self.E, self.C, self.D):
      m.train()

  @staticmethod
  def recon(x, xr):
    return (x - xr).square().flatten(1).sum(1).mean()

  def disc(self, x, y):
    self.opt_d.zero_grad(set_to_none=True)
    z = self.E(x)
    ce = F.cross_entropy(self.C(z), y)
    ce.backward()
    self.opt_d.step()
    with torch.no_grad():  # reported only, like the JAX stage
      rec = self.recon(x, self.D(z.detach()))
    return ce.detach(), rec

  def gen(self, x, y):
    self.opt_g.zero_grad(set_to_none=True)
    with torch.no_grad():
      z = self.E(x)
    rec = self.recon(x, self.D(z))
    rec.backward()
    self.opt_g.step()
    return rec.detach()

  def adv(self, x, y):
    self.opt_a.zero_grad(set_to_none=True)
    self.D.requires_grad_(False)
    z = self.E(x)
    ce = F.cross_entropy(self.C(z), y)
    loss = self.lam * ce - (1.0 - self.lam) * self.recon(x, self.D(z))
    loss.backward()
    self.opt_a.step()
    self.D.requires_grad_(True)
    return loss.detach()

  def iteration(self, x, y):
    for _ in range(self.k):
      self.disc(x, y)
      self.gen(x, y)
    return self.adv(x, y)


def make_batch(batch_size, input_shape, num_classes, seed=0):
  g = torch.Generator().manual_seed(seed)
  h, w, c = input_shape
  x = torch.rand(batch_size, c, h, w, generator=g)
  y = torch.randint(0, num_classes, (batch_size,), generator=g)
  return x, y
