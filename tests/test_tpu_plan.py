"""Ahead-of-time compilation for Cloud TPU slices (`ran_jax.plan`), on this CPU host.

libtpu is the `[tpu-plan]` extra: without it these tests skip, except where
RAN_TEST_REQUIRE_TPU_PLAN=1 (.ci/run installs it and sets it), where they fail. They compile
the smoke variants of the ImageNet and CIFAR-10 configs for real TPU topologies (one
host and several) and check what a run on the slice depends on: the program fits the
chip's HBM, the batch is sharded over the data axis, no all-gather of the batch appears,
and the grouped batch-norm of the ImageNet config leaves no per-layer all-reduce.
"""

import math
import types

import jax
import pytest

from ran_jax import configs, plan
from ran_jax.program import InputSpec
from tests.helpers import tpu_plan_libtpu

tpu_plan_libtpu()


def _smoke(name, **overrides):
  c = configs.get_config(f"{name}:smoke")
  for path, value in overrides.items():
    section, field = path.split(".") if "." in path else (None, path)
    (c[section] if section else c)[field] = value
  return c


# ---------------------------------------------------------------- topology table


@pytest.mark.parametrize("name, chips, hosts, shape", [
    ("v4-8", 4, 1, (2, 2, 1)),        # v4 counts TensorCores: 4 chips (megacore devices)
    ("v4-16", 8, 2, (2, 2, 2)),
    ("v5e-8", 8, 1, (2, 4)),
    ("v5litepod-16", 16, 4, (4, 4)),
    ("v5p-16", 8, 2, (2, 2, 2)),
    ("v6e-8", 8, 1, (2, 4)),
    ("v6e-256", 256, 64, (16, 16)),
    ("v5e:16x16", 256, 64, (16, 16)),
])
def test_topologies(name, chips, hosts, shape):
  topo = plan.parse_topology(name)
  assert (topo.num_chips, topo.num_hosts, topo.shape) == (chips, hosts, shape)
  devices = plan.topology_devices(topo)
  assert len(devices) == chips
  assert len({d.process_index for d in devices}) == hosts
  assert {d.device_kind for d in devices} == {topo.chip.device_kind}


@pytest.mark.parametrize("bad", ["v7x-8", "v5e-12", "v4-7", "v5e:2x2x2", "tpu", "v5e-"])
def test_unknown_topology_is_named(bad):
  with pytest.raises(plan.PlanError, match="topology|generation"):
    plan.parse_topology(bad)


def test_libtpu_missing_names_the_install(monkeypatch):
  from jax.experimental import topologies

  def no_tpu(*a, **k):
    raise RuntimeError("Unable to initialize backend 'tpu': libtpu.so not found")

  monkeypatch.setattr(topologies, "get_topology_desc", no_tpu)
  with pytest.raises(plan.PlanError, match=r'pip install "libtpu==0\.0\.42\.\*"'):
    plan.topology_devices(plan.parse_topology("v5e-8"))


# ---------------------------------------------------------------- reading the HLO


HLO = """
  %all-reduce.1 = (bf16[3,3,64,64]{3,2,1,0:T(8,128)(2,1)}, f32[64]{0:T(128)}) all-reduce(%a, %b)
  %ar2 = f32[1000]{0} all-reduce-start(%c), channel_id=2
  %ar2.done = f32[1000]{0} all-reduce-done(%ar2)
  ROOT %ag = (f32[2,8]{1,0}, f32[16,8]{1,0}) all-gather-start(%d), dimensions={0}
  %ag.done = f32[16,8]{1,0} all-gather-done(%ag)
  %rs = s32[4]{0} reduce-scatter(%e), dimensions={0}, channel_id=7
  %rs.copy = s32[4]{0} reduce-scatter(%e), dimensions={0}, channel_id=7
  %f = f32[8]{0} add(%x, %y)
"""


def test_collectives_known_answer():
  c = plan.collectives(HLO)
  assert c["all-reduce"]["count"] == 2
  assert c["all-reduce"]["bytes"] == 3 * 3 * 64 * 64 * 2 + 64 * 4 + 1000 * 4
  assert c["all-gather"] == {"count": 1, "bytes": 16 * 8 * 4, "sizes": [512]}
  assert c["reduce-scatter"]["bytes"] == 16
  assert set(c) == {"all-reduce", "all-gather", "reduce-scatter"}


def test_communication_model_known_answer():
  topo = plan.parse_topology("v5e:16x16")
  colls = {"all-reduce": {"count": 10, "bytes": 1_000_000_000}}
  t = plan.collective_seconds(colls, topo)
  w = 51.2e12 / 256
  assert t["bandwidth_s"] == pytest.approx(2 * 1e9 * 255 / 256 / w)
  assert t["per_op_latency_us"] == pytest.approx(plan.LAUNCH_US + plan.HOP_US * 2 * (15 + 15))
  assert t["latency_s"] == pytest.approx(10 * t["per_op_latency_us"] * 1e-6)
  # A 2x4 slice has no wraparound links: a ring is a line there and back, half the bandwidth.
  small = plan.collective_seconds(colls, plan.parse_topology("v5e-8"))
  assert small["bandwidth_s"] == pytest.approx(2 * 1e9 * 7 / 8 / (w / 2))
  assert plan.wraparound_factor(plan.parse_topology("v4:4x4x4")) == 1.0
  assert plan.wraparound_factor(plan.parse_topology("v4-16")) == 0.5


