"""The phone side: the `.tflite` encoder in the LiteRT interpreter, its inputs, what it sends.

`encoder.tflite` (see `ran_jax.deploy.convert`) takes `x` [1, H, W, C] and, when the
encoder releases noisy features, `eps` [1, *feature_shape]: it computes
z + feature_noise * eps, so the client supplies the standard-normal draw. Which draw is
the client's release policy.

What a noisy encoder releases when the same input is sent twice
---------------------------------------------------------------
* `fresh` (the default): a new eps ~ N(0, 1) from operating-system entropy for every
  request (`draw_eps`). Two sends of one input are two independent releases
  z + sigma * eps_1, z + sigma * eps_2; an attacker who holds N releases of the same input
  averages them to z + sigma * mean(eps), whose noise has standard deviation sigma / sqrt(N),
  and converges to the clean features z. The privacy measured for one release (the
  attackers of `ran_jax.attack` see one release per input) then no longer holds.
* `per_input`: eps is a deterministic function of a device secret, the encoder and the
  input (`release_noise`): HMAC-SHA256(secret, encoder sha256 + sha256 of the input's
  float32 bytes) keys a SHAKE-256 stream, turned into N(0, 1) by the inverse normal CDF.
  An identical input (same bytes after decoding and resizing, same encoder, same secret)
  yields an identical release, so averaging repeated sends gains nothing: the attacker
  holds one release, however often the input is sent. Without the secret the noise is as
  unpredictable as fresh noise (a keyed hash, not a seed an attacker could guess).
  What it does not protect: (1) inputs that differ in any bit (a re-compressed photo, an
  overlapping sensor window, a burst of near-identical frames) get independent noise, so
  near-duplicates still average; (2) the server sees that two releases are identical, so
  it learns that the same input was sent again (equality is revealed); (3) another
  encoder (float vs int8, a new export) or another secret gives independent noise: each
  is a separate release of the input. The secret (`create_secret`, 32 bytes of OS
  entropy in a file of its own, mode 0600) is created once per device and never replaced
  automatically: a missing or damaged secret stops the client with an error, because a
  new secret would silently turn every repeated input into a second release.

A real deployment draws from the platform's cryptographic generator (e.g. `SecureRandom`
on Android, `SecRandomCopyBytes` on iOS, turned into normals by Box-Muller) or, for
`per_input`, keeps the secret in the platform's key store (Android Keystore, iOS
Keychain) and computes the same HMAC and SHAKE-256 derivation.
"""

from __future__ import annotations

import glob
import hashlib
import hmac
import os
from typing import Optional, Sequence

import numpy as np

from ran_jax.deploy.artefacts import (ENCODER_FILE, ENCODER_INT8_FILE, MANIFEST,
                                      ArtefactError, check_against_manifest, deploy_dir,
                                      existing, read_bytes, read_manifest, sha256)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
RELEASE_POLICIES = ("fresh", "per_input")
SECRET_BYTES = 32
SECRET_HEADER = "ran_jax release secret v1"
_NOISE_DOMAIN = b"ran_jax/release_noise/v1"


# ---------------------------------------------------------------- release noise


def draw_eps(shape: Sequence[int], rng: Optional[np.random.Generator] = None) -> np.ndarray:
  """Release noise eps ~ N(0, 1) of `shape` (the encoder scales it by feature_noise).

  Without `rng`, a generator seeded from fresh operating-system entropy
  (`np.random.default_rng()`), so no two requests share noise. A seeded `rng` is for
  reproducible tests only: noise an attacker can predict can be subtracted.
  """
  rng = np.random.default_rng() if rng is None else rng
  return rng.standard_normal(tuple(shape)).astype(np.float32)



def default_secret_path() -> str:
  """$XDG_CONFIG_HOME/ran_jax/release_secret (~/.config/... without it): one per device."""
  base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
  return os.path.join(base, "ran_jax", "release_secret")


def _secret_text(secret: bytes) -> str:
  return f"{SECRET_HEADER}\n{secret.hex()}\nsha256 {sha256(secret)}\n"


