"""What buys a defended config's accuracy back, chosen on a validation split, never the test split.

  python -m bench levers --config=configs/har_lenet_private.py --workdir=runs/levers_har \\
      --variant='base:' --variant='cls256:config.model.classifier_hidden=(256,256)' \\
      [--train_seeds=0,1] [--val_fraction=0.2] [--noise_draws=5] \\
      [--config.data.manual_dir=/path/to/uci_har ...]

Each variant (`name:config.field=value,...`, the `ran-sweep --variant` spelling) is trained
twice per seed, on the first (1 - val_fraction) of the training split
(`ran_jax.search.split_sizes`, as `ran-search` holds out): once as the defended config with
the variant's overrides, once as its DNN (the same overrides plus
`ran_jax.search.reference_overrides`: lambda 1, no bottleneck, no release noise, every
defence off), so each variant is compared with a DNN of the same schedule and the same
classifier. Both are scored on the held-out rest of the training split: the deployed
classifier on the released features (`noise_draws` release-noise draws, averaged). The
test split is neither read nor reported: a lever chosen here is then measured on it with
`python -m bench robustness` (3 trainings) against the DNN of the same schedule.

Writes WORKDIR/levers.json and WORKDIR/levers.md (rewritten after every training);
rerunning the same command reuses every finished training.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def parse_args(argv):
  p = argparse.ArgumentParser(prog="python -m bench levers", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="a config, e.g. configs/har_lenet_private.py")
  p.add_argument("--workdir", required=True, help="output directory")
  p.add_argument("--variant", action="append", default=[],
                 help="name:config.field=value,... (repeatable; 'base:' for no overrides)")
  p.add_argument("--train_seeds", default="0,1", help="comma-separated training seeds")
  p.add_argument("--val_fraction", type=float, default=0.2,
                 help="held-out fraction of the training split")
  p.add_argument("--noise_draws", type=int, default=5, help="release-noise draws per score")
  args, rest = p.parse_known_args(argv)
  from ran_jax import sweep

  args.overrides = {}
  for item in rest:   # parsed as a variant's overrides are (the same literal rules)
    if not item.startswith("--config.") or "=" not in item:
      p.error(f"unknown argument {item!r} (config overrides are --config.section.field=value)")
    args.overrides.update(sweep.parse_variant(f"cli:{item[2:]}")[1])
  if not args.variant:
    p.error("give at least one --variant (e.g. --variant='base:')")
  args.seeds = [int(s) for s in args.train_seeds.split(",") if s.strip()]
  if not 0 < args.val_fraction < 1:
    p.error(f"--val_fraction={args.val_fraction}: a fraction in (0, 1)")
  if args.noise_draws < 1:
    p.error("--noise_draws must be >= 1")
  return args


def _variants(texts):
  from ran_jax import sweep

  out = []
  for text in texts:
    name, _, body = text.partition(":")
    out.append((name, sweep.parse_variant(text)[1] if body.strip() else {}))
  if len({n for n, _ in out}) != len(out):
    raise SystemExit("error: two variants share a name")
  return out


def val_accuracy(workdir: str, x, y, draws: int) -> float:
  """The deployed classifier on releases of the held-out rows, averaged over noise draws."""
  from ran_jax import export
  from ran_jax.privacy import erasure

  trained = export.load_trained(workdir)
  n = draws if trained.feature_noise else 1
  return statistics.fmean(erasure.accuracy(trained, x, y, seed=s) for s in range(n))


def _spread(values) -> dict:
  return {"min": min(values), "max": max(values), "mean": statistics.fmean(values),
          "n": len(values)}


def write_report(workdir: str, report: dict) -> None:
  with open(os.path.join(workdir, "levers.json"), "w") as f:
    json.dump(report, f, indent=2)
  lines = [f"# Accuracy levers on the validation split: {report['config']}", "",
           f"Trained on the first {report['n_fit']} training examples, scored on the next "
           f"{report['n_val']} (held out of the training split; the test split is not read). "
           f"Seeds {report['seeds']}; release noise averaged over {report['noise_draws']} draws. "
           "Each variant's DNN has the same overrides and every defence off.", "",
           "| variant | overrides | defended val. acc. (mean, min-max) | DNN val. acc. "
           "(mean, min-max) | gap (points, mean) |", "|---|---|---|---|---|"]
  for name, row in report["variants"].items():
    d, r = row.get("defended"), row.get("dnn")
    if not d or not r:
      continue
    lines.append(f"| {name} | `{row['overrides']}` | {d['mean']:.4f} ({d['min']:.4f}-"
                 f"{d['max']:.4f}) | {r['mean']:.4f} ({r['min']:.4f}-{r['max']:.4f}) | "
                 f"{100 * (r['mean'] - d['mean']):.2f} |")
  with open(os.path.join(workdir, "levers.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  import numpy as np

  from ran_jax import configs, input_pipeline, search, sweep, trainer

  base = sweep.apply_overrides(configs.get_config(args.config), args.overrides)
  variants = _variants(args.variant)
  source = input_pipeline.load_dataset(base.data)
  n_fit, n_val = search.split_sizes(base, len(source.train), args.val_fraction)
  held = source.train.get(np.arange(n_fit, n_fit + n_val))
  x, y = held["image"], held["label"]
  fit_base = sweep.apply_overrides(base, {"data.train_limit": n_fit})
  ref = search.reference_overrides(base)
  os.makedirs(args.workdir, exist_ok=True)
  report = {"config": args.config, "overrides": args.overrides, "seeds": args.seeds,
            "val_fraction": args.val_fraction, "n_fit": n_fit, "n_val": n_val,
            "noise_draws": args.noise_draws, "reference_overrides": ref, "variants": {}}
  trained = {}   # config JSON -> workdir: a config met twice (e.g. the same DNN) trains once
  for name, over in variants:
    row = report["variants"].setdefault(name, {"overrides": over, "runs": {}})
    for kind, extra in (("defended", {}), ("dnn", ref)):
      accs = []
      for seed in args.seeds:
        cfg = sweep.apply_overrides(fit_base, {**over, **extra, "seed": seed})
        workdir = trained.setdefault(cfg.to_json_best_effort(sort_keys=True),
                                     os.path.join(args.workdir, f"{name}_{kind}_seed{seed}"))
        t0 = time.perf_counter()
        sweep.train_point(cfg, {}, workdir, trainer.train_and_evaluate)
        acc = val_accuracy(workdir, x, y, args.noise_draws)
        row["runs"][f"{kind}_seed{seed}"] = {"val_accuracy": acc,
                                             "seconds": round(time.perf_counter() - t0, 1)}
        accs.append(acc)
        print(f"{name} {kind} seed {seed}: validation accuracy {acc:.4f}", flush=True)
      row[kind] = _spread(accs)
      write_report(args.workdir, report)
  print(open(os.path.join(args.workdir, "levers.md")).read())
  return 0


if __name__ == "__main__":
  sys.exit(main())