# ---------------------------------------------------------------- compiling the configs


def _iteration_collectives(report):
  return report["per_iteration"]["collectives"]


@pytest.mark.parametrize("name, topology", [
    ("imagenet_vgg", "v5e-8"), ("imagenet_vgg", "v5e-16"), ("imagenet_vgg", "v4-16"),
    ("cifar10_alexnet", "v6e-8"), ("cifar10_alexnet", "v5p-16"),
])
def test_smoke_configs_compile_fit_and_shard_the_batch(name, topology):
  topo = plan.parse_topology(topology)
  c = _smoke(name, batch_size=2 * topo.num_chips, eval_batch_size=2 * topo.num_chips)
  if c.model.bn_group_size:
    c.model.bn_group_size = 2
  r = plan.plan(c, topology)
  assert r["fits"] and 0 < r["hbm_per_chip"]["peak"] < r["hbm_per_chip"]["capacity"]
  parts = {"iteration"} if c.ran.fused else {"disc", "gen", "adv"}
  if c.ran.ema_decay:
    parts |= set() if c.ran.fused else {"ema"}
  assert set(r["hbm_per_chip"]["by_program"]) == {"init", "test_step"} | parts
  assert r["per_iteration"]["flops"] > 0
  colls = _iteration_collectives(r)
  assert "all-gather" not in colls, colls   # the batch is never gathered onto one chip
  assert colls["all-reduce"]["count"] >= 1  # the gradients are reduced over the data axis
  assert r["topology"]["hosts"] == topo.num_hosts
  assert "estimate" in r["estimate"]["label"] and "not a measurement" in r["estimate"]["label"]


def test_batch_is_sharded_over_the_data_axis():
  topo = plan.parse_topology("v5e-8")
  mesh = plan.parallel.make_mesh(plan.topology_devices(topo))
  c = plan._tpu_config(_smoke("imagenet_vgg", batch_size=16), None)
  c.ran.fused = True
  from ran_jax.program import build_program

  prog = build_program(c, mesh, plan.input_spec_for(c))
  batch = plan._abstract_batch(plan.input_spec_for(c), 16, mesh)
  compiled = prog.iteration.lower(prog.abstract_state(), batch).compile()
  state_sh, batch_sh = compiled.input_shardings[0]
  assert batch_sh["image"].spec == jax.sharding.PartitionSpec("data")
  assert batch_sh["image"].shard_shape((16, 32, 32, 3)) == (2, 32, 32, 3)
  assert all(s.is_fully_replicated for s in jax.tree.leaves(state_sh))


def test_grouped_batch_norm_removes_the_per_layer_all_reduces():
  """Statistics over the whole batch cost all-reduces in every batch-norm of every pass;
  groups of the per-chip batch need none: what is left is one reduction per stage update
  (XLA may split one into a few by size) and the metrics."""
  counts = {}
  for group in (0, 2):
    c = _smoke("imagenet_vgg", batch_size=16, eval_batch_size=16)
    c.model.bn_group_size = group
    r = plan.plan(c, "v5e-8")
    counts[group] = _iteration_collectives(r)["all-reduce"]["count"]
  updates = 2 * c.ran.k + 1
  assert counts[2] <= 3 * updates < counts[0], counts


def test_batch_that_does_not_divide_over_the_chips():
  with pytest.raises(plan.PlanError, match="does not divide over the 8 chips"):
    plan.plan(_smoke("cifar10_alexnet", batch_size=12), "v5e-8")


