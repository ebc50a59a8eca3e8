"""The conversion: a finished workdir's networks as the phone's `.tflite` and the server's
`jax.export` artefact, written with their manifest under WORKDIR/deploy/.

Path: `jax2tf.convert(with_gradient=False)` (jax 0.10.2 only serializes natively: the
TF graph is one XlaCallModule op carrying StableHLO) -> `tf.lite.TFLiteConverter`
(which legalizes that StableHLO to TFLite built-ins) with the parameters closed over as
constants and static shapes. The convolutions are built with `conv_impl='xla'` (plain
lax.conv / reduce_window, the same parameters) and in float32. The noisy encoder takes
its N(0, 1) draw as a second input `eps` and computes z + feature_noise * eps
(`ran_jax.stages.release` with the noise drawn outside), so the same eps can be fed to
JAX and LiteRT. An attribute eraser (`ran_jax.privacy.erasure`, `ran-erase`) is one more
affine layer on the clean features, before the noise, inside the same network; the
classifier exported beside it is the one refit on the erased releases.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from typing import Optional

import numpy as np

from ran_jax import __version__, storage
from ran_jax.deploy.artefacts import (BATCH, CLASSIFIER_FILE, ENCODER_FILE, ENCODER_INT8_FILE,
                                      FORMAT, MANIFEST, deploy_dir, sha256, write_bytes)
from ran_jax.deploy.client import TFLiteEncoder, draw_eps, litert_available

log = logging.getLogger("ran_jax")

CLASSIFIER_PLATFORMS = ("cpu", "cuda", "tpu")
REPRESENTATIVE_EXAMPLES = 256          # training examples that calibrate int8 ranges
EPS_RANGE = 6.0                        # int8 eps input covers [-6, 6]: P(|N(0,1)| > 6) ~ 2e-9
VERIFY_EXAMPLES = 8                    # random inputs checked against JAX at export



def export_models(trained):
  """`trained`'s modules rebuilt for export: plain lax.conv, float32 (same parameters)."""
  import ml_collections

  from ran_jax.models import build_models

  mc = ml_collections.ConfigDict(trained.config.model.to_dict())
  mc.conv_impl = "xla"
  mc.dtype = "float32"
  m = trained.meta
  return build_models(mc, tuple(m["input_shape"]), m["num_classes"], tuple(m["value_range"]))


def encoder_fn(trained):
  """(fn, x_shape, z_shape): fn(x) or fn(x, eps) -> released features, batch `BATCH`."""
  import jax
  import jax.numpy as jnp

  from ran_jax import stages

  models = export_models(trained)
  params, stats = trained.params["encoder"], trained.batch_stats["encoder"]
  sigma = float(trained.feature_noise)
  x_shape = (BATCH,) + tuple(trained.meta["input_shape"])

  eraser = getattr(trained, "eraser", None)

  def features(x):  # the clean features, erased when the run carries an eraser
    z = stages.features(models, params, stats, x, False)[0]
    return z if eraser is None else eraser.apply(z)

  z_shape = tuple(jax.eval_shape(features, jax.ShapeDtypeStruct(x_shape, jnp.float32)).shape)
  if not sigma:
    return features, x_shape, z_shape

  def released(x, eps):  # stages.release with its N(0, 1) draw made by the client
    return features(x) + jnp.asarray(sigma, jnp.float32) * eps

  return released, x_shape, z_shape


def representative_inputs(trained, n: int = REPRESENTATIVE_EXAMPLES, seed: int = 0):
  """`n` training examples (a fixed random subset) of the workdir's dataset, float32."""
  from ran_jax import input_pipeline

  source = input_pipeline.load_dataset(trained.config.data)
  idx = np.sort(np.random.default_rng(seed).permutation(len(source.train))[:n])
  return np.asarray(source.train.get(idx)["image"], np.float32)