def create_secret(path: Optional[str] = None) -> str:
  """Creates the device's release secret (32 bytes from `os.urandom`) at `path`; returns it.

  Refuses an existing file, whatever it holds (a new secret would make every repeated
  input a second release): ArtefactError. The file is created with mode 0600 atomically
  (O_EXCL), its folder with 0700.
  """
  path = path or default_secret_path()
  if os.path.lexists(path):
    raise ArtefactError(f"{path} exists; a release secret is never overwritten (repeated inputs "
                        "would get new noise: a second release each). Delete it yourself to "
                        "start over with a new secret.")
  os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
  secret = os.urandom(SECRET_BYTES)
  try:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
  except FileExistsError:
    raise ArtefactError(f"{path} exists; a release secret is never overwritten.") from None
  with os.fdopen(fd, "w", encoding="ascii") as f:
    f.write(_secret_text(secret))
  return path


def read_secret(path: Optional[str] = None) -> bytes:
  """The device secret at `path` (default `default_secret_path()`), checked.

  A missing, unreadable or damaged file is an ArtefactError that says how to proceed;
  nothing is ever created or replaced here.
  """
  path = path or default_secret_path()
  if not os.path.exists(path):
    raise ArtefactError(f"No release secret at {path}. Create it once per device with "
                        f"`python -m ran_jax.deploy secret --release_secret={path}` (or restore "
                        "the device's secret from its backup).")
  try:
    with open(path, "rb") as f:
      raw = f.read(4096)
    lines = raw.decode("ascii").splitlines()
    ok = (len(lines) == 3 and lines[0] == SECRET_HEADER and len(lines[1]) == 2 * SECRET_BYTES
          and lines[2].startswith("sha256 "))
    secret = bytes.fromhex(lines[1]) if ok else b""
    ok = ok and lines[2] == f"sha256 {sha256(secret)}"
  except (OSError, UnicodeDecodeError, ValueError) as e:
    ok, reason = False, f"{type(e).__name__}: {e}"
  else:
    reason = "its header, length or checksum is wrong"
  if not ok:
    raise ArtefactError(f"{path} is not a valid release secret ({reason}); it is never replaced "
                        "automatically. Restore it from the device's backup, or delete it and "
                        "create a new one with `python -m ran_jax.deploy secret` (inputs sent "
                        "before then get new noise: a second release each).")
  return secret


def input_digest(x: np.ndarray) -> bytes:
  """sha256 of one input as the encoder sees it: its shape and float32 little-endian bytes."""
  a = np.ascontiguousarray(x, dtype="<f4")
  return hashlib.sha256(repr(a.shape).encode() + b"|" + a.tobytes()).digest()


