"""Robustness of a config's result: the same training over seeds and numeric paths.

  python -m bench robustness --config=configs/digits_lenet.py --workdir=runs/robust_digits \\
      [--train_seeds=0,1,2,3,4] [--conv_impls=fast,xla] [--attack --attackers=ridge,mlp_decoder] \\
      [--config.ran.lam=0.5 --config.num_epochs=10 ...]

Trains `train.py --config=CONFIG` once per (seed, conv_impl): the seeds (`--config.seed`
of each training) change the initialisation, the shuffling and the noise;
`model.conv_impl='fast'` and `'xla'` compute the same convolutions with other float
rounding, as another machine would. `--config.<field>=VALUE` overrides apply to every
run, as in `ran-train`. For each run it reads the final test accuracy
(`final_metrics.json`) and the best per-epoch test accuracy (`metrics.jsonl`, only to
show how far the end is from the best epoch: nothing is chosen by it). With `--attack`
each frozen encoder is also attacked (`python -m ran_jax.attack`, attackers trained after
freezing) and the worst-case reconstruction error is collected.

Writes WORKDIR/robustness.json (every run and the min / median / max of each figure) and
WORKDIR/robustness.md, rewritten after every run. Rerunning the same command reuses
finished runs (a run's workdir resumes from its checkpoint), so an interrupted study
continues. Older spellings (--out, --seeds, --set=FIELD=VALUE) still work for one
release, with a note naming the new one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONV_IMPLS = ("fast", "xla", "auto")


def _note(old: str, new: str) -> None:
  print(f"note: {old} is deprecated and will be removed in the next release; use {new}",
        file=sys.stderr)


def parse_args(argv):
  p = argparse.ArgumentParser(prog="python -m bench robustness", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="a config file, e.g. configs/digits_lenet.py")
  p.add_argument("--workdir", help="output directory (one training workdir per run inside)")
  p.add_argument("--train_seeds", default=None,
                 help="comma-separated training seeds (--config.seed of each run); "
                      "default 0,1,2,3,4")
  p.add_argument("--conv_impls", default="fast,xla", help=f"comma-separated, from {CONV_IMPLS}")
  p.add_argument("--attack", action="store_true", help="attack every frozen encoder too")
  p.add_argument("--attackers", default="", help="--attackers of ran_jax.attack (default: its)")
  p.add_argument("--attack_flags", default="",
                 help="more flags for ran_jax.attack, space-separated (e.g. --preset=strong)")
  p.add_argument("--timeout", type=float, default=7200, help="seconds per training or attack")
  # Older spellings, one more release.
  p.add_argument("--out", help=argparse.SUPPRESS)
  p.add_argument("--seeds", help=argparse.SUPPRESS)
  p.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
  p.epilog = "--config.<field>=VALUE: a config override for every run (repeatable)."
  args, rest = p.parse_known_args(argv)
  args.overrides = []
  for a in rest:
    field, eq, _ = a[len("--config."):].partition("=")
    if not a.startswith("--config.") or not eq or not field:
      p.error(f"unrecognized argument {a!r} (config overrides: --config.<field>=VALUE)")
    args.overrides.append(a[len("--config."):])
  for s in args.set:
    if "=" not in s or s.startswith("="):
      p.error(f"--set={s!r}: expected FIELD=VALUE, e.g. ran.lam=0.5")
    _note(f"--set={s}", f"--config.{s}")
    args.overrides.append(s)
  if args.out is not None:
    _note("--out", "--workdir")
    args.workdir = args.workdir or args.out
  if not args.workdir:
    p.error("--workdir is required")
  if args.seeds is not None:
    _note("--seeds", "--train_seeds")
    args.train_seeds = args.train_seeds or args.seeds
  seeds = args.train_seeds or "0,1,2,3,4"
  try:
    args.train_seeds = [int(s) for s in seeds.split(",") if s.strip()]
  except ValueError:
    p.error(f"--train_seeds={seeds!r}: comma-separated integers, e.g. 0,1,2")
  if not args.train_seeds or any(s < 0 for s in args.train_seeds):
    p.error("--train_seeds: at least one integer >= 0")
  args.conv_impls = [c.strip() for c in args.conv_impls.split(",") if c.strip()]
  bad = [c for c in args.conv_impls if c not in CONV_IMPLS]
  if bad or not args.conv_impls:
    p.error(f"--conv_impls={','.join(bad) or '(empty)'}: allowed values are {list(CONV_IMPLS)}")
  if not os.path.exists(args.config.split(":")[0]):
    p.error(f"--config={args.config!r}: no such file")
  return args


def _run(cmd, log_path, timeout):
  env = dict(os.environ)
  env.setdefault("PYTHONPATH", ROOT)
  with open(log_path, "a") as log:
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    r = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                       timeout=timeout)
  if r.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd[:4])} ... failed with exit code {r.returncode}; see "
                       f"{log_path}")


def read_test_accuracies(workdir) -> list[float]:
  """Per-epoch test accuracies in step order (the last record of each step wins)."""
  by_step = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      rec = json.loads(line)
      if rec.get("kind") == "test":
        by_step[rec["step"]] = rec["accuracy"]
  return [by_step[s] for s in sorted(by_step)]


def one_run(args, seed, impl) -> dict:
  name = f"seed{seed}_{impl}"
  workdir = os.path.join(args.workdir, name)
  log_path = os.path.join(args.workdir, f"{name}.log")
  os.makedirs(args.workdir, exist_ok=True)
  rec = {"run": name, "seed": seed, "conv_impl": impl}
  final_path = os.path.join(workdir, "final_metrics.json")
  t0 = time.perf_counter()
  if not os.path.exists(final_path):
    cmd = [sys.executable, "train.py", f"--config={args.config}", f"--workdir={workdir}",
           f"--config.seed={seed}", f"--config.model.conv_impl={impl}"]
    cmd += [f"--config.{s}" for s in args.overrides]
    _run(cmd, log_path, args.timeout)
    rec["train_seconds"] = round(time.perf_counter() - t0, 1)
  with open(final_path) as f:
    final = json.load(f)
  accs = read_test_accuracies(workdir)
  rec.update(final_accuracy=final["accuracy"], best_epoch_accuracy=max(accs),
             end_minus_best=final["accuracy"] - max(accs), epochs=len(accs))
  if args.attack:
    result_path = os.path.join(workdir, "eval", "result.json")
    if not os.path.exists(result_path):
      cmd = [sys.executable, "-m", "ran_jax.attack", f"--workdir={workdir}"]
      if args.attackers:
        cmd.append(f"--attackers={args.attackers}")
      cmd += args.attack_flags.split()
      _run(cmd, log_path, args.timeout)
    with open(result_path) as f:
      res = json.load(f)
    rec.update(attack_figures(res))
  return rec


def attack_figures(res: dict) -> dict:
  """The worst cases of one `ran_jax.attack` result.json: reconstruction (one release and,
  for a noisy release, the clean-feature limit with attackers trained on clean features)
  and identity (one release, N releases of a person, the clean features, the label-only
  floor), for whichever of them the attack ran."""
  out = {}
  if "worst" in res:
    out.update(worst_attacker=res["worst"]["attacker"], worst_mse_sum=res["worst"]["mse_sum"],
               attack_accuracy=res.get("accuracy"))
    clean = (res.get("releases") or {}).get("clean")
    if clean:
      out["worst_clean_mse_sum"] = clean["worst"]["mse_sum"]
  settings = (res.get("identity") or {}).get("settings", {})
  if "single" in settings:
    out["identity_single"] = settings["single"]["worst"]["top1"]
    if settings["single"].get("person"):
      out["identity_person"] = settings["single"]["person"]["top1"]
  if "clean" in settings:
    out["identity_clean"] = settings["clean"]["worst"]["top1"]
  floor = (res.get("identity") or {}).get("label_only")
  if floor:
    out["identity_label_only"] = floor["worst"]["top1"]
  return out


def spread(values) -> dict:
  values = [float(v) for v in values]
  return {"min": min(values), "median": statistics.median(values), "max": max(values),
          "mean": statistics.fmean(values), "range": max(values) - min(values), "n": len(values)}


ATTACK_FIGURES = ("worst_mse_sum", "worst_clean_mse_sum", "identity_single", "identity_person",
                  "identity_clean", "identity_label_only")


def summarize(runs) -> dict:
  out = {k: spread([r[k] for r in runs])
         for k in ("final_accuracy", "best_epoch_accuracy", "end_minus_best") if runs}
  for k in ATTACK_FIGURES:
    if runs and all(k in r for r in runs):
      out[k] = spread([r[k] for r in runs])
  return out


def write_report(args, runs, summary):
  shown = [k for k in ATTACK_FIGURES if any(k in r for r in runs)]
  report = {"config": args.config, "overrides": args.overrides, "seeds": args.train_seeds,
            "conv_impls": args.conv_impls, "runs": runs, "summary": summary}
  with open(os.path.join(args.workdir, "robustness.json"), "w") as f:
    json.dump(report, f, indent=2)
  lines = [f"# Robustness of `{args.config}`", "",
           f"Overrides: {' '.join(args.overrides) or 'none'}; seeds {args.train_seeds}; conv paths "
           f"{args.conv_impls}. Final = the accuracy the run ends with (what is exported); best "
           "epoch = the highest per-epoch test accuracy, shown only to measure the end's "
           "distance from it (nothing is chosen by it).", "",
           "| run | final accuracy | best epoch | end - best |"
           + "".join(f" {k} |" for k in shown), "|---|---|---|---|" + "---|" * len(shown)]
  for r in runs:
    row = (f"| {r['run']} | {r['final_accuracy']:.4f} | {r['best_epoch_accuracy']:.4f} | "
           f"{r['end_minus_best']:+.4f} |")
    row += "".join(f" {r[k]:.4g} |" if k in r else " - |" for k in shown)
    lines.append(row)
  lines += ["", "| figure | min | median | max | mean | range |", "|---|---|---|---|---|---|"]
  for k, s in summary.items():
    lines.append(f"| {k} | {s['min']:.4g} | {s['median']:.4g} | {s['max']:.4g} | "
                 f"{s['mean']:.4g} | {s['range']:.4g} |")
  with open(os.path.join(args.workdir, "robustness.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  os.makedirs(args.workdir, exist_ok=True)
  runs, failed = [], []
  for seed in args.train_seeds:
    for impl in args.conv_impls:
      try:
        runs.append(one_run(args, seed, impl))
      except (RuntimeError, subprocess.TimeoutExpired) as e:
        failed.append(str(e))
        print(f"FAILED seed {seed} {impl}: {e}", file=sys.stderr)
        continue
      summary = summarize(runs)
      write_report(args, runs, summary)
      r = runs[-1]
      print(f"{r['run']}: final {r['final_accuracy']:.4f} best {r['best_epoch_accuracy']:.4f}"
            + "".join(f" {k} {r[k]:.4g}" for k in ATTACK_FIGURES if k in r), flush=True)
  if runs:
    for k, s in summarize(runs).items():
      print(f"{k}: min {s['min']:.4f} median {s['median']:.4f} max {s['max']:.4f}")
    print(f"wrote {os.path.join(args.workdir, 'robustness.md')}")
  return 1 if failed or not runs else 0


if __name__ == "__main__":
  sys.exit(main())