class _Compiled:
  """A stand-in for a TPU executable whose memory follows a line in the batch plus a
  deterministic wobble (as small programs' layouts do), refused above `refuse_over`."""

  def __init__(self, batch, fixed, per_example):
    wobble = (batch * 7919 % 13 - 6) * per_example // 20
    self.peak = fixed + per_example * batch + wobble

  def memory_analysis(self):
    return types.SimpleNamespace(argument_size_in_bytes=self.peak // 10, output_size_in_bytes=0,
                                 alias_size_in_bytes=0, temp_size_in_bytes=self.peak
                                 - self.peak // 10, generated_code_size_in_bytes=0)

  def cost_analysis(self):
    return {"flops": 1e9, "bytes accessed": 1e6}

  def as_text(self):
    return ""


@pytest.mark.parametrize("start, fixed_gib, per_example_mib, refuse_over", [
    (32, 2.0, 150.0, None),     # starts under: 32 and 64 give the line
    (256, 2.0, 150.0, None),    # starts over: 256 and 128 give the line
    (2**17, 1.0, 40.0, 1024),   # starts far over, refused by the compiler above 1024
    (64, 15.5, 300.0, None),    # 1 per chip does not fit
])
def test_largest_batch_search(monkeypatch, start, fixed_gib, per_example_mib, refuse_over):
  """The search on a stand-in compiler: the batch it names fits, 1/16 more does not (within
  the wobble), and a start that the compiler refuses is handled like one that is over."""
  cap = plan.CHIPS["v5e"].hbm_bytes
  fixed, per = int(fixed_gib * 2**30), int(per_example_mib * 2**20)
  n = 8

  def fake(fn, args):
    del fn
    batch = args[-1]["image"].shape[0] // n
    if refuse_over and batch > refuse_over:
      raise jax.errors.JaxRuntimeError(
          f"RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
          f"temporaries ({_Compiled(batch, fixed, per).peak / 2**30:.2f}G) exceeds available "
          f"HBM (15.75G).")
    return _Compiled(batch, fixed, per)

  monkeypatch.setattr(plan, "_compile", fake)
  c = _smoke("mnist_lenet", batch_size=n * start)
  c.ran.fused = True
  lb = plan.largest_batch(c, plan.parse_topology("v5e-8"), log=lambda *_: None)
  fits = [b for b in range(1, 4096) if _Compiled(b, fixed, per).peak <= cap]
  if not fits:
    assert lb["per_chip"] == lb["global"] == 0
    return
  truth = max(fits)
  assert lb["global"] == n * lb["per_chip"]
  assert _Compiled(lb["per_chip"], fixed, per).peak <= cap
  assert truth * 15 // 16 - 1 <= lb["per_chip"] <= truth
  assert len(lb["compiled"]) <= 6, lb["compiled"]


def test_a_compile_refused_for_memory_does_not_fit(monkeypatch):
  """The TPU compiler itself may refuse a program for HBM (RESOURCE_EXHAUSTED) instead of
  returning one whose memory_analysis is over: that counts as not fitting, with the peak
  estimated from the temporaries it names plus the arguments, and the search goes on."""
  real = plan._compile  # pylint: disable=protected-access
  calls = []

  def refusing(fn, args):
    batch = args[-1]["image"].shape[0] if isinstance(args[-1], dict) else 0
    calls.append(batch)
    if batch > 8 * 24:
      raise jax.errors.JaxRuntimeError(
          "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
          "temporaries (16.12G) exceeds available HBM (15.75G).")
    return real(fn, args)

  monkeypatch.setattr(plan, "_compile", refusing)
  c = _smoke("mnist_lenet", batch_size=8 * 48, eval_batch_size=8)
  c.ran.fused = True
  with pytest.raises(plan.PlanError, match=r"needs at least 16\.\d\d GiB per chip") as e:
    plan.plan(c, "v5e-8")
  rep = e.value.report
  refused = rep["hbm_per_chip"]["by_program"]["iteration"]
  assert refused["over_capacity"] and refused["estimated"]
  assert refused["peak"] == refused["arguments"] + int(16.12 * 2**30) > refused["arguments"] > 0
  assert rep["fits"] is False
  lb = rep["largest_batch"]
  assert 1 <= lb["per_chip"] <= 24 and lb["compiled"]["48"]["fits"] is False


def test_input_spec_needs_no_data():
  c = configs.get_config("imagenet_vgg")
  assert plan.input_spec_for(c) == InputSpec((224, 224, 3), 1000, (0.0, 1.0), 0)
  assert math.prod(plan.parse_topology("v5e-8").shape) == 8


def test_classifier_split_over_chips_gathers_features_not_the_batch():
  """classifier_shards=4 on a v5e-8: the only all-gathers are of the classifier's input
  features within groups of 4 chips (4 x 2 examples), never of the image batch; each
  encoder-classifier update then reduces fc1's gradient over 2 groups, not 8 chips."""
  c = _smoke("imagenet_vgg", batch_size=16, eval_batch_size=16)
  c.model.bn_group_size = 2
  c.model.classifier_shards = 4
  topo = plan.parse_topology("v5e-8")
  compiled = plan.compile_program(c, topo)
  feature_dim = 1 * 1 * 8                       # VGG smoke at 32x32: 1x1x8 features
  for name in ("disc", "adv"):
    gathers = compiled[name]["collectives"]["all-gather"]
    assert gathers["count"] >= 1
    assert set(gathers["sizes"]) <= {4 * 2 * feature_dim * 4, 4 * 2 * 16 * 4}, gathers
  image_bytes = 16 * 32 * 32 * 3 * 4
  for rep in compiled.values():
    for kind, coll in rep["collectives"].items():
      assert max(coll["sizes"]) < image_bytes, (rep["name"], kind)
  assert "all-gather" not in compiled["gen"]["collectives"]   # the decoder stage: no classifier
