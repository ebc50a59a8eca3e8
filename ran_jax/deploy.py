"""The encoder on the phone, the classifier on the server: export, load, run, measure.

A finished workdir (`WORKDIR/export/`, see `ran_jax.export`) is turned into what a
deployment ships, under `WORKDIR/deploy/`:

  encoder.tflite       the phone side: the encoder in eval mode (running batch-norm
                       statistics, bottleneck and tanh bound included) as a LiteRT
                       flatbuffer with TFLite built-in ops only (no Flex / select-TF ops),
                       batch size 1 (what a phone sends). Inputs `x` [1, H, W, C] and, when
                       the encoder releases noisy features, `eps` [1, *feature_shape]:
                       it computes z + feature_noise * eps (`ran_jax.stages.release` with
                       the noise drawn outside), so the same eps can be fed to JAX and
                       LiteRT. The client draws eps ~ N(0, 1) (`draw_eps`).
  encoder_int8.tflite  (`--int8`) full-integer post-training quantization (int8 weights
                       and activations, float input and output), calibrated on training
                       examples.
  classifier.jaxexport the server side: the classifier as serialized StableHLO
                       (`jax.export`), any batch size, lowered for cpu, cuda and tpu;
                       loading it needs only `jax`, not this library's training code.
  deploy.json          the manifest: shapes, noise scale, sha256 of every artefact (so a
                       file of another model is refused) and the checks run at export.

Path: `jax2tf.convert(with_gradient=False)` (jax 0.10.2 only serializes natively: the
TF graph is one XlaCallModule op carrying StableHLO) -> `tf.lite.TFLiteConverter`
(which legalizes that StableHLO to TFLite built-ins) with the parameters closed over as
constants and static shapes. The convolutions are built with `conv_impl='xla'` (plain
lax.conv / reduce_window, the same parameters) and in float32.

  python -m ran_jax.deploy export   --workdir=DIR [--int8]
  python -m ran_jax.deploy sample   --workdir=DIR --out=x.npy [--n=32] [--png_dir=DIR]
  python -m ran_jax.deploy encode   --workdir=DIR [--int8] | --model=enc.tflite
                                    --inputs=x.npy|img.png,...|DIR --out=features.npz
  python -m ran_jax.deploy classify --workdir=DIR | --classifier=FILE --features=features.npz
  python -m ran_jax.deploy measure  --workdir=DIR      (sizes, latency; docs/deploy.md)
  python -m ran_jax.deploy attack   --workdir=DIR      (int8 vs float under the attackers)
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
import sys
import time
import warnings
from typing import Optional, Sequence

import numpy as np

log = logging.getLogger("ran_jax")

DEPLOY_DIR = "deploy"
MANIFEST = "deploy.json"
ENCODER_FILE = "encoder.tflite"
ENCODER_INT8_FILE = "encoder_int8.tflite"
CLASSIFIER_FILE = "classifier.jaxexport"
FORMAT = 1
BATCH = 1                              # the phone encodes one example per request
CLASSIFIER_PLATFORMS = ("cpu", "cuda", "tpu")
REPRESENTATIVE_EXAMPLES = 256          # training examples that calibrate int8 ranges
EPS_RANGE = 6.0                        # int8 eps input covers [-6, 6]: P(|N(0,1)| > 6) ~ 2e-9
VERIFY_EXAMPLES = 8                    # random inputs checked against JAX at export
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class ArtefactError(ValueError):
  """A deployment artefact that is missing, corrupt, or not the one this model expects."""


# ---------------------------------------------------------------- small helpers


def sha256(blob: bytes) -> str:
  return hashlib.sha256(blob).hexdigest()


def deploy_dir(workdir: str) -> str:
  return os.path.join(workdir, DEPLOY_DIR)


def _read_bytes(path: str, what: str) -> bytes:
  if not os.path.exists(path):
    raise FileNotFoundError(f"No {what} at {path}; create it with "
                            "`python -m ran_jax.deploy export --workdir=DIR`.")
  with open(path, "rb") as f:
    return f.read()


def _write_bytes(path: str, blob: bytes) -> None:
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(blob)
  os.replace(tmp, path)


def read_manifest(directory: str) -> dict:
  path = os.path.join(directory, MANIFEST)
  if not os.path.exists(path):
    raise FileNotFoundError(f"No deployment manifest {path}; create it with "
                            "`python -m ran_jax.deploy export --workdir=<the workdir>`.")
  try:
    with open(path, encoding="utf-8") as f:
      manifest = json.load(f)
  except json.JSONDecodeError as e:
    raise ArtefactError(f"{path} is not valid JSON ({e}); re-run the export.") from None
  if manifest.get("format") != FORMAT:
    raise ArtefactError(f"{path} has format {manifest.get('format')!r}, this code reads "
                        f"{FORMAT}; re-run the export.")
  return manifest


def draw_eps(shape: Sequence[int], rng: Optional[np.random.Generator] = None) -> np.ndarray:
  """Release noise eps ~ N(0, 1) of `shape` (the encoder scales it by feature_noise).

  Without `rng`, a generator seeded from fresh operating-system entropy
  (`np.random.default_rng()`), so no two requests share noise. A seeded `rng` is for
  reproducible tests only: noise an attacker can predict can be subtracted.
  """
  rng = np.random.default_rng() if rng is None else rng
  return rng.standard_normal(tuple(shape)).astype(np.float32)


# ---------------------------------------------------------------- the networks as exported


def export_models(trained):
  """`trained`'s modules rebuilt for export: plain lax.conv, float32 (same parameters)."""
  import ml_collections

  from ran_jax.models import build_models

  mc = ml_collections.ConfigDict(trained.config.model.to_dict())
  mc.conv_impl = "xla"
  mc.dtype = "float32"
  m = trained.meta
  return build_models(mc, tuple(m["input_shape"]), m["num_classes"], tuple(m["value_range"]))


