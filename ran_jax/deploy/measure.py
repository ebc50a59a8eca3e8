"""Measurements of a deployment: sizes, single-core latency (.tflite vs JAX), accuracy of
each encoder through the exported classifier, and the int8 encoder under the project's
attackers (docs/deploy.md).
"""

from __future__ import annotations

import os
import time
from typing import Optional

import numpy as np

from ran_jax.deploy.artefacts import deploy_dir, read_manifest
from ran_jax.deploy.client import draw_eps, load_encoder
from ran_jax.deploy.convert import encoder_fn
from ran_jax.deploy.server import load_classifier


def _median_rounds(fns: dict, x: np.ndarray, eps: Optional[np.ndarray], rounds: int) -> dict:
  """Per-example seconds of each fn(x_i, eps_i), median over interleaved rounds."""
  times = {k: [] for k in fns}
  for _ in range(rounds):
    for k, fn in fns.items():
      t0 = time.perf_counter()
      for i in range(len(x)):
        fn(x[i:i + 1], None if eps is None else eps[i:i + 1])
      times[k].append((time.perf_counter() - t0) / len(x))
  return {k: float(np.median(v)) for k, v in times.items()}


def measure(workdir: str, examples: int = 200, rounds: int = 5) -> dict:
  """Sizes, per-example single-thread CPU latency (.tflite vs JAX) and bytes sent.

  Call `single_thread_cpu()` before JAX starts for the JAX side to be single-threaded.
  """
  import jax

  from ran_jax import export, input_pipeline

  trained = export.load_trained(workdir)
  manifest = read_manifest(deploy_dir(workdir))
  source = input_pipeline.load_dataset(trained.config.data)
  n = min(examples, len(source.test))
  x = np.asarray(source.test.get(np.arange(n))["image"], np.float32)
  sigma = trained.feature_noise
  z_shape = (1,) + tuple(manifest["feature_shape"])
  eps = np.stack([draw_eps(z_shape, np.random.default_rng([0, i]))[0] for i in range(n)]) \
      if sigma else None

  def timed(release):  # fn(x, eps) -> features, blocked on: the cost of one request
    f = jax.jit(release)
    return lambda x, e: f(x, e).block_until_ready()

  xla_fn, _, _ = encoder_fn(trained)
  if sigma:
    fns = {"jax_auto": timed(lambda x, e: trained.features(x) + sigma * e),
           "jax_xla": timed(xla_fn)}
  else:
    fns = {"jax_auto": timed(lambda x, e: trained.features(x)),
           "jax_xla": timed(lambda x, e: xla_fn(x))}
  sizes = {}
  for key in ("encoder", "encoder_int8"):
    if key in manifest:
      enc = load_encoder(workdir, int8=key == "encoder_int8", num_threads=1)
      fns[f"tflite_{key}"] = (lambda enc: lambda x, e: enc(x, e))(enc)
      sizes[key] = enc.bytes
  for fn in fns.values():  # warm-up (compilation, allocation)
    fn(x[:1], None if eps is None else eps[:1])
  per_example = _median_rounds(fns, x, eps, rounds)
  feature_bytes = int(np.prod(manifest["feature_shape"])) * 4
  input_values = int(np.prod(manifest["input_shape"]))
  return {
      "workdir": workdir, "examples": n, "rounds": rounds,
      "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
      "sizes_bytes": {**sizes, "classifier": manifest["classifier"]["bytes"]},
      "latency_us_per_example": {k: v * 1e6 for k, v in per_example.items()},
      "ratio_jax_auto_over_tflite": {k: per_example["jax_auto"] / v for k, v in per_example.items()
                                     if k.startswith("tflite_")},
      "feature_bytes_per_example_float32": feature_bytes,
      "input_bytes_per_example": {"uint8": input_values, "float32": 4 * input_values},
  }


def single_thread_cpu() -> None:
  """Pins this process to one core and XLA to one thread (before JAX's backend starts)."""
  if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_multi_thread_eigen" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false "
                               "intra_op_parallelism_threads=1").strip()


def accuracy_report(workdir: str, int8: bool = True) -> dict:
  """Test accuracy through the exported classifier: JAX features vs each .tflite encoder.

  Every path gets the same eps per example (seeded), so only the encoder differs.
  """
  from ran_jax import export, input_pipeline, losses

  trained = export.load_trained(workdir)
  manifest = read_manifest(deploy_dir(workdir))
  source = input_pipeline.load_dataset(trained.config.data)
  te = source.test.get(np.arange(len(source.test)))
  x, y = np.asarray(te["image"], np.float32), np.asarray(te["label"])
  cls = load_classifier(workdir)
  z_shape = (len(x),) + tuple(manifest["feature_shape"])
  eps = draw_eps(z_shape, np.random.default_rng(0)) if trained.feature_noise else None
  ref = np.asarray(trained.features(x))
  if eps is not None:
    ref = ref + trained.feature_noise * eps
  out = {"jax": float(losses.accuracy(cls(ref), y))}
  for key in ("encoder", "encoder_int8"):
    if key in manifest and (int8 or key == "encoder"):
      z = load_encoder(workdir, int8=key == "encoder_int8")(x, eps)
      out[key] = float(losses.accuracy(cls(z), y))
      flat, rflat = z.reshape(len(z), -1), ref.reshape(len(ref), -1)
      out[f"{key}_max_abs_diff"] = float(np.max(np.abs(z - ref)))
      out[f"{key}_snr_db"] = float(10 * np.log10(np.sum(rflat ** 2) / np.sum((flat - rflat) ** 2)))
  return out


def attack_int8(workdir: str, cfg=None) -> dict:
  """The project's attack protocol on the float (JAX) encoder and on the int8 .tflite one.

  As `ran_jax.privacy.methods.attack_trained`, with the encoder swapped: each encoder's
  clean features go in (the int8 model run with eps = 0), the protocol adds the release
  noise with the same sigma and seeds, and the same attackers (fresh mirrored, MLP and
  ResNet decoders, ridge, RAN's own decoder) and the exported classifier score them.
  Returns {'float': result, 'int8': result}.
  """
  import jax

  from ran_jax import export, input_pipeline
  from ran_jax.privacy import methods, protocol

  trained = export.load_trained(workdir)
  cfg = cfg or protocol.AttackConfig()
  data = protocol.prepare_data(input_pipeline.load_dataset(trained.config.data), cfg)
  cls = load_classifier(workdir)
  enc8 = load_encoder(workdir, int8=True)

  def int8_features(x):
    if not enc8.noisy:
      return enc8(x)
    return enc8(x, np.zeros((len(x),) + enc8.feature_shape, np.float32))

  out = {}
  for name, fn in (("float", jax.jit(trained.features)), ("int8", int8_features)):
    result, _ = protocol.attack_features(
        data, fn, cfg, feature_noise=trained.feature_noise, classify=cls,
        own_decode=jax.jit(trained.decode), mirrored=methods.fresh_mirror(trained),  # noqa: SLF001
        classifier_module=methods.fresh_classifier(trained), name=f"deploy/{name}")  # noqa: SLF001
    result["eval_config"] = cfg.to_dict()
    out[name] = result
  return out