def release_noise(secret: bytes, x, feature_shape: Sequence[int],
                  context: bytes | str = b"") -> np.ndarray:
  """The `per_input` release policy: eps [N, *feature_shape], N(0, 1), one per input of `x`.

  eps of an example is a function of (secret, context, input bytes) only:
  HMAC-SHA256(secret, domain | context | sha256(input)) keys a SHAKE-256 stream of 64-bit
  words, mapped to uniforms in (0, 1) and through the inverse normal CDF. Identical
  inputs get identical eps, different inputs or secrets independent ones. `context`
  separates encoders (the client passes the encoder file's sha256). Deterministic across
  platforms and library versions (hashlib and the normal quantile), unlike a seeded
  numpy generator, whose streams may change between numpy versions.
  """
  from scipy.special import ndtri

  if not isinstance(secret, (bytes, bytearray)) or len(secret) < 16:
    raise ValueError("release_noise needs the device secret as bytes (read_secret), "
                     f"at least 16 of them; got {type(secret).__name__}.")
  context = context.encode() if isinstance(context, str) else bytes(context)
  x = np.asarray(x)
  feature_shape = tuple(int(d) for d in feature_shape)
  n_values = int(np.prod(feature_shape))
  out = np.empty((len(x), n_values), np.float32)
  for i in range(len(x)):
    msg = _NOISE_DOMAIN + len(context).to_bytes(4, "big") + context + input_digest(x[i])
    key = hmac.new(bytes(secret), msg, hashlib.sha256).digest()
    words = np.frombuffer(hashlib.shake_256(key).digest(8 * n_values), "<u8")
    u = ((words >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53
    # (0, 1): the top word's + 0.5 rounds up to 2^53 (u = 1, an infinite normal) in float64
    u = np.minimum(u, 1.0 - 2.0 ** -53)
    out[i] = ndtri(u)
  return out.reshape((len(x),) + feature_shape)


# ---------------------------------------------------------------- the encoder in LiteRT


def litert_available() -> bool:
  try:
    import ai_edge_litert.interpreter  # noqa: F401
  except ImportError:
    return False
  return True


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
  blob = read_bytes(path, "exported encoder")
  if manifest is not None:
    sha = sha256(blob)
    if key is None:  # a path: whichever encoder of the manifest it is
      key = next((k for k in ("encoder", "encoder_int8")
                  if manifest.get(k, {}).get("sha256") == sha), "encoder")
    check_against_manifest(manifest, key, sha, path)
  enc = TFLiteEncoder.from_bytes(blob, path, num_threads)
  if manifest is not None and list(enc.feature_shape) != manifest["feature_shape"]:
    raise ArtefactError(f"{path} outputs {list(enc.feature_shape)}, the manifest says "
                        f"{manifest['feature_shape']}.")
  return enc


# ---------------------------------------------------------------- inputs and what is sent


def load_inputs(spec: str, input_shape: Sequence[int], value_range=(0.0, 1.0)):
  """(x [N, H, W, C] float32, names) from a .npy batch, image files or a directory of images.

  Image files are decoded with PIL, converted to grey or RGB to match the channels,
  resized (bilinear) to H x W and scaled pixel / 255 into [0, 1] (the image datasets'
  normalisation); other inputs (HAR windows, spectrograms) must come as a .npy batch.
  """
  input_shape = tuple(int(d) for d in input_shape)
  if spec.endswith(".npy"):
    x = np.load(existing(spec)).astype(np.float32)
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
      paths.append(existing(part))
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



def release_eps(encoder: TFLiteEncoder, x: np.ndarray, policy: str = "fresh",
                seed: Optional[int] = None, secret: Optional[bytes] = None) -> Optional[np.ndarray]:
  """eps [N, *feature_shape] for `encoder` on `x` under a release policy (None: noise-free).

  'fresh': a new draw per example from OS entropy (`seed` reproduces a run: tests only).
  'per_input': `release_noise(secret, x, ..., context=encoder.sha256)`.
  """
  if policy not in RELEASE_POLICIES:
    raise ValueError(f"release policy {policy!r}: allowed {list(RELEASE_POLICIES)}.")
  if policy == "per_input":
    if seed is not None:
      raise ValueError("per_input derives the noise from the device secret; a seed would "
                       "replace it (use seeds with the 'fresh' policy, in tests only).")
    if secret is None:
      raise ValueError("per_input needs the device secret (read_secret).")
  if not encoder.noisy:
    return None
  shape = (len(x),) + encoder.feature_shape
  if policy == "fresh":
    return draw_eps(shape, np.random.default_rng(seed))  # seed None: fresh OS entropy
  return release_noise(secret, x, encoder.feature_shape, context=encoder.sha256)


def encode_to_file(encoder: TFLiteEncoder, x: np.ndarray, names: Sequence[str], out: str,
                   seed: Optional[int] = None, policy: str = "fresh",
                   secret: Optional[bytes] = None) -> dict:
  """Runs the phone side and writes what it sends: features.npz (features, names, origin).

  The release noise follows `policy` (see the module docstring and `release_eps`).
  """
  eps = release_eps(encoder, x, policy, seed, secret)
  z = encoder(x, eps)
  if not encoder.noisy:
    noise = "none"
  elif policy == "per_input":
    noise = "per input (device secret)"
  else:
    noise = "seeded (reproducible, not private)" if seed is not None else "fresh OS entropy"
  meta = {"features": z, "names": np.asarray(list(names)),
          "encoder_sha256": np.asarray(encoder.sha256), "noise": np.asarray(noise)}
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  np.savez(out, **meta)
  return {"examples": len(z), "feature_shape": list(z.shape[1:]),
          "bytes_per_example": int(z[0].nbytes), "release_policy": policy, "out": out}
