"""The phone-side .tflite encoder and the server-side exported classifier against JAX.

One short real training run (digits, a defended encoder: tanh bottleneck of 32 and
released-feature noise 0.5) is exported once; every test reads that deployment.
Needs the LiteRT interpreter (ai-edge-litert, pinned in requirements.txt): a missing or
broken install fails these tests, never skips them.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

import ai_edge_litert.interpreter  # noqa: F401

from configs import digits_lenet
import ran_jax
from ran_jax import deploy, export, input_pipeline, losses, trainer
from ran_jax.models import build_models
from tests.helpers import ROOT

pytestmark = pytest.mark.slow  # the module fixture trains

SIGMA = 0.5


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """(workdir, trained, test inputs, test labels) of a 1-epoch defended digits run."""
  wd = str(tmp_path_factory.mktemp("deploy"))
  c = digits_lenet.get_config()
  c.num_epochs = 1  # ~0.94 test accuracy: enough for the comparisons to mean something
  c.model.bottleneck_dim = 32
  c.model.feature_noise = SIGMA
  c.ran.lam = 1.0
  trainer.train_and_evaluate(c, wd)
  deploy.export_deployment(wd, int8=True)
  trained = export.load_trained(wd)
  source = input_pipeline.load_dataset(trained.config.data)
  te = source.test.get(np.arange(len(source.test)))
  return wd, trained, np.asarray(te["image"], np.float32), np.asarray(te["label"])


def test_versions_in_config_and_manifest(run):
  wd = run[0]
  with open(os.path.join(wd, "config.json")) as f:
    assert json.load(f)["ran_jax_version"] == ran_jax.__version__
  assert deploy.read_manifest(deploy.deploy_dir(wd))["versions"]["ran_jax"] == ran_jax.__version__


def _jax_released(trained, x, eps):
  return np.asarray(trained.features(x)) + trained.feature_noise * eps


def test_float_tflite_matches_jax_on_real_digits(run):
  wd, trained, x, _ = run
  enc = deploy.load_encoder(wd)
  assert enc.noisy and enc.x_shape == (1, 28, 28, 1) and enc.feature_shape == (32,)
  eps = deploy.draw_eps((len(x), 32), np.random.default_rng(1))
  got = enc(x, eps)
  # The JAX reference is the encoder as trained and evaluated (the CPU 'fast' convs).
  np.testing.assert_allclose(got, _jax_released(trained, x, eps), atol=1e-5, rtol=1e-5)
  # Built-in ops only: no custom op, no Flex (select-TF) op a phone's LiteRT lacks.
  ops = deploy.builtin_ops(open(os.path.join(deploy.deploy_dir(wd), deploy.ENCODER_FILE),
                                "rb").read())
  assert not [o for o in ops if o.startswith(("CUSTOM", "FLEX", "DELEGATE"))], ops


def test_int8_features_close_and_accuracy_within_one_point(run):
  """Thresholds: the clean features (eps = 0) of the int8 model keep per-example cosine
  >= 0.99 and SNR >= 25 dB (int8 steps are 1/255 of each activation's range, a few %
  after four quantized layers; measured ~0.9996 / ~36 dB), and their RMS error stays
  under a tenth of the release noise sigma, so what the server receives is dominated by
  the noise the privacy was measured with, not by quantization."""
  wd, trained, x, y = run
  enc8 = deploy.load_encoder(wd, int8=True)
  enc = deploy.load_encoder(wd)
  assert enc8.bytes < enc.bytes / 2
  lo, hi = enc8.eps_range
  assert lo < -5.5 and hi > 5.5  # the Gaussian's tails are not clipped
  zero = np.zeros((len(x), 32), np.float32)
  z8, z = enc8(x, zero), np.asarray(trained.features(x))
  cos = np.sum(z8 * z, 1) / (np.linalg.norm(z8, axis=1) * np.linalg.norm(z, axis=1))
  assert cos.min() >= 0.99, cos.min()
  assert 10 * np.log10(np.sum(z ** 2) / np.sum((z8 - z) ** 2)) >= 25
  assert np.sqrt(np.mean((z8 - z) ** 2)) < 0.1 * SIGMA
  # End to end through the exported classifier, the same eps for every path.
  cls = deploy.load_classifier(wd)
  eps = deploy.draw_eps((len(x), 32), np.random.default_rng(2))
  acc_jax = float(losses.accuracy(cls(_jax_released(trained, x, eps)), y))
  acc8 = float(losses.accuracy(cls(enc8(x, eps)), y))
  assert acc_jax > 0.8  # a trained model, so the comparison means something
  assert abs(acc8 - acc_jax) <= 0.01, (acc8, acc_jax)


def test_exported_classifier_matches_jax_any_batch(run):
  wd, trained, _, _ = run
  cls = deploy.load_classifier(wd)
  rng = np.random.default_rng(3)
  for n in (1, 7, 64):
    z = rng.normal(0, 1, (n, 32)).astype(np.float32)
    np.testing.assert_allclose(cls(z), np.asarray(trained.classify(z)), atol=1e-5, rtol=1e-5)


def test_noise_free_encoder_has_one_input(run):
  wd, trained, x, _ = run
  mc = ml_collections.ConfigDict(trained.config.to_dict())
  mc.model.feature_noise = 0.0  # same parameters; the bottleneck keeps its tanh
  m = trained.meta
  models = build_models(mc.model, tuple(m["input_shape"]), m["num_classes"],
                        tuple(m["value_range"]))
  plain = dataclasses.replace(trained, config=mc, models=models)
  enc = deploy.TFLiteEncoder.from_bytes(deploy.convert_encoder(plain))
  assert not enc.noisy
  np.testing.assert_allclose(enc(x[:32]), np.asarray(plain.features(x[:32])), atol=1e-5,
                             rtol=1e-5)
  with pytest.raises(deploy.ArtefactError, match="takes no eps"):
    enc(x[:2], np.zeros((2, 32), np.float32))


def test_client_inputs_noise_and_feature_files(run, tmp_path):
  wd, trained, x, y = run
  enc = deploy.load_encoder(wd)
  np.save(tmp_path / "x.npy", x[:6, ..., 0])  # [N, H, W] grey images are accepted
  xs, names = deploy.load_inputs(str(tmp_path / "x.npy"), enc.input_shape)
  np.testing.assert_array_equal(xs, x[:6])
  from PIL import Image

  Image.fromarray(np.round(x[0, ..., 0] * 255).astype(np.uint8)).save(tmp_path / "a.png")
  xi, _ = deploy.load_inputs(str(tmp_path / "a.png"), enc.input_shape)
  assert np.max(np.abs(xi[0] - x[0])) <= 0.5 / 255 + 1e-6
  a = deploy.encode_to_file(enc, xs, names, str(tmp_path / "a.npz"), seed=5)
  deploy.encode_to_file(enc, xs, names, str(tmp_path / "b.npz"), seed=5)
  deploy.encode_to_file(enc, xs, names, str(tmp_path / "c.npz"))
  fa, fb, fc = (deploy.read_features(str(tmp_path / f))["features"] for f in ("a.npz", "b.npz",
                                                                              "c.npz"))
  assert a["bytes_per_example"] == 128
  np.testing.assert_array_equal(fa, fb)            # a seed reproduces the noise
  assert np.abs(fa - fc).mean() > 0.1              # no seed: fresh noise every run
  cls = deploy.load_classifier(wd)
  manifest = deploy.read_manifest(deploy.deploy_dir(wd))
  logits, pred, _ = deploy.classify_file(cls, str(tmp_path / "a.npz"), manifest)
  assert logits.shape == (6, 10) and pred.shape == (6,)


def test_commands_encode_and_classify(run, tmp_path):
  """The client and the server as a user runs them (one subprocess each)."""
  wd, _, x, y = run
  np.save(tmp_path / "x.npy", x[:20])
  np.save(tmp_path / "y.npy", y[:20])
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  env.pop("XLA_FLAGS", None)

  def cmd(*args):
    r = subprocess.run([sys.executable, "-m", "ran_jax.deploy", *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    return r

  r = cmd("encode", f"--workdir={wd}", f"--inputs={tmp_path / 'x.npy'}",
          f"--out={tmp_path / 'f.npz'}")
  assert r.returncode == 0, r.stderr[-3000:]
  r = cmd("classify", f"--workdir={wd}", f"--features={tmp_path / 'f.npz'}",
          f"--labels={tmp_path / 'y.npy'}")
  assert r.returncode == 0, r.stderr[-3000:]
  assert '"accuracy"' in r.stdout
  r = cmd("classify", f"--workdir={wd}", f"--features={tmp_path / 'missing.npz'}")
  assert r.returncode != 0 and "No such file" in r.stderr
  # per_input: the device secret is created once by the command and never overwritten; the
  # command's release is the library's (same secret, same derivation).
  key = tmp_path / "cfg" / "secret"
  assert cmd("secret", f"--release_secret={key}").returncode == 0
  before = key.read_bytes()
  r = cmd("secret", f"--release_secret={key}")
  assert r.returncode == 2 and "never overwritten" in r.stderr and key.read_bytes() == before
  r = cmd("encode", f"--workdir={wd}", f"--inputs={tmp_path / 'x.npy'}",
          f"--out={tmp_path / 'p.npz'}", "--release_policy=per_input", f"--release_secret={key}")
  assert r.returncode == 0, r.stderr[-3000:]
  enc = deploy.load_encoder(wd)
  z = enc(x[:20], deploy.release_noise(deploy.read_secret(str(key)), x[:20], enc.feature_shape,
                                       context=enc.sha256))
  np.testing.assert_array_equal(deploy.read_features(str(tmp_path / "p.npz"))["features"], z)


def test_corrupt_and_mismatched_artefacts(run, tmp_path):
  wd, trained, x, _ = run
  bad = str(tmp_path / "wd")
  shutil.copytree(deploy.deploy_dir(wd), os.path.join(bad, deploy.DEPLOY_DIR))
  d = deploy.deploy_dir(bad)
  enc_path = os.path.join(d, deploy.ENCODER_FILE)
  blob = open(enc_path, "rb").read()
  enc = deploy.load_encoder(bad)

  # Wrong input shape, wrong eps shape.
  with pytest.raises(deploy.ArtefactError, match=r"takes inputs of shape \[N, 28, 28, 1\]"):
    enc(np.zeros((2, 32, 32, 1), np.float32))
  with pytest.raises(deploy.ArtefactError, match="eps must have shape"):
    enc(x[:2], np.zeros((2, 16), np.float32))
  # A truncated flatbuffer, standalone.
  (tmp_path / "cut.tflite").write_bytes(blob[:len(blob) // 3])
  (tmp_path / "noise.tflite").write_bytes(np.random.default_rng(0).bytes(4096))
  for name in ("cut.tflite", "noise.tflite"):
    with pytest.raises(deploy.ArtefactError, match="not a readable LiteRT model"):
      deploy.load_encoder(model=str(tmp_path / name))
  # Another model's encoder (perturbed parameters) in this deployment.
  params = jax.tree.map(lambda p: p * 1.1, trained.params)
  other = dataclasses.replace(trained, params=params)
  other_blob = deploy.convert_encoder(other)
  open(enc_path, "wb").write(other_blob)
  with pytest.raises(deploy.ArtefactError, match="not the encoder this manifest"):
    deploy.load_encoder(bad)
  # ... run standalone, its features are refused by this deployment's server.
  (tmp_path / "other.tflite").write_bytes(other_blob)
  foreign = deploy.load_encoder(model=str(tmp_path / "other.tflite"))
  deploy.encode_to_file(foreign, x[:3], ["a", "b", "c"], str(tmp_path / "f.npz"), seed=0)
  cls = deploy.load_classifier(wd)
  manifest = deploy.read_manifest(deploy.deploy_dir(wd))
  with pytest.raises(deploy.ArtefactError, match="encoded by another encoder"):
    deploy.classify_file(cls, str(tmp_path / "f.npz"), manifest)
  # Features of the wrong shape, a corrupt classifier, a broken manifest, a missing export.
  with pytest.raises(deploy.ArtefactError, match=r"features of shape \[N, 32\]"):
    cls(np.zeros((2, 400), np.float32))
  cls_path = os.path.join(d, deploy.CLASSIFIER_FILE)
  (tmp_path / "c.jaxexport").write_bytes(open(cls_path, "rb").read()[:200])
  with pytest.raises(deploy.ArtefactError, match="not a readable jax.export"):
    deploy.load_classifier(path=str(tmp_path / "c.jaxexport"))
  open(cls_path, "ab").write(b"\0")
  with pytest.raises(deploy.ArtefactError, match="not the classifier this manifest"):
    deploy.load_classifier(bad)
  open(os.path.join(d, deploy.MANIFEST), "w").write("{")
  with pytest.raises(deploy.ArtefactError, match="not valid JSON"):
    deploy.load_encoder(bad)
  with pytest.raises(FileNotFoundError, match="deploy export"):
    deploy.load_encoder(str(tmp_path / "nowhere"))


# ---------------------------------------------------------------- release policy


def test_per_input_release_policy(run, tmp_path):
  """An identical input yields the identical release (averaging repeats gains nothing);
  other inputs, secrets or encoders get independent, standard-normal noise."""
  wd, trained, x, _ = run
  enc = deploy.load_encoder(wd)
  key = str(tmp_path / "secret")
  deploy.create_secret(key)
  secret = deploy.read_secret(key)
  assert len(secret) == 32 and os.stat(key).st_mode & 0o777 == 0o600
  xs = np.concatenate([x[:5], x[:5]])          # every input sent twice in one batch
  a = deploy.encode_to_file(enc, xs, list("abcdefghij"), str(tmp_path / "a.npz"),
                            policy="per_input", secret=secret)
  deploy.encode_to_file(enc, x[:5], list("abcde"), str(tmp_path / "b.npz"), policy="per_input",
                        secret=secret)
  fa, fb = (deploy.read_features(str(tmp_path / f)) for f in ("a.npz", "b.npz"))
  assert a["release_policy"] == "per_input" and str(fa["noise"]) == "per input (device secret)"
  np.testing.assert_array_equal(fa["features"][:5], fa["features"][5:])
  np.testing.assert_array_equal(fa["features"][:5], fb["features"])
  # The release is the encoder's features plus sigma * (the derived eps), nothing else.
  eps = deploy.release_noise(secret, x[:5], (32,), context=enc.sha256)
  np.testing.assert_allclose(fb["features"], _jax_released(trained, x[:5], eps), atol=1e-5)

  # Distinct inputs (even one pixel apart) get independent N(0, 1) noise: 300 x 32 draws.
  x300 = x[:300]
  e = deploy.release_noise(secret, x300, (32,)).ravel()
  bumped = x300.copy()
  bumped[:, 0, 0, 0] += 1 / 255
  e_bump = deploy.release_noise(secret, bumped, (32,)).ravel()
  e_other = deploy.release_noise(os.urandom(32), x300, (32,)).ravel()
  e_ctx = deploy.release_noise(secret, x300, (32,), context="another encoder").ravel()
  from scipy import stats

  assert stats.kstest(e, "norm").pvalue > 1e-3       # 9,600 draws from N(0, 1)
  assert abs(e.mean()) < 0.05 and abs(e.std() - 1) < 0.05
  # One standard error of a correlation of 9,600 pairs is ~0.01: 6 of them is "independent".
  for other in (e_bump, e_other, e_ctx):
    assert abs(np.corrcoef(e, other)[0, 1]) < 0.06
  rows = e.reshape(300, 32)
  corr = np.corrcoef(rows)[np.triu_indices(300, 1)]   # pairs of different inputs
  assert abs(corr.mean()) < 0.01 and corr.std() < 0.25   # 1/sqrt(32) ~ 0.18 when independent

  # Fresh noise (the default) differs per send: averaging repeats shrinks it.
  deploy.encode_to_file(enc, xs, list("abcdefghij"), str(tmp_path / "f.npz"))
  ff = deploy.read_features(str(tmp_path / "f.npz"))["features"]
  assert np.abs(ff[:5] - ff[5:]).mean() > 0.1
  with pytest.raises(ValueError, match="a seed would replace it"):
    deploy.release_eps(enc, x[:2], "per_input", seed=1, secret=secret)
  with pytest.raises(ValueError, match="allowed"):
    deploy.release_eps(enc, x[:2], "sometimes")


def test_release_secret_missing_or_corrupt_is_never_replaced(tmp_path):
  key = tmp_path / "dir" / "secret"
  with pytest.raises(deploy.ArtefactError, match="No release secret at .*Create it once"):
    deploy.read_secret(str(key))
  assert not key.exists()                      # reading never creates one
  deploy.create_secret(str(key))
  good = key.read_bytes()
  lines = good.decode().splitlines()
  flipped = ("0" if lines[1][0] != "0" else "1") + lines[1][1:]
  wrong_sum = "\n".join([lines[0], flipped, lines[2]]).encode()   # one hex digit changed
  for bad in (good[:40], b"\xff\xfe garbage", b"", wrong_sum, good.replace(b"v1", b"v9")):
    key.write_bytes(bad)
    with pytest.raises(deploy.ArtefactError, match="not a valid release secret.*never replaced"):
      deploy.read_secret(str(key))
    with pytest.raises(deploy.ArtefactError, match="never overwritten"):
      deploy.create_secret(str(key))
    assert key.read_bytes() == bad             # left exactly as it was
  with pytest.raises(ValueError, match="device secret as bytes"):
    deploy.release_noise("password", np.zeros((1, 4)), (2,))


def _release_noise_by_the_spec(secret, x, n_values, context):
  """The documented per-input derivation, written out with the standard library only.

  HMAC-SHA256(secret, b"ran_jax/release_noise/v1" | len(context) as 4 bytes big-endian |
  context | sha256(repr(shape) | b"|" | float32 little-endian bytes)) keys SHAKE-256;
  each 64-bit little-endian word w gives u = min(((w >> 11) + 0.5) / 2^53, 1 - 2^-53) in
  float64, and eps = Phi^-1(u).
  """
  import hashlib
  import hmac
  import statistics
  import struct

  a = np.ascontiguousarray(x, dtype="<f4")
  digest = hashlib.sha256(repr(a.shape).encode() + b"|" + a.tobytes()).digest()
  msg = b"ran_jax/release_noise/v1" + struct.pack(">I", len(context)) + context + digest
  key = hmac.new(secret, msg, hashlib.sha256).digest()
  stream = hashlib.shake_256(key).digest(8 * n_values)
  words = struct.unpack(f"<{n_values}Q", stream)
  return [statistics.NormalDist().inv_cdf(min(((w >> 11) + 0.5) * 2.0 ** -53, 1 - 2.0 ** -53))
          for w in words]


def test_per_input_release_noise_known_answer():
  """The per-input noise is the documented function of (secret, context, input), so the same
  input gets the same noise on every platform and version: a change to the domain string,
  the framing or the word-to-normal mapping would make each repeated input a new release."""
  secret = bytes(range(32))
  x = np.arange(12, dtype=np.float32).reshape(2, 3, 2, 1) / 8
  eps = deploy.release_noise(secret, x, (2, 3), context="encoder sha256")
  assert eps.shape == (2, 2, 3) and eps.dtype == np.float32
  for i in range(2):
    np.testing.assert_allclose(eps[i].ravel(),
                               _release_noise_by_the_spec(secret, x[i], 6, b"encoder sha256"),
                               rtol=1e-6, atol=1e-6)
  # Recorded from version 1 of the scheme; a device must keep getting these values.
  np.testing.assert_allclose(eps[0].ravel(), [-0.9210776, 0.824422, -1.0496908, -1.6714977,
                                              -0.9731288, -0.9812908], rtol=1e-6)
  # A batch is its inputs one by one: the noise of an input does not depend on its neighbours.
  np.testing.assert_array_equal(deploy.release_noise(secret, x[1:], (2, 3), "encoder sha256"),
                                eps[1:])


def test_release_noise_needs_a_secret_of_16_bytes_or_more():
  x = np.zeros((1, 2, 2, 1), np.float32)
  assert deploy.release_noise(bytes(16), x, (3,)).shape == (1, 3)
  for bad in (bytes(15), "k" * 32, None):
    with pytest.raises(ValueError, match="needs the device secret as bytes"):
      deploy.release_noise(bad, x, (3,))


def test_release_noise_maps_the_extreme_words_to_finite_normals(monkeypatch):
  """The word-to-uniform map is (w >> 11 + 1/2) 2^-53, kept inside (0, 1): a word of zeros
  gives the quantile of 2^-54, a word of ones that of 1 - 2^-53 (its + 1/2 rounds up to 1 in
  float64, which would be an infinite normal)."""
  import hashlib

  from scipy.special import ndtri

  from ran_jax.deploy import client

  class Stream:
    def __init__(self, fill):
      self.fill = fill

    def digest(self, n):
      return bytes([self.fill]) * n

  x = np.zeros((1, 2), np.float32)
  for fill, u in ((0x00, 2.0 ** -54), (0xFF, 1 - 2.0 ** -53)):
    monkeypatch.setattr(client.hashlib, "shake_256", lambda key, f=fill: Stream(f))
    eps = deploy.release_noise(bytes(32), x, (2,))
    np.testing.assert_array_equal(eps, np.float32(ndtri(u)))
    assert np.all(np.isfinite(eps)) and abs(float(eps[0, 0])) > 8
  monkeypatch.setattr(client.hashlib, "shake_256", hashlib.shake_256)


def test_litert_is_found_and_its_absence_is_said(monkeypatch):
  from ran_jax.deploy import client

  assert client.litert_available()
  monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)   # import fails
  assert not client.litert_available()


def test_an_int8_encoders_input_range_is_its_quantize_ops():
  """(lo, hi) = ((-128 - zero) scale, (127 - zero) scale) of the QUANTIZE op reading the
  input; None without one (a float encoder)."""
  from ran_jax.deploy import client

  class Interpreter:
    def __init__(self, ops):
      self.ops = ops

    def get_tensor_details(self):
      return [{"index": 0, "quantization": (0.0, 0)}, {"index": 7, "quantization": (0.5, 3)}]

    def _get_ops_details(self):
      return self.ops

  quantize = {"op_name": "QUANTIZE", "inputs": [0], "outputs": [7]}
  assert client._quantized_range(Interpreter([quantize]), 0) == (-65.5, 62.0)
  assert client._quantized_range(Interpreter([quantize]), 1) is None
  assert client._quantized_range(Interpreter([dict(quantize, op_name="CONV_2D")]), 0) is None


# ---------------------------------------------------------------- known answers of the client


def test_a_model_path_is_checked_against_the_manifest_beside_it(run, tmp_path, monkeypatch):
  """A .tflite inside a deployment is whichever of its encoders its sha256 names (the int8
  one included); a foreign file there is refused before it is parsed; the manifest is the
  one beside the file, not one in the working directory."""
  wd = run[0]
  d = deploy.deploy_dir(wd)
  manifest = deploy.read_manifest(d)
  monkeypatch.chdir(tmp_path)  # no deploy.json in the working directory
  enc8 = deploy.load_encoder(model=os.path.join(d, deploy.ENCODER_INT8_FILE))
  assert enc8.sha256 == manifest["encoder_int8"]["sha256"]
  encf = deploy.load_encoder(model=os.path.join(d, deploy.ENCODER_FILE))
  assert encf.sha256 == manifest["encoder"]["sha256"] and encf.feature_shape == (32,)
  copy = tmp_path / "copy"
  shutil.copytree(d, copy)
  (copy / "other.tflite").write_bytes(b"not this deployment's encoder")
  # Refused by the manifest's check (sha256), not by the LiteRT parser.
  with pytest.raises(deploy.ArtefactError, match="not the encoder this manifest"):
    deploy.load_encoder(model=str(copy / "other.tflite"))


def test_the_interpreter_runs_on_one_thread_by_default(run, monkeypatch):
  threads = []
  real = ai_edge_litert.interpreter.Interpreter

  def spy(*args, **kwargs):
    threads.append(kwargs.get("num_threads"))
    return real(*args, **kwargs)

  monkeypatch.setattr(ai_edge_litert.interpreter, "Interpreter", spy)
  enc = deploy.load_encoder(run[0])
  deploy.TFLiteEncoder.from_bytes(open(os.path.join(deploy.deploy_dir(run[0]),
                                                    deploy.ENCODER_FILE), "rb").read())
  deploy.load_encoder(run[0], num_threads=3)
  assert threads == [1, 1, 3] and enc.noisy


class _FakeInterpreter:
  """The two calls TFLiteEncoder makes before running: inputs and outputs by name."""

  def __init__(self, inputs):
    self.inputs = inputs

  def get_input_details(self):
    return [{"name": n, "index": i, "shape": np.array([1, 4])} for i, n in enumerate(self.inputs)]

  def get_output_details(self):
    return [{"name": "z", "index": 9, "shape": np.array([1, 3])}]


def test_an_encoder_takes_x_and_at_most_eps():
  enc = deploy.TFLiteEncoder(_FakeInterpreter(["x"]), "m", "sha", 1)
  assert enc.input_shape == (4,) and enc.feature_shape == (3,) and not enc.noisy
  for inputs in (["x", "mask"], ["y"], ["eps"]):
    first = repr(sorted(inputs)[0])
    with pytest.raises(deploy.ArtefactError,
                       match=r"m is not a ran_jax encoder: its inputs are \[" + first):
      deploy.TFLiteEncoder(_FakeInterpreter(inputs), "m", "sha", 1)


def test_what_encode_to_file_reports_and_writes(run, tmp_path):
  """One example (its bytes are its own, not a neighbour's), the feature shape without the
  batch axis, and the noise named by how it was drawn."""
  wd, _, x, _ = run
  enc = deploy.load_encoder(wd)
  out = str(tmp_path / "one.npz")
  summary = deploy.encode_to_file(enc, x[:1], ["first"], out, seed=1)
  assert summary == {"examples": 1, "feature_shape": [32], "bytes_per_example": 32 * 4,
                     "release_policy": "fresh", "out": out}
  assert str(deploy.read_features(out)["noise"]) == "seeded (reproducible, not private)"
  deploy.encode_to_file(enc, x[:1], ["first"], out)
  assert str(deploy.read_features(out)["noise"]) == "fresh OS entropy"


def test_load_inputs_known_answers(tmp_path):
  """RGB images resized to the encoder's H x W and scaled by 1/255; what is not an image
  encoder's input is refused by name; a .npy's error names the array as stored."""
  from PIL import Image

  Image.new("RGB", (10, 12), (51, 102, 153)).save(tmp_path / "rgb.png")  # 10 wide, 12 high
  x, names = deploy.load_inputs(str(tmp_path / "rgb.png"), (6, 5, 3))
  assert x.shape == (1, 6, 5, 3) and names == ["rgb.png"]
  np.testing.assert_allclose(x, np.broadcast_to([0.2, 0.4, 0.6], x.shape), atol=1e-6)
  for shape, value_range in (((128, 3), (0.0, 1.0)), ((4, 4, 3, 1), (0.0, 1.0)),
                             ((8, 8, 2), (0.0, 1.0)), ((8, 8, 1), (-1.0, 1.0))):
    with pytest.raises(deploy.ArtefactError, match="not images; pass a .npy batch"):
      deploy.load_inputs(str(tmp_path / "rgb.png"), shape, value_range)
  np.save(tmp_path / "grey.npy", np.zeros((2, 8, 8), np.float32))
  with pytest.raises(deploy.ArtefactError, match=r"array of shape \[2, 8, 8\]; the encoder "
                                                  r"takes \[N, 8, 8, 3\]"):
    deploy.load_inputs(str(tmp_path / "grey.npy"), (8, 8, 3))
