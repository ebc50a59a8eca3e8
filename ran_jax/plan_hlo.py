"""What the TPU plan reads from a compiled executable, and its communication model.

`collectives(hlo_text)` counts the collectives of an optimised HLO module by kind with their
bytes; `collective_seconds` prices them with the stated model of `ran_jax.plan` (bandwidth
terms plus `LAUNCH_US` and `HOP_US` per ring hop: assumptions, not measurements);
`_compiled_report` gathers memory (`memory_analysis`) and cost (`cost_analysis`) of one
executable, and `_out_of_memory_report` the same for a program the compiler refused for HBM.
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp

from ran_jax.tpu_slices import Topology

LAUNCH_US = 5.0     # fixed cost of one collective (us), a stated assumption
HOP_US = 1.0        # per ring hop (us), a stated assumption (ICI link latency order)

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2,
                "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8,
                "f64": 8, "c64": 8, "c128": 16}
_SHAPE = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([0-9,]*)\]")
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_OP = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s(" + "|".join(COLLECTIVES)
                 + r")(-start)?\(")


def _shape_bytes(text: str) -> list[int]:
  out = []
  for dtype, dims in _SHAPE.findall(text):
    n = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
    out.append(n * _DTYPE_BYTES[dtype])
  return out


def collectives(hlo_text: str) -> dict:
  """{kind: {'count', 'bytes', 'sizes'}} of the collectives in an optimised HLO module.

  Bytes are the result's (all-gather: the gathered output; async starts: the
  operands, not the tuple's output copy). An op counts once per channel id (the TPU
  compiler repeats a collective's text in the fused computations that use it); an op
  inside a loop body counts once (RAN's programs unroll their loops).
  """
  out = {}
  seen = set()
  for line in hlo_text.splitlines():
    m = _OP.match(line)
    if not m:
      continue
    shape_text, kind, is_async = m.groups()
    channel = re.search(r"channel_id=(\d+)", line)
    if channel:  # one collective, however many fused computations repeat its text
      if (kind, channel.group(1)) in seen:
        continue
      seen.add((kind, channel.group(1)))
    sizes = _shape_bytes(shape_text)
    if is_async and kind in ("all-gather", "collective-permute", "all-to-all") and len(sizes) > 1:
      sizes = sizes[len(sizes) // 2:]        # (operands, outputs): count the outputs
    rec = out.setdefault(kind, {"count": 0, "bytes": 0, "sizes": []})
    rec["count"] += 1
    rec["bytes"] += sum(sizes)
    rec["sizes"].append(sum(sizes))
  return out


def collective_seconds(colls: dict, topo: Topology) -> dict:
  """The stated model's time for `collectives(...)` on `topo` (see the module docstring)."""
  n = topo.num_chips
  if n == 1:
    return {"bandwidth_s": 0.0, "latency_s": 0.0, "total_s": 0.0, "per_op_latency_us": 0.0}
  w = topo.chip.allreduce_bandwidth * wraparound_factor(topo)
  hops = 2 * sum(s - 1 for s in topo.shape)
  per_op = (LAUNCH_US + HOP_US * hops) * 1e-6
  bw = 0.0
  ops = 0
  for kind, rec in colls.items():
    factor = 2.0 if kind == "all-reduce" else 1.0
    bw += factor * rec["bytes"] * (n - 1) / n / w
    ops += rec["count"]
  return {"bandwidth_s": bw, "latency_s": ops * per_op, "total_s": bw + ops * per_op,
          "per_op_latency_us": per_op * 1e6}


def wraparound_factor(topo: Topology) -> float:
  """The share of the published all-reduce bandwidth a slice gets (stated model).

  The published figure is the full pod's, whose axes close into rings (torus links).
  An axis without its wraparound link carries a ring as a line there and back: half the
  bandwidth. v5e/v6e axes wrap at the pod's 16; v4/v5p slices of whole 4x4x4 cubes wrap
  on their axes that are multiples of 4. Averaged over the axes longer than one chip.
  """
  axes = [s for s in topo.shape if s > 1]
  if not axes:
    return 1.0
  if topo.chip.torus_dims == 2:
    wraps = [s == 16 for s in axes]
  else:
    cube = all(s >= 4 for s in topo.shape)
    wraps = [cube and s % 4 == 0 for s in axes]
  return sum(1.0 if w else 0.5 for w in wraps) / len(axes)


def _cost(compiled) -> dict:
  ca = compiled.cost_analysis()
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else {}
  ca = ca or {}
  return {"flops": float(ca.get("flops", 0.0)),
          "bytes_accessed": float(ca.get("bytes accessed", 0.0))}


def _memory(compiled) -> dict:
  m = compiled.memory_analysis()
  args, outs = int(m.argument_size_in_bytes), int(m.output_size_in_bytes)
  alias, temp = int(m.alias_size_in_bytes), int(m.temp_size_in_bytes)
  code = int(m.generated_code_size_in_bytes)
  return {"arguments": args, "outputs": outs, "aliased": alias, "temporaries": temp, "code": code,
          "peak": args + outs - alias + temp + code}


def _compiled_report(name: str, compiled, seconds: float) -> dict:
  return {"name": name, "compile_seconds": round(seconds, 1), "memory": _memory(compiled),
          "cost": _cost(compiled), "collectives": collectives(compiled.as_text())}


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _compile(fn, args):
  """Ahead-of-time compile of a jitted `fn` for abstract `args` (on the topology's devices)."""
  return fn.lower(*args).compile()


def _bytes_per_chip(args) -> int:
  """Bytes of one device's shards of abstract arguments (ShapeDtypeStructs with shardings)."""
  total = 0
  for leaf in jax.tree.leaves(args):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
  return int(total)


def _out_of_memory_report(name: str, error: Exception, seconds: float, args) -> dict:
  """The report of a program the TPU compiler refused for HBM (RESOURCE_EXHAUSTED).

  The compiler names the temporaries it needed (e.g. "memory required for HLO temporaries
  (16.12G)"); the peak is estimated as those plus the arguments' bytes per chip (outputs
  alias the donated state), and `over_capacity` marks it as not fitting.
  """
  msg = str(error)
  m = re.search(r"required[^()]*\(([\d.]+)\s*([KMGT]?)i?B?\)", msg)
  temps = int(float(m.group(1)) * _UNITS[m.group(2)]) if m else 0
  arguments = _bytes_per_chip(args)
  return {"name": name, "compile_seconds": round(seconds, 1),
          "memory": {"arguments": arguments, "temporaries": temps, "peak": arguments + temps,
                     "over_capacity": True, "estimated": True, "compiler": msg.strip()[:500]},
          "cost": {"flops": 0.0, "bytes_accessed": 0.0}, "collectives": {}}


def _is_out_of_memory(error: Exception) -> bool:
  return "RESOURCE_EXHAUSTED" in str(error) or "Ran out of memory" in str(error)


def _fits(compiled: dict, capacity: int) -> bool:
  return all(not r["memory"].get("over_capacity") and r["memory"]["peak"] <= capacity
             for r in compiled.values())