def convert_encoder(trained, int8: bool = False, representative: Optional[np.ndarray] = None,
                    seed: int = 0) -> bytes:
  """The encoder as a LiteRT flatbuffer (built-in ops only); int8 needs `representative`.

  int8: full-integer quantization with float input and output. The calibration feeds
  the representative inputs with fresh N(0, 1) eps, plus eps = +-EPS_RANGE once each so
  the quantized eps input covers the Gaussian's tails instead of clipping them.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf
  from jax.experimental import jax2tf

  fn, x_shape, z_shape = encoder_fn(trained)
  noisy = bool(trained.feature_noise)
  sig = [tf.TensorSpec(x_shape, tf.float32, name="x")]
  if noisy:
    sig.append(tf.TensorSpec(z_shape, tf.float32, name="eps"))
  tf_fn = tf.function(jax2tf.convert(fn, with_gradient=False), autograph=False,
                      input_signature=sig)
  converter = tf.lite.TFLiteConverter.from_concrete_functions([tf_fn.get_concrete_function()],
                                                              tf_fn)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  if int8:
    if representative is None or not len(representative):
      raise ValueError("int8 quantization needs representative training inputs.")
    rep = np.asarray(representative, np.float32).reshape((-1,) + x_shape)
    rng = np.random.default_rng(seed)

    def dataset():  # a list in input order: the converted model has no signature names
      for i, x in enumerate(rep):
        if not noisy:
          yield [x]
          continue
        eps = draw_eps(z_shape, rng)
        if i < 2:
          eps = np.full(z_shape, EPS_RANGE if i == 0 else -EPS_RANGE, np.float32)
        yield [x, eps]

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = dataset
  with warnings.catch_warnings():  # "no statistics for quantized inputs": they stay float
    warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
    return converter.convert()


def export_classifier(trained) -> bytes:
  """The eval-mode classifier on released features, serialized by `jax.export` (batch 'b')."""
  import jax
  import jax.numpy as jnp

  from ran_jax import stages

  models = export_models(trained)
  params = trained.params["classifier"]
  _, _, z_shape = encoder_fn(trained)
  dims = ", ".join(["b"] + [str(d) for d in z_shape[1:]])
  spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(dims), jnp.float32)
  fn = jax.jit(lambda z: stages.classify(models, params, z, False))
  return bytes(jax.export.export(fn, platforms=CLASSIFIER_PLATFORMS)(spec).serialize())


def builtin_ops(blob: bytes) -> list[str]:
  """Names of the operators a LiteRT flatbuffer uses ('CUSTOM' / 'FLEX_*' would need delegates)."""
  from ai_edge_litert import schema_py_generated as schema

  model = schema.Model.GetRootAs(blob, 0)
  names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
  ops = []
  for i in range(model.OperatorCodesLength()):
    code = model.OperatorCodes(i)
    op = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")
    ops.append(op if op != "CUSTOM" else f"CUSTOM:{code.CustomCode().decode()}")
  return ops


def export_deployment(workdir: str, int8: bool = False, seed: int = 0) -> dict:
  """Writes WORKDIR/deploy/ (float encoder, classifier, and int8 encoder if asked).

  Returns the manifest. Every process reads the networks (a collective restore); only
  process 0 converts and writes (the others return {}), so every process of a run
  can call it at the end of the run.
  """
  import jax

  from ran_jax import export

  trained = export.load_trained(workdir)
  if jax.process_index() != 0:
    return {}
  fn, x_shape, z_shape = encoder_fn(trained)
  out = deploy_dir(workdir)
  storage.path(out).mkdir(parents=True, exist_ok=True)
  m = trained.meta
  manifest = {
      "format": FORMAT, "step": m.get("step"), "dataset": m.get("dataset"),
      "input_shape": list(m["input_shape"]), "feature_shape": list(z_shape[1:]),
      "batch": BATCH, "num_classes": int(m["num_classes"]),
      "value_range": [float(v) for v in m["value_range"]],
      "feature_noise": float(trained.feature_noise),
      "encoder_inputs": ["x", "eps"] if trained.feature_noise else ["x"],
      "eraser": (None if getattr(trained, "eraser", None) is None else
                 {"rank": int(trained.eraser.rank), **{k: trained.eraser.fitted_on.get(k) for k in
                  ("attribute", "within_class", "rule", "eraser_fraction", "examples")}}),
      "versions": {"ran_jax": __version__, "jax": jax.__version__,
                   "tensorflow": _tf_version()},
  }
  # The float check runs on random inputs in the value range (it needs no dataset); the
  # int8 one on calibration examples (its ranges hold only on the data's distribution).
  rng = np.random.default_rng(seed)
  lo, hi = manifest["value_range"]
  checks = {"encoder": ("random_inputs",
                        rng.uniform(lo, hi, (VERIFY_EXAMPLES,) + x_shape).astype(np.float32))}
  blobs = {"encoder": (ENCODER_FILE, convert_encoder(trained))}
  if int8:
    rep = representative_inputs(trained, seed=seed)
    blobs["encoder_int8"] = (ENCODER_INT8_FILE, convert_encoder(trained, True, rep, seed))
    manifest["representative"] = {"split": "train", "examples": int(len(rep)), "seed": seed}
    checks["encoder_int8"] = ("calibration_examples", rep[:VERIFY_EXAMPLES, None])
  for key, (name, blob) in blobs.items():
    write_bytes(os.path.join(out, name), blob)
    entry = {"file": name, "sha256": sha256(blob), "bytes": len(blob)}
    if litert_available():
      entry["ops"] = sorted(set(builtin_ops(blob)))
      enc = TFLiteEncoder.from_bytes(blob, name)
      where, xs = checks[key]
      eps = [draw_eps(z_shape, rng) if enc.noisy else None for _ in xs]
      got = np.concatenate([enc(x, e) for x, e in zip(xs, eps)])
      ref = np.concatenate([np.asarray(fn(x, e) if enc.noisy else fn(x)) for x, e in zip(xs, eps)])
      entry[f"max_abs_diff_vs_jax_{where}"] = float(np.max(np.abs(got - ref)))
      if enc.eps_range is not None:
        entry["eps_range"] = [float(v) for v in enc.eps_range]
    manifest[key] = entry
  cls = export_classifier(trained)
  write_bytes(os.path.join(out, CLASSIFIER_FILE), cls)
  manifest["classifier"] = {"file": CLASSIFIER_FILE, "sha256": sha256(cls), "bytes": len(cls),
                            "platforms": list(CLASSIFIER_PLATFORMS)}
  # last: a manifest marks a finished export (written whole, local or gs://)
  storage.write_text(os.path.join(out, MANIFEST), json.dumps(manifest, indent=2))
  log.info("Wrote the deployment to %s: %s", out,
           ", ".join(f"{e['file']} ({e['bytes']} B)" for k, e in manifest.items()
                     if k in ("encoder", "encoder_int8", "classifier")))
  return manifest


def _tf_version() -> str:
  import tensorflow as tf

  return tf.__version__
