"""Deploys a finished training run: the phone's encoder, the server's classifier.

  ran-deploy export   --workdir=DIR [--int8]        (or python -m ran_jax.deploy export ...)
  ran-deploy sample   --workdir=DIR --out=x.npy [--n=32] [--png_dir=DIR]
  ran-deploy encode   --workdir=DIR [--int8] | --model=enc.tflite
                      --inputs=x.npy|img.png,...|DIR --out=features.npz
                      [--release_policy=fresh|per_input [--release_secret=PATH]]
  ran-deploy secret   [--release_secret=PATH]     (once per device, for per_input)
  ran-deploy classify --workdir=DIR | --classifier=FILE --features=features.npz
                      [--labels=y.npy]
  ran-deploy measure  --workdir=DIR [--out=measure.json]   (sizes, latency)
  ran-deploy attack   --workdir=DIR [--preset=strong] [--attackers=...] [--out=attack.json]
  In Python: ran_jax.deploy(workdir="runs/digits", int8=True)   # = export

`attack` is `ran-attack` on the deployed encoders: the same attackers (the same flags:
--preset, --attackers, --attack_max_epochs, --attacker_seed, ...) trained on the float
(JAX) encoder's releases and on the int8 .tflite encoder's; it prints ran-attack's table
for each and writes both reports to WORKDIR/deploy/attack.json (or --out).

`export` writes WORKDIR/deploy/: encoder.tflite (phone, LiteRT built-in ops, batch 1),
encoder_int8.tflite (--int8), classifier.jaxexport (server, jax.export) and deploy.json.
`encode` is the phone: it writes what it sends. A noisy encoder's release noise follows
--release_policy: 'fresh' (default) draws new noise per request (`--noise_seed` makes it
reproducible, for tests), so repeated sends of
one input can be averaged towards the clean features; 'per_input' derives it from a
device secret and the input, so an identical input always yields the identical release
(the documentation's how-to page 'Deploy the encoder' says what each protects).
`classify` is the server.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Optional

import numpy as np

from ran_jax.deploy.artefacts import ArtefactError, deploy_dir, existing, read_manifest
from ran_jax.deploy.client import (RELEASE_POLICIES, create_secret, default_secret_path,
                                   encode_to_file, load_encoder, load_inputs, read_secret)
from ran_jax.deploy.server import classify_file, load_classifier

COMMANDS = ("export", "sample", "encode", "secret", "classify", "measure", "attack")


def define_flags():
  from absl import flags

  flags.DEFINE_string("workdir", None, "A finished training run (holds export/, gets deploy/).")
  flags.DEFINE_string("model", None, "encode: a .tflite encoder instead of the workdir's.")
  flags.DEFINE_string("classifier", None, "classify: a classifier file instead of the workdir's.")
  flags.DEFINE_bool("int8", False, "export: also the int8 encoder; encode: use it.")
  flags.DEFINE_string("inputs", None, "encode: a .npy batch, image files (comma-separated) or "
                      "a directory of images.")
  flags.DEFINE_enum("release_policy", "fresh", list(RELEASE_POLICIES),
                    "encode: the release noise of a noisy encoder. fresh: new noise from OS "
                    "entropy per request (N sends of one input average towards the clean "
                    "features); per_input: noise derived from the device secret and the "
                    "input's bytes (an identical input yields the identical release).")
  flags.DEFINE_string("release_secret", None, "encode --release_policy=per_input, secret: the "
                      f"device secret file (default {default_secret_path()}).")
  flags.DEFINE_string("features", None, "classify: a features.npz written by encode.")
  flags.DEFINE_string("labels", None, "classify: a .npy of labels to report accuracy.")
  flags.DEFINE_string("out", None, "Output file (encode: features.npz; sample: x.npy; "
                      "classify: predictions .npz; measure: JSON; attack: JSON, default "
                      "WORKDIR/deploy/attack.json).")
  flags.DEFINE_integer("noise_seed", None, "encode --release_policy=fresh: seed of the release "
                       "noise (reproducible runs only; default fresh OS entropy).")
  flags.DEFINE_integer("n", 32, "sample: examples to write.")
  flags.DEFINE_integer("examples", 200, "measure: test examples timed per round.")
  flags.DEFINE_string("split", "test", "sample: split to take the examples from.")
  flags.DEFINE_string("png_dir", None, "sample: also write the examples as PNG files here.")
  flags.DEFINE_integer("num_threads", 1, "LiteRT interpreter threads.")
  from ran_jax import commands

  commands.define_attack_flags()   # attack: the attackers, as ran-attack
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


def _encode(flags) -> dict:
  if not flags.inputs:
    raise _Usage("encode: --inputs is required.")
  secret = None
  if flags.release_policy == "per_input":
    if flags.noise_seed is not None:
      raise _Usage("encode: --noise_seed is for --release_policy=fresh (reproducible tests); "
                   "per_input derives the noise from the device secret.")
    secret = read_secret(flags.release_secret)   # before any model loads: fails fast
  enc = load_encoder(flags.workdir, flags.model, flags.int8, flags.num_threads)
  vr = (0.0, 1.0)
  if flags.workdir:
    vr = tuple(read_manifest(deploy_dir(flags.workdir))["value_range"])
  x, names = load_inputs(flags.inputs, enc.input_shape, vr)
  return encode_to_file(enc, x, names, flags.out or "features.npz", flags.noise_seed,
                        flags.release_policy, secret)


def _classify(flags) -> dict:
  if not flags.features:
    raise _Usage("classify: --features is required.")
  cls = load_classifier(flags.workdir, flags.classifier)
  manifest = read_manifest(deploy_dir(flags.workdir)) if flags.workdir else None
  logits, pred, data = classify_file(cls, flags.features, manifest)
  result = {"examples": len(pred), "predictions": " ".join(map(str, pred.tolist()))}
  if flags.labels:
    y = np.load(existing(flags.labels))
    if len(y) != len(pred):
      raise ArtefactError(f"{flags.labels} has {len(y)} labels for {len(pred)} features.")
    result["accuracy"] = float(np.mean(pred == y))
  if flags.out:
    np.savez(flags.out, logits=logits, predictions=pred, names=data.get("names", []))
    result["out"] = flags.out
  return result


def attack(workdir: str, *, out: Optional[str] = None, **attack_options) -> dict:
  """The attack on the deployed encoders: {'float': report, 'int8': report}.

  The same attackers as `ran_jax.attack` (`attack_options`: preset, attackers,
  attack_max_epochs, attacker_seed, ...) trained on the releases of the float (JAX)
  encoder and of the int8 .tflite one (`ran_jax.deploy.measure.attack_int8`); both
  reports are written to `out` (default WORKDIR/deploy/attack.json).
  """
  from ran_jax import attack as attack_lib
  from ran_jax.deploy.measure import attack_int8

  attack_options.pop("progress", None)
  cfg = attack_lib.attack_config(**attack_options)
  res = attack_int8(workdir, cfg)
  skipped = attack_lib.skipped_attackers(cfg)
  for r in res.values():
    r.update(preset=attack_options.get("preset", "light"), skipped_attackers=skipped)
  out = out or os.path.join(deploy_dir(workdir), "attack.json")
  with open(out, "w", encoding="utf-8") as f:
    json.dump(res, f, indent=2, default=float)
  return res


class _Usage(Exception):
  """A missing or conflicting argument (exit 2, like a bad flag)."""


def main(argv):
  from absl import flags as absl_flags

  from ran_jax.config_lib import exit_with_error

  flags = absl_flags.FLAGS
  if len(argv) != 2 or argv[1] not in COMMANDS:
    exit_with_error(f"usage: ran-deploy {{{'|'.join(COMMANDS)}}} --workdir=DIR [...] "
                    "(python -m ran_jax.deploy ...); see --help.")
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
      from ran_jax.deploy.convert import export_deployment

      result = export_deployment(flags.workdir, int8=flags.int8)
    elif cmd == "sample":
      result = _sample(flags.workdir, flags.split, flags.n, flags.out or "x.npy", flags.png_dir)
    elif cmd == "encode":
      result = _encode(flags)
    elif cmd == "secret":
      result = {"created": create_secret(flags.release_secret)}
    elif cmd == "classify":
      result = _classify(flags)
    elif cmd == "measure":
      from ran_jax.deploy.measure import accuracy_report, measure

      result = {"measure": measure(flags.workdir, examples=flags.examples),
                "accuracy": accuracy_report(flags.workdir)}
    else:
      from ran_jax import commands

      result = attack(flags.workdir, out=flags.out,
                      **commands.attack_options_from_flags(identity=False))
  except (ArtefactError, FileNotFoundError, ValueError, _Usage) as e:
    exit_with_error(str(e))
  if cmd == "attack":
    from ran_jax.attack import format_table

    for name, r in result.items():
      print(format_table(dict(r, name=f"{name} encoder")))
    print(f"wrote {flags.out or os.path.join(deploy_dir(flags.workdir), 'attack.json')}")
    return
  text = json.dumps(result, indent=2, default=float)
  if cmd == "measure" and flags.out:
    with open(flags.out, "w", encoding="utf-8") as f:
      f.write(text)
  print(text)


def run(argv: Optional[list] = None):
  """The command (`ran-deploy`, `python -m ran_jax.deploy`)."""
  from ran_jax import commands
  from ran_jax.deploy.measure import single_thread_cpu

  argv = list(sys.argv if argv is None else argv)
  define_flags()
  if len(argv) > 1 and argv[1] == "measure":
    single_thread_cpu()   # before JAX starts
  commands.run_app(main, __doc__, argv, renamed=commands.RENAMED["deploy"])
