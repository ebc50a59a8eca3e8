"""Robustness of a config's result: the same training over seeds and numeric paths.

  python -m bench robustness --config=configs/digits_lenet.py --out=runs/robust_digits \
      [--seeds=0,1,2,3,4] [--conv_impls=fast,xla] [--attack --attackers=ridge,mlp_decoder] \
      [--set=ran.lam=0.5 --set=num_epochs=10 ...]

Trains `train.py --config=CONFIG` once per (seed, conv_impl): the seeds change the
initialisation, the shuffling and the noise; `model.conv_impl='fast'` and `'xla'` compute
the same convolutions with other float rounding, as another machine would. For each run
it reads the final test accuracy (`final_metrics.json`) and the best per-epoch test
accuracy (`metrics.jsonl`, only to show how far the end is from the best epoch: nothing is
chosen by it). With `--attack` each frozen encoder is also attacked
(`python -m ran_jax.attack`, attackers trained after freezing) and the worst-case
reconstruction error is collected.

Writes OUT/robustness.json (every run and the min / median / max of each figure) and
OUT/robustness.md, rewritten after every run. Rerunning the same command reuses finished
runs (a run's workdir resumes from its checkpoint), so an interrupted study continues.
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


def parse_args(argv):
  p = argparse.ArgumentParser(prog="python -m bench robustness", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="a config file, e.g. configs/digits_lenet.py")
  p.add_argument("--out", required=True, help="output directory (one workdir per run inside)")
  p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds")
  p.add_argument("--conv_impls", default="fast,xla", help=f"comma-separated, from {CONV_IMPLS}")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="a config override for every run (repeatable), e.g. ran.lam=0.5")
  p.add_argument("--attack", action="store_true", help="attack every frozen encoder too")
  p.add_argument("--attackers", default="", help="--attackers of ran_jax.attack (default: its)")
  p.add_argument("--attack_flags", default="",
                 help="more flags for ran_jax.attack, space-separated")
  p.add_argument("--timeout", type=float, default=7200, help="seconds per training or attack")
  args = p.parse_args(argv)
  try:
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  except ValueError:
    p.error(f"--seeds={args.seeds!r}: comma-separated integers, e.g. 0,1,2")
  if not args.seeds or any(s < 0 for s in args.seeds):
    p.error("--seeds: at least one integer >= 0")
  args.conv_impls = [c.strip() for c in args.conv_impls.split(",") if c.strip()]
  bad = [c for c in args.conv_impls if c not in CONV_IMPLS]
  if bad or not args.conv_impls:
    p.error(f"--conv_impls={','.join(bad) or '(empty)'}: allowed values are {list(CONV_IMPLS)}")
  for s in args.set:
    if "=" not in s or s.startswith("="):
      p.error(f"--set={s!r}: expected FIELD=VALUE, e.g. ran.lam=0.5")
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
  workdir = os.path.join(args.out, name)
  log_path = os.path.join(args.out, f"{name}.log")
  os.makedirs(args.out, exist_ok=True)
  rec = {"run": name, "seed": seed, "conv_impl": impl}
  final_path = os.path.join(workdir, "final_metrics.json")
  t0 = time.perf_counter()
  if not os.path.exists(final_path):
    cmd = [sys.executable, "train.py", f"--config={args.config}", f"--workdir={workdir}",
           f"--config.seed={seed}", f"--config.model.conv_impl={impl}"]
    cmd += [f"--config.{s}" for s in args.set]
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
  report = {"config": args.config, "overrides": args.set, "seeds": args.seeds,
            "conv_impls": args.conv_impls, "runs": runs, "summary": summary}
  with open(os.path.join(args.out, "robustness.json"), "w") as f:
    json.dump(report, f, indent=2)
  lines = [f"# Robustness of `{args.config}`", "",
           f"Overrides: {' '.join(args.set) or 'none'}; seeds {args.seeds}; conv paths "
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
  with open(os.path.join(args.out, "robustness.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  os.makedirs(args.out, exist_ok=True)
  runs, failed = [], []
  for seed in args.seeds:
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
    print(f"wrote {os.path.join(args.out, 'robustness.md')}")
  return 1 if failed or not runs else 0


if __name__ == "__main__":
  sys.exit(main())
