"""Erases a sensitive attribute from a finished run's features: a fixed linear map (LEACE).

  ran-erase --workdir=runs/har_private [--attribute=subject] [--eraser_fraction=0.2]
            [--nowithin_class] [--classifier_epochs=5]       (python -m ran_jax.erase ...)
  ran-erase --workdir=runs/har_private --remove               (back to the trained encoder)
  In Python: report = ran_jax.erase(workdir="runs/har_private")

Fits the eraser (`ran_jax.privacy.erasure`) in closed form on the clean features of the
eraser part of the attribute split (`ran_jax.privacy.identity`, `eraser_fraction`: HAR
the earliest windows of each (subject, activity), FSDD recordings 10-19, other data a
seeded part of each value's training examples), class-conditional by default (it keeps
what the task label says about the person). It is folded into the encoder, before the
release noise; the server's classifier is refit on the erased releases of the training
split (encoder frozen, a fixed number of Adam epochs). Writes WORKDIR/export/eraser.npz
(the map and the refit classifier; every later `load_trained`, `ran-attack` and
`ran-deploy` uses them) and the report WORKDIR/export/eraser.json, and exports
WORKDIR/deploy/ again if the run has one. Training the run to its end again removes it.

The report's task accuracies are on the test split without any example the eraser was
fitted on (on HAR the test subjects' earliest windows are in the eraser part), before and
after, one noise draw (`--eraser_seed`): the trained classifier, the same classifier
refit for the same epochs without the eraser (what the extra training alone gives), the
trained classifier on erased releases, and the classifier refit on them (what is deployed).
`ran-attack` then holds the eraser part out of every attribute attacker's data.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Optional

import numpy as np

log = logging.getLogger("ran_jax")


def erase(workdir: str, *, attribute: Optional[str] = None, within_class: bool = True,
          eraser_fraction: float = 0.2, eraser_seed: int = 0, classifier_epochs: int = 5,
          learning_rate: float = 1e-3, remove: bool = False, deploy: bool = True) -> dict:
  """Fits an attribute eraser for the finished run in `workdir` and writes it into its export.

  Args:
    workdir: a finished training run (holds export/).
    attribute: the attribute to erase (None: the run's data.attribute).
    within_class: class-conditional erasure (the within-class covariances), which keeps the
      covariance of the task classes with the attribute; False: plain LEACE.
    eraser_fraction: the share of the data reserved to fit the eraser
      (`IdentityConfig.eraser_fraction`; attackers never see it).
    eraser_seed: the stratified rule's eraser part, the refit's shuffling and release noise,
      and the noise of the reported accuracies.
    classifier_epochs: Adam epochs of the server classifier's refit on erased releases.
    learning_rate: of that refit.
    remove: delete the run's eraser instead (the trained encoder and classifier return).
    deploy: export WORKDIR/deploy/ again when the run has one, so the phone's encoder and
      the server's classifier include the change.

  Returns:
    The report written to WORKDIR/export/eraser.json: 'attribute', 'within_class', 'rank',
    'split' (rule, fraction, examples), 'residual_cross_covariance', 'accuracy' ({'before',
    'refit_without_eraser', 'erased_trained_classifier', 'after'}, 'test_examples'),
    'classifier_refit', 'deployed'. With `remove`: {'removed': bool, 'deployed'}.

  Raises:
    FileNotFoundError, ran_jax.checkpointing.CheckpointError: no finished run in workdir.
    ran_jax.data.source.DataError: the dataset or its attribute cannot be loaded.
    ValueError: a bad argument.
  """
  import dataclasses as _dc

  from ran_jax import export, input_pipeline, progress, storage
  from ran_jax.privacy import erasure, identity

  progress.ensure_logging()   # INFO lines on stderr, unless the caller configured logging

  if remove:
    removed = export.remove_eraser(workdir)
    return {"removed": removed, "deployed": _redeploy(workdir) if deploy and removed else None}
  if not 0.0 < eraser_fraction < 1.0:
    raise ValueError(f"eraser_fraction={eraser_fraction}: a fraction in (0, 1) expected.")
  if classifier_epochs < 0:
    raise ValueError(f"classifier_epochs={classifier_epochs}: >= 0 expected.")
  trained = export.load_trained(workdir, eraser=False)
  attribute = (attribute if attribute is not None
               else trained.config.data.get("attribute", "")) or ""
  if not attribute:
    raise ValueError("No attribute to erase: pass --attribute (e.g. subject, speaker) or train "
                     "with data.attribute.")
  data_config = trained.config.data
  data_config.attribute = attribute
  source = input_pipeline.load_dataset(data_config)
  icfg = identity.IdentityConfig(eraser_fraction=float(eraser_fraction),
                                 eraser_seed=int(eraser_seed))
  pool = identity.split_pool(source, icfg)
  split = {"rule": pool.rule, "eraser_fraction": float(eraser_fraction),
           "eraser_seed": int(eraser_seed), "time_gap": int(icfg.time_gap),
           "val_recordings": int(icfg.val_recordings)}
  er = pool.eraser
  log.info("erase: fitting on %d examples (%s split, fraction %g)", len(er), pool.rule,
           eraser_fraction)
  z_fit = erasure.clean_features(trained, pool.x[er], eraser=None)
  eraser = erasure.fit_eraser(
      z_fit, pool.attribute[er], pool.label[er], num_values=pool.num_attributes,
      within_class=within_class,
      fitted_on={"attribute": attribute, "step": trained.meta.get("step"), **split})
  residual = erasure.residual_cross_covariance(eraser, z_fit, pool.attribute[er],
                                               pool.label[er] if within_class else None)
  held_out = np.zeros(len(pool.x), bool)
  held_out[er] = True
  train = np.flatnonzero(pool.split == 0)
  test = np.flatnonzero((pool.split == 1) & ~held_out)
  x_tr, y_tr, x_te, y_te = pool.x[train], pool.label[train], pool.x[test], pool.label[test]
  refit = {"epochs": int(classifier_epochs), "learning_rate": float(learning_rate),
           "optimizer": "adam", "examples": int(len(train)), "seed": int(eraser_seed),
           "data": "the training split's releases (fresh noise per batch)"}
  fit_kw = dict(epochs=classifier_epochs, learning_rate=learning_rate, seed=eraser_seed)
  acc_kw = dict(seed=eraser_seed)
  acc = {"before": erasure.accuracy(trained, x_te, y_te, eraser=None, **acc_kw)}
  plain = erasure.refit_classifier(trained, x_tr, y_tr, eraser=None, **fit_kw)
  acc["refit_without_eraser"] = erasure.accuracy(trained, x_te, y_te, eraser=None,
                                                 classifier_params=plain, **acc_kw)
  acc["erased_trained_classifier"] = erasure.accuracy(trained, x_te, y_te, eraser=eraser,
                                                      **acc_kw)
  params = erasure.refit_classifier(trained, x_tr, y_tr, eraser=eraser, **fit_kw)
  acc["after"] = erasure.accuracy(trained, x_te, y_te, eraser=eraser, classifier_params=params,
                                  **acc_kw)
  eraser = _dc.replace(eraser, fitted_on={**eraser.fitted_on, "classifier_refit": refit})
  export_dir = export.eraser_path(workdir).parent
  erasure.save_eraser(export_dir / erasure.ERASER_FILE, eraser, params)
  report = {
      "attribute": attribute, "within_class": bool(within_class), "rank": int(eraser.rank),
      "feature_dim": int(eraser.dim), "step": trained.meta.get("step"),
      "split": {**split, "eraser_examples": int(len(er)),
                "eraser_test_split_examples": int(np.sum(pool.split[er] == 1))},
      "residual_cross_covariance": residual,
      "accuracy": {**acc, "test_examples": int(len(test)),
                   "test_examples_held_out": int(np.sum((pool.split == 1) & held_out))},
      "classifier_refit": refit,
  }
  report["deployed"] = _redeploy(workdir) if deploy else None
  storage.write_text(export_dir / erasure.ERASER_REPORT, json.dumps(report, indent=2))
  return report


def _redeploy(workdir: str):
  """Exports WORKDIR/deploy/ again if it exists (with its int8 encoder if it had one)."""
  from ran_jax import storage
  from ran_jax.deploy import artefacts

  out = artefacts.deploy_dir(workdir)
  manifest_path = os.path.join(out, artefacts.MANIFEST)
  if not storage.exists(manifest_path):
    return None
  from ran_jax.deploy import convert

  int8 = "encoder_int8" in json.loads(storage.read_text(manifest_path))
  convert.export_deployment(workdir, int8=int8)
  return {"dir": out, "int8": int8}


def format_report(r: dict) -> str:
  """The report as the command prints it."""
  if "removed" in r:
    return "removed the eraser" if r["removed"] else "the run has no eraser"
  a, s = r["accuracy"], r["split"]
  return "\n".join([
      f"erased {r['attribute']} ({'within class' if r['within_class'] else 'plain LEACE'}): "
      f"rank {r['rank']} of {r['feature_dim']}, fitted on {s['eraser_examples']} examples "
      f"({s['rule']} split, fraction {s['eraser_fraction']:g}); residual cross-covariance "
      f"{r['residual_cross_covariance']:.2e}",
      f"task accuracy on {a['test_examples']} test examples (not fitted on): before "
      f"{a['before']:.4f}, refit without eraser {a['refit_without_eraser']:.4f}, erased with "
      f"the trained classifier {a['erased_trained_classifier']:.4f}, after (refit, deployed) "
      f"{a['after']:.4f}",
  ] + ([f"exported {r['deployed']['dir']} again"] if r.get("deployed") else []))


# ---------------------------------------------------------------- CLI


def define_flags():
  """The command's flags (defined when it runs, so importing this module defines none)."""
  from absl import flags

  flags.DEFINE_string("workdir", None, "A finished training run (holds export/); the eraser "
                      "goes to WORKDIR/export/eraser.npz, its report to eraser.json.")
  flags.DEFINE_string("attribute", None, "Sensitive attribute to erase (e.g. subject, speaker); "
                      "default: the config's data.attribute.")
  flags.DEFINE_bool("within_class", True, "Class-conditional erasure (within-class "
                    "covariances: keeps what the task label says about the attribute); "
                    "--nowithin_class: plain LEACE.")
  flags.DEFINE_float("eraser_fraction", 0.2, "Share of the attribute split reserved to fit the "
                     "eraser; attribute attackers never see it.")
  flags.DEFINE_integer("eraser_seed", 0, "Seed of the eraser part (stratified split), the "
                       "classifier refit and the reported accuracies' release noise.")
  flags.DEFINE_integer("classifier_epochs", 5, "Adam epochs of the server classifier's refit "
                       "on the erased releases of the training split.")
  flags.DEFINE_float("learning_rate", 1e-3, "Learning rate of that refit.")
  flags.DEFINE_bool("remove", False, "Delete the run's eraser instead.")
  flags.DEFINE_bool("deploy", True, "Export WORKDIR/deploy/ again when the run has one.")
  flags.mark_flag_as_required("workdir")


def main(argv):
  del argv
  from absl import flags

  from ran_jax import config_lib
  from ran_jax.checkpointing import CheckpointError
  from ran_jax.data.source import DataError

  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  f = flags.FLAGS
  try:
    report = erase(f.workdir, attribute=f.attribute, within_class=f.within_class,
                   eraser_fraction=f.eraser_fraction, eraser_seed=f.eraser_seed,
                   classifier_epochs=f.classifier_epochs, learning_rate=f.learning_rate,
                   remove=f.remove, deploy=f.deploy)
  except (FileNotFoundError, CheckpointError, DataError, ValueError) as e:
    config_lib.exit_with_error(str(e))
  print(format_report(report))


def run():
  """The command (`ran-erase`, `python -m ran_jax.erase`)."""
  from ran_jax import commands

  define_flags()
  commands.run_app(main, __doc__)


if __name__ == "__main__":
  run()
else:
  from ran_jax import commands as _commands

  _commands.callable_module(__name__)
