"""`python -m bench attackers`: the attacker training of the privacy protocol vs PyTorch.

  python -m bench attackers                                   # MNIST shapes, a few minutes
  python -m bench attackers --n=12800 --rounds=5 --out=docs/data/bench_attackers_cpu.json
  python -m bench attackers --threads=1                       # one core (a shared machine)

The attackers of `ran_jax.privacy.attackers` against the frozen encoder of the
recommended MNIST config (`configs/mnist_lenet_private.py`: a 64-d bottleneck, release
noise sigma 0.5) on synthetic data of MNIST's shapes: features [n, 64], images
[n, 28, 28, 1], a validation part of n/10. One timed unit is one epoch as the protocol
trains it: n // 128 Adam steps on batches of 128 with fresh release noise on each, in
train mode, then a validation pass in eval mode. Engines, for each family (mirrored
and residual decoders by default):

  jax        the project's attacker training: `attackers.Group` of that one attacker,
             one compiled call per epoch (`lax.scan` over the batches, validation
             inside); what `attackers.fit_group` runs between its early-stopping checks.
  jax_steps  the same steps as a Python loop of one jitted step per batch, batches
             gathered on the host (how attackers were trained before `Group`).
  torch      `bench.torch_attackers`: the same architecture in PyTorch eager, the very
             same index batches (the permutation the JAX epoch draws), its own noise.

and `jax_group`: every family in one `Group` (one program, as the protocol trains
them), against the sum of the per-family torch epochs. Rounds are interleaved (each
engine once per round, after warm-up epochs that include compilation) and every ratio
is the median of per-round ratios. Results go to --out as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench.engines import torch_status
from ran_jax.models import Decoder, build_encoder_spec
from ran_jax.privacy import attackers as atk

INPUT_SHAPE = (28, 28, 1)
FEATURES = 64          # configs/mnist_lenet_private.py: model.bottleneck_dim
NOISE = 0.5            # configs/mnist_lenet_private.py: model.feature_noise
FAMILIES = ("mirrored_decoder", "resnet_decoder")


def jax_module(family: str, resnet_width: int = 64):
  """The attacker the protocol trains against the recommended MNIST encoder."""
  if family == "mirrored_decoder":
    spec = build_encoder_spec("lenet5", INPUT_SHAPE, None)
    return Decoder(spec, INPUT_SHAPE, (0.0, 1.0), bottleneck_dim=FEATURES,
                   bottleneck_kind="dense")
  if family == "resnet_decoder":
    return atk.ResNetDecoder(INPUT_SHAPE, (0.0, 1.0), resnet_width, 1)
  raise ValueError(f"unknown family {family!r}; known: {FAMILIES}")


def torch_module(family: str, resnet_width: int = 64):
  from bench import torch_attackers as ta  # pylint: disable=g-import-not-at-top

  if family == "mirrored_decoder":
    spec = build_encoder_spec("lenet5", INPUT_SHAPE, None)
    return ta.MirroredDecoder(spec, INPUT_SHAPE, (0.0, 1.0), FEATURES)
  return ta.ResNetDecoder(FEATURES, INPUT_SHAPE, (0.0, 1.0), resnet_width, 1)


def synthetic(n: int, n_val: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  z = np.tanh(rng.standard_normal((n + n_val, FEATURES))).astype(np.float32)
  x = rng.random((n + n_val,) + INPUT_SHAPE, np.float32)
  return z[:n], x[:n], z[n:], x[n:]


class JaxGroup:
  """`atk.Group` of some families; `run(key)` is one epoch (all jobs active)."""

  def __init__(self, families, data, batch: int, resnet_width: int):
    z, x, zv, xv = data
    cfg = atk.FitConfig(batch_size=batch)
    jobs = [atk.Job(f, jax_module(f, resnet_width), atk.recon_loss, "x", cfg) for f in families]
    self.group = atk.Group(jobs, z, {"x": x}, zv, {"x": xv}, input_noise=NOISE,
                           noise_kind="gaussian")
    k = len(jobs)
    self.args = (np.full(k, 1e-3, np.float32), np.ones(k, bool), np.full(k, np.inf, np.float32),
                 np.full(k, 1e-4, np.float32))

  def run(self, key):
    vals, _ = self.group.epoch(key, *self.args)
    return vals


class JaxSteps:
  """The same epoch as a Python loop of one jitted step per batch (host-side batches)."""

  def __init__(self, family, data, batch: int, resnet_width: int):
    self.z, self.x, self.zv, self.xv = data
    job = atk.Job(family, jax_module(family, resnet_width), atk.recon_loss, "x")
    tx = atk._optimizer()  # pylint: disable=protected-access
    v = atk._init_fn(job.module)(jax.random.PRNGKey(0), jnp.asarray(self.z[:2]))  # pylint: disable=protected-access
    self.st = {"params": v["params"], "stats": v.get("batch_stats", {}),
               "opt": tx.init(v["params"])}

    def step(st, zb, xb, key):
      k_noise, k_drop = jax.random.split(key)
      return atk._train_step(job, tx, st, atk.add_noise(zb, k_noise, NOISE), xb, k_drop)  # pylint: disable=protected-access

    def val(st, zb, xb):
      out = job.module.apply(atk._variables(st["params"], st["stats"]), zb, train=False)  # pylint: disable=protected-access
      return jnp.sum(jnp.square(out - xb).reshape(len(xb), -1))

    self.step = jax.jit(step, donate_argnums=(0,))
    self.val = jax.jit(val)

  def run(self, order, key):
    for i, idx in enumerate(order):
      self.st = self.step(self.st, jnp.asarray(self.z[idx]), jnp.asarray(self.x[idx]),
                          jax.random.fold_in(key, i))
    tot = 0.0
    for s in range(0, len(self.zv), 512):
      tot += float(self.val(self.st, jnp.asarray(self.zv[s:s + 512]),
                            jnp.asarray(self.xv[s:s + 512])))
    return tot / len(self.zv)


def parse_args(argv=None):
  p = argparse.ArgumentParser(prog="python -m bench attackers",
                              description=__doc__.split("\n")[0])
  p.add_argument("--out", default="bench_attackers.json")
  p.add_argument("--families", default=",".join(FAMILIES))
  p.add_argument("--n", type=int, default=6400, help="training examples per epoch")
  p.add_argument("--batch", type=int, default=128, help="the protocol's batch (FitConfig)")
  p.add_argument("--resnet_width", type=int, default=64)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--warmup", type=int, default=1, help="untimed epochs per engine first")
  p.add_argument("--no-torch", action="store_true")
  p.add_argument("--no-steps", action="store_true", help="skip the per-batch JAX loop")
  p.add_argument("--no-group", action="store_true", help="skip the all-families group")
  p.add_argument("--threads", type=int, default=0, choices=(0, 1),
                 help="1: one core, one intra-op thread for XLA:CPU and torch (a shared "
                      "machine); 0: their defaults")
  a = p.parse_args(argv)
  a.families = [f for f in a.families.split(",") if f]
  bad = sorted(set(a.families) - set(FAMILIES))
  if bad or not a.families:
    p.error(f"--families: unknown {bad}; known: {list(FAMILIES)}")
  if a.n < a.batch or a.batch < 1 or a.rounds < 1:
    p.error("need --n >= --batch >= 1 and --rounds >= 1")
  return a


def _write(report, path):
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  os.replace(tmp, path)


def run(argv=None) -> dict:
  args = parse_args(argv)
  if args.threads == 1:
    from bench.ran_bench import _one_core  # pylint: disable=g-import-not-at-top

    _one_core()
  use_torch, torch_note = (False, "disabled (--no-torch)") if args.no_torch else torch_status()
  if use_torch and jax.default_backend() != "cpu":
    use_torch, torch_note = False, "PyTorch reference skipped: it is a CPU baseline."
  data = synthetic(args.n, max(1, args.n // 10))
  engines = {}
  print(f"[bench attackers] building and compiling ({args.families})...", file=sys.stderr,
        flush=True)
  for f in args.families:
    engines[f"jax/{f}"] = JaxGroup([f], data, args.batch, args.resnet_width)
    if not args.no_steps:
      engines[f"jax_steps/{f}"] = JaxSteps(f, data, args.batch, args.resnet_width)
    if use_torch:
      from bench.torch_attackers import TorchAttacker  # pylint: disable=g-import-not-at-top

      engines[f"torch/{f}"] = TorchAttacker(torch_module(f, args.resnet_width), *data,
                                            noise=NOISE)
  if len(args.families) > 1 and not args.no_group:
    engines["jax_group"] = JaxGroup(args.families, data, args.batch, args.resnet_width)

  rng = jax.random.PRNGKey(0)
  epoch_no = [0]

  def one_epoch(name, eng):
    epoch_no[0] += 1
    key = jax.random.fold_in(rng, epoch_no[0])
    # The permutation the JAX epoch draws from this key: the same batches everywhere.
    order = np.asarray(atk.epoch_order(jax.random.split(key)[0], args.n, args.batch))
    t = time.perf_counter()
    if name.startswith("torch/"):
      eng.epoch(order)
    elif name.startswith("jax_steps/"):
      eng.run(order, key)
    else:
      eng.run(key)
    return time.perf_counter() - t

  t0 = time.perf_counter()
  warm = {}
  for name, eng in engines.items():
    warm[name] = [one_epoch(name, eng) for _ in range(args.warmup)]
  rounds = {name: [] for name in engines}
  dev = jax.devices()[0]
  report = {
      "command": "python -m bench attackers " + " ".join(sys.argv[1:] if argv is None else argv),
      "device": f"{dev.platform}:{dev.device_kind}",
      "host": {"machine": platform.machine(), "cpus": os.cpu_count(),
               "jax": jax.__version__, "load_average_start": os.getloadavg()},
      "setup": {"input_shape": list(INPUT_SHAPE), "features": FEATURES, "release_noise": NOISE,
                "n": args.n, "n_val": max(1, args.n // 10), "batch": args.batch,
                "steps_per_epoch": args.n // args.batch, "resnet_width": args.resnet_width,
                "families": args.families},
      "threads": args.threads or "default", "torch_note": torch_note,
      "warmup_epoch_s": warm, "rounds": args.rounds, "complete": False,
  }
  for r in range(args.rounds):   # interleaved: each engine once per round
    for name, eng in engines.items():
      rounds[name].append(one_epoch(name, eng))
    report.update(epoch_s_rounds=rounds, **_summary(rounds, args), wall_s=time.perf_counter() - t0)
    report["host"]["load_average_end"] = os.getloadavg()
    report["complete"] = r == args.rounds - 1
    _write(report, args.out)
  print_table(report)
  print(f"wrote {args.out} ({report['wall_s']:.0f}s)")
  return report


def _summary(rounds: dict, args) -> dict:
  done = {k: v for k, v in rounds.items() if v}
  eps = {k: args.n / statistics.median(v) for k, v in done.items()}

  def ratio(num, den):  # median over rounds of time[den] / time[num]: speed of num over den
    if num not in done or den not in done:
      return None
    return statistics.median(d / n for n, d in zip(done[num], done[den]))

  ratios = {}
  for f in args.families:
    ratios[f"jax_over_torch/{f}"] = ratio(f"jax/{f}", f"torch/{f}")
    ratios[f"jax_over_jax_steps/{f}"] = ratio(f"jax/{f}", f"jax_steps/{f}")
  if "jax_group" in done and all(f"torch/{f}" in done for f in args.families):
    n_r = len(done["jax_group"])
    torch_sum = [sum(done[f"torch/{f}"][i] for f in args.families) for i in range(n_r)]
    jax_sum = [sum(done[f"jax/{f}"][i] for f in args.families) for i in range(n_r)]
    ratios["jax_group_over_torch"] = statistics.median(
        t / g for t, g in zip(torch_sum, done["jax_group"]))
    ratios["jax_group_over_jax_apart"] = statistics.median(
        s / g for s, g in zip(jax_sum, done["jax_group"]))
  return {"examples_per_s": eps, "ratios": {k: v for k, v in ratios.items() if v is not None}}


def print_table(report):
  s = report["setup"]
  print(f"\nAttacker training, MNIST shapes, {s['features']}-d features + release noise "
        f"{s['release_noise']}, batch {s['batch']}, {s['steps_per_epoch']} steps + validation "
        f"of {s['n_val']} per epoch; {report['device']}, threads {report['threads']}")
  for name, v in report["examples_per_s"].items():
    t = statistics.median(report["epoch_s_rounds"][name])
    print(f"  {name:28s} {v:9.0f} examples/s  ({t:.2f} s/epoch)")
  for name, v in report["ratios"].items():
    print(f"  {name:36s} {v:.2f}x")
  print(f"  {report['torch_note']}")
  start = tuple(round(v, 1) for v in report["host"]["load_average_start"])
  end = tuple(round(v, 1) for v in report["host"]["load_average_end"])
  print(f"  load average at start {start}, at end {end}, {report['host']['cpus']} CPUs")


if __name__ == "__main__":
  run()
