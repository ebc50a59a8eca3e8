"""PyTorch reference of RAN for the benchmark (`python -m bench`), eager or under torch.compile.

The straightforward implementation a user would write: nn.Conv2d / BatchNorm2d /
MaxPool2d encoder, the decoder mirrored from the same `EncoderSpec`
(ConvTranspose2d + crop, nearest un-pooling), an MLP classifier, three Adam
optimizers, and Algorithm 1 as a Python loop of k (discriminative, generative)
passes and one adversarial pass.

It makes exactly the passes of `ran_jax.stages` (Algorithm 1, nothing reported-only):
  disc  E, C forward + backward (cross-entropy, accuracy from the same logits);
  gen   E forward (no gradient), D forward + backward (reconstruction error);
  adv   E, C forward + backward, D forward + backward to its input (D frozen).
Losses follow `ran_jax.losses` (per-example summed squared error, batch mean;
batch-mean softmax cross-entropy); SAME padding is `ran_jax.models.spec.same_pads`.
`tests/test_bench.py` checks both against the JAX side.

`compile=True` wraps each stage's forward computation (networks and loss) in
`torch.compile` (inductor); the optimizer steps stay eager in both variants.
torch is not a dependency of ran_jax: `pip install torch==2.13.0` (CPU build).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ran_jax.losses import recon_metric_name
from ran_jax.models.spec import ConvSpec, PoolSpec, layer_shapes, same_pad_lo, same_pads

# ---------------------------------------------------------------- losses (ran_jax.losses)


def cross_entropy(logits, labels):
  """Batch-mean softmax cross-entropy, integer labels (`ran_jax.losses.cross_entropy`)."""
  return F.cross_entropy(logits.float(), labels)


def accuracy(logits, labels):
  """Share of arg-max predictions equal to the label (`ran_jax.losses.accuracy`)."""
  return (logits.argmax(-1) == labels).float().mean()


def recon_error(x, x_rec, reduction: str = "sum"):
  """Batch mean of each example's squared error, summed or averaged over its values.

  `ran_jax.losses.recon_error`: the paper's |I - I'|^2 with `ran.recon_reduction`.
  """
  se = (x.float() - x_rec.float()).square().flatten(1)
  return (se.sum(1) if reduction == "sum" else se.mean(1)).mean()


# ---------------------------------------------------------------- networks


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
          ph = same_pads(h, layer.kernel[0], layer.strides[0])
          pw = same_pads(w, layer.kernel[1], layer.strides[1])
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
  """x cut to [start, start + size) along dim (2: H, 3: W), padded at the end if short."""
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


# ---------------------------------------------------------------- Algorithm 1


class TorchRAN:
  """RAN's three networks, optimizers and one Algorithm-1 iteration in PyTorch."""

  def __init__(self, spec, input_shape, num_classes, hidden=(120, 84), value_range=(0.0, 1.0),
               k=3, lam=0.5, lr=(1e-3, 1e-3, 1e-3), recon_reduction="sum", compile=False):
    h, w, c = layer_shapes(spec, input_shape)[-1]
    self.E = Encoder(spec, input_shape)
    self.C = Classifier(h * w * c, hidden, num_classes)
    self.D = Decoder(spec, input_shape, value_range)
    l1, l2, l3 = lr
    ec = list(self.E.parameters()) + list(self.C.parameters())
    self.opt_d = torch.optim.Adam(ec, lr=l1)
    self.opt_g = torch.optim.Adam(self.D.parameters(), lr=l2)
    self.opt_a = torch.optim.Adam(ec, lr=l3)
    self.k, self.lam, self.reduction = k, lam, recon_reduction
    for m in (self.E, self.C, self.D):
      m.train()
    self._disc_fwd, self._gen_fwd, self._adv_fwd = self.disc_forward, self.gen_forward, \
        self.adv_forward
    if compile:
      self._disc_fwd = torch.compile(self.disc_forward)
      self._gen_fwd = torch.compile(self.gen_forward)
      self._adv_fwd = torch.compile(self.adv_forward)

  # The forward computation of each stage: what torch.compile compiles.

  def disc_forward(self, x, y):
    logits = self.C(self.E(x))
    return cross_entropy(logits, y), accuracy(logits, y)

  def gen_forward(self, x):
    with torch.no_grad():
      z = self.E(x)
    return recon_error(x, self.D(z), self.reduction)

  def adv_forward(self, x, y):
    z = self.E(x)
    logits = self.C(z)
    ce = cross_entropy(logits, y)
    rec = recon_error(x, self.D(z), self.reduction)
    return self.lam * ce - (1.0 - self.lam) * rec, ce, rec, accuracy(logits, y)

  # The three stages: forward, backward, Adam step; metrics as in ran_jax.stages.

  def disc(self, x, y):
    self.opt_d.zero_grad(set_to_none=True)
    ce, acc = self._disc_fwd(x, y)
    ce.backward()
    self.opt_d.step()
    return {"disc/loss": ce.detach(), "disc/ce": ce.detach(), "disc/accuracy": acc}

  def gen(self, x, y):
    del y
    self.opt_g.zero_grad(set_to_none=True)
    rec = self._gen_fwd(x)
    rec.backward()
    self.opt_g.step()
    return {"gen/loss": rec.detach(), f"gen/{recon_metric_name(self.reduction)}": rec.detach()}

  def adv(self, x, y):
    self.opt_a.zero_grad(set_to_none=True)
    self.D.requires_grad_(False)  # frozen: the gradient flows through D to E only
    loss, ce, rec, acc = self._adv_fwd(x, y)
    loss.backward()
    self.opt_a.step()
    self.D.requires_grad_(True)
    return {"adv/loss": loss.detach(), "adv/ce": ce.detach(),
            f"adv/{recon_metric_name(self.reduction)}": rec.detach(), "adv/accuracy": acc}

  def iteration(self, x, y):
    """k x (discriminative, generative), then adversarial; the last metrics of each stage."""
    metrics = {}
    for _ in range(self.k):
      metrics.update(self.disc(x, y))
      metrics.update(self.gen(x, y))
    metrics.update(self.adv(x, y))
    return metrics


def make_batch(batch_size, input_shape, num_classes, seed=0):
  """A random [B, C, H, W] batch in [0, 1) and integer labels."""
  g = torch.Generator().manual_seed(seed)
  h, w, c = input_shape
  x = torch.rand(batch_size, c, h, w, generator=g)
  y = torch.randint(0, num_classes, (batch_size,), generator=g)
  return x, y