def _encoder_fn(trained):
  """(fn, x_shape, z_shape): fn(x) or fn(x, eps) -> released features, batch `BATCH`."""
  import jax
  import jax.numpy as jnp

  from ran_jax import stages

  models = export_models(trained)
  params, stats = trained.params["encoder"], trained.batch_stats["encoder"]
  sigma = float(trained.feature_noise)
  x_shape = (BATCH,) + tuple(trained.meta["input_shape"])

  def features(x):
    return stages.features(models, params, stats, x, False)[0]

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

  fn, x_shape, z_shape = _encoder_fn(trained)
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
  _, _, z_shape = _encoder_fn(trained)
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


def _litert_available() -> bool:
  try:
    import ai_edge_litert.interpreter  # noqa: F401
  except ImportError:
    return False
  return True


def export_deployment(workdir: str, int8: bool = False, seed: int = 0) -> dict:
  """Writes WORKDIR/deploy/ (float encoder, classifier, and int8 encoder if asked).

  Returns the manifest. Every process reads the networks (a collective restore); only
  process 0 converts and writes (the others return {}), so the trainer can call it on
  every process at the end of a run.
  """
  import jax

  from ran_jax import export

  trained = export.load_trained(workdir)
  if jax.process_index() != 0:
    return {}
  fn, x_shape, z_shape = _encoder_fn(trained)
  out = deploy_dir(workdir)
  os.makedirs(out, exist_ok=True)
  m = trained.meta
  manifest = {
      "format": FORMAT, "step": m.get("step"), "dataset": m.get("dataset"),
      "input_shape": list(m["input_shape"]), "feature_shape": list(z_shape[1:]),
      "batch": BATCH, "num_classes": int(m["num_classes"]),
      "value_range": [float(v) for v in m["value_range"]],
      "feature_noise": float(trained.feature_noise),
      "encoder_inputs": ["x", "eps"] if trained.feature_noise else ["x"],
      "versions": {"jax": jax.__version__, "tensorflow": _tf_version()},
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
    _write_bytes(os.path.join(out, name), blob)
    entry = {"file": name, "sha256": sha256(blob), "bytes": len(blob)}
    if _litert_available():
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
  _write_bytes(os.path.join(out, CLASSIFIER_FILE), cls)
  manifest["classifier"] = {"file": CLASSIFIER_FILE, "sha256": sha256(cls), "bytes": len(cls),
                            "platforms": list(CLASSIFIER_PLATFORMS)}
  tmp = os.path.join(out, MANIFEST + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=2)
  os.replace(tmp, os.path.join(out, MANIFEST))  # last: a manifest marks a finished export
  log.info("Wrote the deployment to %s: %s", out,
           ", ".join(f"{e['file']} ({e['bytes']} B)" for k, e in manifest.items()
                     if k in ("encoder", "encoder_int8", "classifier")))
  return manifest


def _tf_version() -> str:
  import tensorflow as tf

  return tf.__version__


# ---------------------------------------------------------------- running the artefacts


def _quantized_range(interpreter, index: int):
  """(lo, hi) an int8 model clips a float input to (its QUANTIZE op's range), or None."""
  details = {d["index"]: d for d in interpreter.get_tensor_details()}
  for op in interpreter._get_ops_details():  # noqa: SLF001 (the public API has no op list)
    if op["op_name"] == "QUANTIZE" and list(op["inputs"]) == [index]:
      scale, zero = details[int(op["outputs"][0])]["quantization"]
      if scale:
        return ((-128 - zero) * scale, (127 - zero) * scale)
  return None


class TFLiteEncoder:
  """A `.tflite` encoder in the LiteRT interpreter: x [N, H, W, C] (+ eps) -> features.

  Runs one example per invocation (the exported batch is 1). `eps` [N, *feature_shape]
  is required by noisy encoders; `rng` draws it instead (None: fresh OS entropy).
  """

  def __init__(self, interpreter, name: str, sha: str, size: int):
    self.name, self.sha256, self.bytes = name, sha, size
    self._it = interpreter
    details = {d["name"]: d for d in interpreter.get_input_details()}
    if "x" not in details or set(details) - {"x", "eps"}:
      raise ArtefactError(f"{name} is not a ran_jax encoder: its inputs are {sorted(details)}, "
                          "expected 'x' (and 'eps' for noisy features).")
    self._x = details["x"]
    self._eps = details.get("eps")
    outs = interpreter.get_output_details()
    if len(outs) != 1:
      raise ArtefactError(f"{name} is not a ran_jax encoder: {len(outs)} outputs, expected 1.")
    self._out = outs[0]
    self.x_shape = tuple(int(d) for d in self._x["shape"])
    self.feature_shape = tuple(int(d) for d in self._out["shape"][1:])
    self.eps_range = None
    if self._eps is not None:
      self.eps_range = _quantized_range(interpreter, self._eps["index"])

  @classmethod
  def from_bytes(cls, blob: bytes, name: str = "<bytes>", num_threads: int = 1) -> "TFLiteEncoder":
    try:
      from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
      raise ImportError("Running a .tflite encoder needs the LiteRT interpreter: "
                        "pip install 'ai-edge-litert==2.3.*' (see requirements.txt).") from e
    try:
      it = Interpreter(model_content=blob, num_threads=num_threads)
      it.allocate_tensors()
    except (ValueError, RuntimeError) as e:
      raise ArtefactError(f"{name} is not a readable LiteRT model (corrupt or truncated?): "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else e}") from None
    return cls(it, name, sha256(blob), len(blob))

  @property
  def noisy(self) -> bool:
    return self._eps is not None

  @property
  def input_shape(self) -> tuple:
    return self.x_shape[1:]

  def __call__(self, x, eps=None, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.shape[1:] != self.input_shape:
      want = ", ".join(map(str, self.input_shape))
      raise ArtefactError(f"{self.name} takes inputs of shape [N, {want}], got {list(x.shape)}.")
    eps_shape = (len(x),) + self.feature_shape
    if self.noisy:
      eps = draw_eps(eps_shape, rng) if eps is None else np.asarray(eps, np.float32)
      if eps.shape != eps_shape:
        raise ArtefactError(f"{self.name}: eps must have shape {list(eps_shape)}, "
                            f"got {list(eps.shape)}.")
    elif eps is not None:
      raise ArtefactError(f"{self.name} releases noise-free features; it takes no eps.")
    out = np.empty(eps_shape, np.float32)
    for i in range(len(x)):
      self._it.set_tensor(self._x["index"], x[i:i + 1])
      if self.noisy:
        self._it.set_tensor(self._eps["index"], eps[i:i + 1])
      self._it.invoke()
      out[i] = self._it.get_tensor(self._out["index"])[0]
    return out


def _check_against_manifest(manifest: dict, key: str, sha: str, path: str) -> None:
  entry = manifest.get(key)
  if entry is None:
    hint = " --int8" if key == "encoder_int8" else ""
    raise FileNotFoundError(f"The manifest has no {key}; run `python -m ran_jax.deploy export "
                            f"--workdir=DIR{hint}`.")
  if entry["sha256"] != sha:
    raise ArtefactError(f"{path} is not the {key} this manifest was exported with (sha256 "
                        f"{sha[:12]}, expected {entry['sha256'][:12]}): a file of another model "
                        "or another export; re-run the export.")


def load_encoder(workdir: Optional[str] = None, model: Optional[str] = None, int8: bool = False,
                 num_threads: int = 1) -> TFLiteEncoder:
  """The exported encoder of `workdir` (float or int8), or the `.tflite` at `model`.

  A model next to a deploy.json is checked against it (sha256); a lone .tflite is
  checked only for being a readable encoder.
  """
  if model is None:
    if workdir is None:
      raise ValueError("Pass a workdir or a .tflite path.")
    directory = deploy_dir(workdir)
    manifest = read_manifest(directory)
    key = "encoder_int8" if int8 else "encoder"
    name = manifest.get(key, {}).get("file", ENCODER_INT8_FILE if int8 else ENCODER_FILE)
    path = os.path.join(directory, name)
  else:
    path = model
    key, manifest = None, None
    if os.path.exists(os.path.join(os.path.dirname(model) or ".", MANIFEST)):
      manifest = read_manifest(os.path.dirname(model) or ".")
  blob = _read_bytes(path, "exported encoder")
  if manifest is not None:
    sha = sha256(blob)
    if key is None:  # a path: whichever encoder of the manifest it is
      key = next((k for k in ("encoder", "encoder_int8")
                  if manifest.get(k, {}).get("sha256") == sha), "encoder")
    _check_against_manifest(manifest, key, sha, path)
  enc = TFLiteEncoder.from_bytes(blob, path, num_threads)
  if manifest is not None and list(enc.feature_shape) != manifest["feature_shape"]:
    raise ArtefactError(f"{path} outputs {list(enc.feature_shape)}, the manifest says "
                        f"{manifest['feature_shape']}.")
  return enc


@dataclasses.dataclass
class ExportedClassifier:
  """The server's classifier: released features [N, *feature_shape] -> logits [N, classes]."""

  exported: object       # jax.export.Exported
  name: str
  sha256: str
  feature_shape: tuple

  def __call__(self, z) -> np.ndarray:
    z = np.asarray(z, np.float32)
    if z.shape[1:] != self.feature_shape:
      raise ArtefactError(f"{self.name} classifies features of shape "
                          f"[N, {', '.join(map(str, self.feature_shape))}], got {list(z.shape)}"
                          ": features of another encoder?")
    return np.asarray(self.exported.call(z))


def load_classifier(workdir: Optional[str] = None,
                    path: Optional[str] = None) -> ExportedClassifier:
  """The serialized classifier of `workdir` (checked against deploy.json) or at `path`."""
  import jax

  manifest = None
  if path is None:
    if workdir is None:
      raise ValueError("Pass a workdir or a classifier path.")
    manifest = read_manifest(deploy_dir(workdir))
    path = os.path.join(deploy_dir(workdir), manifest["classifier"]["file"])
  elif os.path.exists(os.path.join(os.path.dirname(path) or ".", MANIFEST)):
    manifest = read_manifest(os.path.dirname(path) or ".")
  blob = _read_bytes(path, "exported classifier")
  if manifest is not None:
    _check_against_manifest(manifest, "classifier", sha256(blob), path)
  try:
    exported = jax.export.deserialize(bytearray(blob))
  except Exception as e:  # flatbuffer / struct errors of a damaged file  # noqa: BLE001
    raise ArtefactError(f"{path} is not a readable jax.export artefact (corrupt or truncated?): "
                        f"{type(e).__name__}: {e}") from None
  if len(exported.in_avals) != 1:
    raise ArtefactError(f"{path} takes {len(exported.in_avals)} inputs; a ran_jax classifier "
                        "takes one (the features).")
  shape = tuple(int(d) for d in exported.in_avals[0].shape[1:])
  return ExportedClassifier(exported, path, sha256(blob), shape)


# ---------------------------------------------------------------- client inputs and files


def load_inputs(spec: str, input_shape: Sequence[int], value_range=(0.0, 1.0)):
  """(x [N, H, W, C] float32, names) from a .npy batch, image files or a directory of images.

  Image files are decoded with PIL, converted to grey or RGB to match the channels,
  resized (bilinear) to H x W and scaled pixel / 255 into [0, 1] (the image datasets'
  normalisation); other inputs (HAR windows, spectrograms) must come as a .npy batch.
  """
  input_shape = tuple(int(d) for d in input_shape)
  if spec.endswith(".npy"):
    x = np.load(_existing(spec)).astype(np.float32)
    if x.shape == input_shape:
      x = x[None]
    elif x.ndim == len(input_shape) and input_shape[-1] == 1 and x.shape[1:] == input_shape[:-1]:
      x = x[..., None]                                       # [N, H, W] grey images
    if x.shape[1:] != input_shape:
      raise ArtefactError(f"{spec} holds an array of shape {list(x.shape)}; the encoder takes "
                          f"[N, {', '.join(map(str, input_shape))}].")
    return x, [f"{os.path.basename(spec)}[{i}]" for i in range(len(x))]
  paths = []
  for part in spec.split(","):
    if os.path.isdir(part):
      paths += sorted(p for p in glob.glob(os.path.join(part, "*"))
                      if p.lower().endswith(IMAGE_SUFFIXES))
    else:
      paths.append(_existing(part))
  if not paths:
    raise FileNotFoundError(f"No image files in {spec}.")
  if len(input_shape) != 3 or input_shape[-1] not in (1, 3) or tuple(value_range) != (0.0, 1.0):
    raise ArtefactError(f"This encoder takes {list(input_shape)} inputs in {list(value_range)}, "
                        "not images; pass a .npy batch.")
  from PIL import Image

  h, w, c = input_shape
  x = np.empty((len(paths), h, w, c), np.float32)
  for i, p in enumerate(paths):
    try:
      im = Image.open(p).convert("L" if c == 1 else "RGB")
    except OSError as e:
      raise ArtefactError(f"{p} is not a readable image: {e}") from None
    if im.size != (w, h):
      im = im.resize((w, h), Image.BILINEAR)
    x[i] = (np.asarray(im, np.float32) / 255.0).reshape(h, w, c)
  return x, [os.path.basename(p) for p in paths]


def _existing(path: str) -> str:
  if not os.path.exists(path):
    raise FileNotFoundError(f"No such file: {path}")
  return path


def encode_to_file(encoder: TFLiteEncoder, x: np.ndarray, names: Sequence[str], out: str,
                   seed: Optional[int] = None) -> dict:
  """Runs the phone side and writes what it sends: features.npz (features, names, origin).

  eps is drawn from fresh OS entropy unless `seed` is given (reproducible, tests only).
  """
  rng = np.random.default_rng(seed)  # seed None: fresh entropy from the OS
  z = encoder(x, rng=rng) if encoder.noisy else encoder(x)
  meta = {"features": z, "names": np.asarray(list(names)),
          "encoder_sha256": np.asarray(encoder.sha256),
          "noise": np.asarray("none" if not encoder.noisy else
                              ("seeded (reproducible, not private)" if seed is not None
                               else "fresh OS entropy"))}
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  np.savez(out, **meta)
  return {"examples": len(z), "feature_shape": list(z.shape[1:]),
          "bytes_per_example": int(z[0].nbytes), "out": out}


def read_features(path: str) -> dict:
  _existing(path)
  try:
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  except (ValueError, OSError) as e:
    raise ArtefactError(f"{path} is not a features file written by `encode`: {e}") from None


def classify_file(classifier: ExportedClassifier, path: str, manifest: Optional[dict] = None):
  """Logits and predicted classes of the features in `path` (checked against the manifest)."""
  data = read_features(path)
  if "features" not in data:
    raise ArtefactError(f"{path} has no 'features' array (keys: {sorted(data)}).")
  if manifest is not None and "encoder_sha256" in data:
    known = {manifest[k]["sha256"] for k in ("encoder", "encoder_int8") if k in manifest}
    if str(data["encoder_sha256"]) not in known:
      raise ArtefactError(f"{path} was encoded by another encoder (sha256 "
                          f"{str(data['encoder_sha256'])[:12]}), not by this deployment's "
                          "(encoder.tflite / encoder_int8.tflite); the classifier would "
                          "answer nonsense.")
  logits = classifier(data["features"])
  return logits, np.argmax(logits, -1), data


# ---------------------------------------------------------------- measurements


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

  xla_fn, _, _ = _encoder_fn(trained)
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


# ---------------------------------------------------------------- command line


def _flags():
  from absl import flags

  flags.DEFINE_string("workdir", None, "A finished training run (holds export/, gets deploy/).")
  flags.DEFINE_string("model", None, "encode: a .tflite encoder instead of the workdir's.")
  flags.DEFINE_string("classifier", None, "classify: a classifier file instead of the workdir's.")
  flags.DEFINE_bool("int8", False, "export: also the int8 encoder; encode: use it.")
  flags.DEFINE_string("inputs", None, "encode: a .npy batch, image files (comma-separated) or "
                      "a directory of images.")
  flags.DEFINE_string("features", None, "classify: a features.npz written by encode.")
  flags.DEFINE_string("labels", None, "classify: a .npy of labels to report accuracy.")
  flags.DEFINE_string("out", None, "Output file (encode: features.npz; sample: x.npy; "
                      "classify: predictions .npz; measure/attack: JSON).")
  flags.DEFINE_integer("seed", None, "encode: seed of the release noise (reproducible runs "
                       "only; default fresh OS entropy).")
  flags.DEFINE_integer("n", 32, "sample: examples to write.")
  flags.DEFINE_integer("examples", 200, "measure: test examples timed per round.")
  flags.DEFINE_string("split", "test", "sample: split to take the examples from.")
  flags.DEFINE_string("png_dir", None, "sample: also write the examples as PNG files here.")
  flags.DEFINE_integer("num_threads", 1, "LiteRT interpreter threads.")
  return flags.FLAGS


def _sample(workdir: str, split: str, n: int, out: str, png_dir: Optional[str]) -> dict:
  from ran_jax import export, input_pipeline

  trained = export.load_trained(workdir)
  source = input_pipeline.load_dataset(trained.config.data)
  part = getattr(source, split)
  batch = part.get(np.arange(min(n, len(part))))
  x, y = np.asarray(batch["image"], np.float32), np.asarray(batch["label"], np.int32)
  np.save(out, x)
  labels = os.path.splitext(out)[0] + "_labels.npy"
  np.save(labels, y)
  if png_dir:
    from PIL import Image

    os.makedirs(png_dir, exist_ok=True)
    lo, hi = source.value_range
    for i, im in enumerate(x):
      u8 = np.round(np.clip((im - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
      Image.fromarray(u8[..., 0] if u8.shape[-1] == 1 else u8).save(
          os.path.join(png_dir, f"{split}_{i:04d}_label{y[i]}.png"))
  return {"examples": len(x), "x": out, "labels": labels, "png_dir": png_dir}


def main(argv):
  from ran_jax.config_lib import exit_with_error

  flags = _FLAGS
  commands = ("export", "sample", "encode", "classify", "measure", "attack")
  if len(argv) != 2 or argv[1] not in commands:
    exit_with_error(f"usage: python -m ran_jax.deploy {{{'|'.join(commands)}}} --workdir=DIR "
                    "[...]; see the module docstring.")
  cmd = argv[1]
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  for name in ("absl", "jax"):
    logging.getLogger(name).setLevel(logging.WARNING)
  need_workdir = cmd in ("export", "sample", "measure", "attack") or (
      cmd == "encode" and not flags.model) or (cmd == "classify" and not flags.classifier)
  if need_workdir and not flags.workdir:
    exit_with_error(f"{cmd}: --workdir is required.")
  try:
    if cmd == "export":
      result = export_deployment(flags.workdir, int8=flags.int8)
    elif cmd == "sample":
      result = _sample(flags.workdir, flags.split, flags.n, flags.out or "x.npy", flags.png_dir)
    elif cmd == "encode":
      if not flags.inputs:
        exit_with_error("encode: --inputs is required.")
      enc = load_encoder(flags.workdir, flags.model, flags.int8, flags.num_threads)
      vr = (0.0, 1.0)
      if flags.workdir:
        vr = tuple(read_manifest(deploy_dir(flags.workdir))["value_range"])
      x, names = load_inputs(flags.inputs, enc.input_shape, vr)
      result = encode_to_file(enc, x, names, flags.out or "features.npz", flags.seed)
    elif cmd == "classify":
      if not flags.features:
        exit_with_error("classify: --features is required.")
      cls = load_classifier(flags.workdir, flags.classifier)
      manifest = read_manifest(deploy_dir(flags.workdir)) if flags.workdir else None
      logits, pred, data = classify_file(cls, flags.features, manifest)
      result = {"examples": len(pred), "predictions": " ".join(map(str, pred.tolist()))}
      if flags.labels:
        y = np.load(_existing(flags.labels))
        if len(y) != len(pred):
          raise ArtefactError(f"{flags.labels} has {len(y)} labels for {len(pred)} features.")
        result["accuracy"] = float(np.mean(pred == y))
      if flags.out:
        np.savez(flags.out, logits=logits, predictions=pred, names=data.get("names", []))
        result["out"] = flags.out
    elif cmd == "measure":
      result = {"measure": measure(flags.workdir, examples=flags.examples),
                "accuracy": accuracy_report(flags.workdir)}
    else:
      res = attack_int8(flags.workdir)
      result = {k: {"accuracy": r.get("accuracy"),
                    "accuracy_retrained": r.get("accuracy_retrained"), "worst": r["worst"],
                    "mse_sum": {a: m["mse_sum"] for a, m in r["attackers"].items()},
                    "reference": r["reference"]}
                for k, r in res.items()}
      if flags.out:
        with open(os.path.splitext(flags.out)[0] + "_full.json", "w", encoding="utf-8") as f:
          json.dump(res, f, indent=2, default=float)
  except (ArtefactError, FileNotFoundError) as e:
    exit_with_error(str(e))
  text = json.dumps(result, indent=2, default=float)
  if cmd in ("measure", "attack") and flags.out:
    with open(flags.out, "w", encoding="utf-8") as f:
      f.write(text)
  print(text)


if __name__ == "__main__":
  from absl import app

  from ran_jax import config_lib

  _FLAGS = _flags()
  if len(sys.argv) > 1 and sys.argv[1] == "measure":
    single_thread_cpu()
  app.run(main, flags_parser=config_lib.parse_flags_or_exit)
