"""The encoder on the phone, the classifier on the server: export, load, run, measure.

A finished workdir (`WORKDIR/export/`, see `ran_jax.export`) is turned into what a
deployment ships, under `WORKDIR/deploy/`:

  encoder.tflite       the phone side: the encoder in eval mode (running batch-norm
                       statistics, bottleneck and tanh bound included) as a LiteRT
                       flatbuffer with TFLite built-in ops only (no Flex / select-TF ops),
                       batch size 1 (what a phone sends). Inputs `x` [1, H, W, C] and, when
                       the encoder releases noisy features, `eps` [1, *feature_shape]:
                       it computes z + feature_noise * eps, so the same eps can be fed to
                       JAX and LiteRT. The client chooses eps by its release policy.
  encoder_int8.tflite  (`--int8`) full-integer post-training quantization (int8 weights
                       and activations, float input and output), calibrated on training
                       examples.
  classifier.jaxexport the server side: the classifier as serialized StableHLO
                       (`jax.export`), any batch size, lowered for cpu, cuda and tpu;
                       loading it needs only `jax`, not this library's training code.
  deploy.json          the manifest: shapes, noise scale, versions (ran_jax, jax,
                       tensorflow), sha256 of every artefact (so a file of another model is
                       refused) and the checks run at export.

One module per side:

  artefacts  the files and the manifest both sides read
  convert    the networks -> .tflite / jax.export, and `export_deployment`
  client     the phone: LiteRT encoder, inputs, release noise and its policy for repeated
             inputs (`release_noise`), what it sends (`encode_to_file`)
  server     the exported classifier and the features files it receives
  measure    sizes, latency, accuracy and the int8 encoder under attack
  cli        the command line (`ran-deploy`, `python -m ran_jax.deploy`)

Everything public is importable from `ran_jax.deploy` itself; `ran_jax.deploy(workdir)`
is `deploy` (the export), `attack_deployment` the float-vs-int8 attack (`ran-deploy attack`).
"""

from ran_jax.deploy.artefacts import (BATCH, CLASSIFIER_FILE, DEPLOY_DIR, ENCODER_FILE,
                                      ENCODER_INT8_FILE, FORMAT, MANIFEST, ArtefactError,
                                      check_against_manifest, deploy_dir, read_manifest, sha256)
from ran_jax.deploy.client import (IMAGE_SUFFIXES, RELEASE_POLICIES, TFLiteEncoder,
                                   create_secret, default_secret_path, draw_eps, encode_to_file,
                                   input_digest, litert_available, load_encoder, load_inputs,
                                   read_secret, release_eps, release_noise)
from ran_jax.deploy.convert import (CLASSIFIER_PLATFORMS, EPS_RANGE, REPRESENTATIVE_EXAMPLES,
                                    VERIFY_EXAMPLES, builtin_ops, convert_encoder, encoder_fn,
                                    export_classifier, export_deployment, export_models,
                                    representative_inputs)
from ran_jax.deploy.measure import accuracy_report, attack_int8, measure, single_thread_cpu
from ran_jax.deploy.server import (ExportedClassifier, classify_file, load_classifier,
                                   read_features)

__all__ = [
    "attack_deployment", "deploy",
    "BATCH", "CLASSIFIER_FILE", "CLASSIFIER_PLATFORMS", "DEPLOY_DIR", "ENCODER_FILE",
    "ENCODER_INT8_FILE", "EPS_RANGE", "FORMAT", "IMAGE_SUFFIXES", "MANIFEST",
    "RELEASE_POLICIES", "REPRESENTATIVE_EXAMPLES", "VERIFY_EXAMPLES", "ArtefactError",
    "ExportedClassifier", "TFLiteEncoder", "accuracy_report", "attack_int8", "builtin_ops",
    "check_against_manifest", "classify_file", "convert_encoder", "create_secret",
    "default_secret_path", "deploy_dir", "draw_eps", "encode_to_file", "encoder_fn",
    "export_classifier", "export_deployment", "export_models", "input_digest",
    "litert_available", "load_classifier", "load_encoder", "load_inputs", "measure",
    "read_features", "read_manifest", "read_secret", "release_eps", "release_noise",
    "representative_inputs", "sha256", "single_thread_cpu",
]


def deploy(workdir: str, *, int8: bool = False) -> dict:
  """Writes WORKDIR/deploy/ from a finished run (`ran-deploy export`) and returns the manifest.

  Args:
    workdir: a finished training run (holds export/).
    int8: also write the full-integer encoder (encoder_int8.tflite).

  Returns:
    The manifest (deploy.json): shapes, noise scale, versions, sha256 of every artefact
    and the checks run at export.
  """
  from ran_jax import progress

  progress.ensure_logging()   # INFO lines on stderr, unless the caller configured logging
  return export_deployment(workdir, int8=int8)


def attack_deployment(workdir: str, **attack_options) -> dict:
  """`ran-deploy attack`: the float and int8 encoders under the same attackers
  (`ran_jax.deploy.cli.attack`; options as `ran_jax.attack` takes them)."""
  from ran_jax.deploy.cli import attack

  return attack(workdir, **attack_options)


from ran_jax import commands as _commands  # noqa: E402

_commands.callable_module(__name__)
