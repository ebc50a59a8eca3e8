"""`python -m bench tasks`: the paper's accelerator tasks (T2 CIFAR-10, T3 ImageNet) in one run.

  python -m bench tasks --out=OUT --cifar_manual_dir=DIR_WITH_cifar10_jpg.tar.gz
      [--imagenet_data_dir=PREPARED_TFDS_DIR | --imagenet_manual_dir=DIR_WITH_ILSVRC_TARS]

Sized for one lent GPU/TPU and about ten minutes (`bash bench/tasks_accelerator.sh OUT`):

1. **CIFAR-10 / AlexNet (T2).** `ran_jax.sweep` trains the DNN baseline (lambda = 1) and two
   RAN points (`--cifar_lams`, default 0.99 and 0.9) for `--cifar_epochs`, then attacks each
   frozen encoder with the attacker protocol (attackers trained after freezing on the
   training split's released features, scored on the test split; worst case). The summary
   gives test accuracy against the paper's figure (RAN >= 76 %) and the worst-case error
   as a multiple of DNN's. OUT/cifar10/ is an ordinary sweep directory (results.csv,
   pareto.png, reconstructions.png) and resumes like one.
2. **ImageNet / VGG-16 (T3) smoke**, bfloat16 as configs/imagenet_vgg.py: a few hundred
   iterations on the prepared ImageNet when given, else on TFDS fake data
   (`tfds.testing.mock_data`: random images and labels of ImageNet's feature spec; the
   loss can then only fall by memorising them). The run is stopped with SIGTERM half-way
   (the trainer saves and exits 143, as on a preempted TPU), rerun with the same command,
   and checked: it resumed at the step it saved, reached the planned step, and its
   cross-entropy did not jump back to the initial level; the discriminative
   cross-entropy and the reconstruction error must fall over the run.

Every step has its own time limit and writes as it goes; OUT/summary.json and
OUT/summary.md are rewritten after each step, so a run cut short keeps what it measured.
Exit 0 when every step ran and passed its checks, 1 otherwise. `--tiny` runs the same
steps with the configs' smoke variants and tiny budgets, one discriminative/generative pair
per iteration (k=1, half the compilation), in seconds on a CPU; the tests use it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

from ran_jax.privacy import results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_CIFAR_ACCURACY = 0.76   # the paper's RAN test accuracy on CIFAR-10


def parse_args(argv):
  p = argparse.ArgumentParser(prog="python -m bench tasks", description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="Output directory (summary.json, summary.md).")
  p.add_argument("--steps", default="cifar10,imagenet", help="Which steps: cifar10,imagenet.")
  p.add_argument("--tiny", action="store_true", help="Smoke configs and tiny budgets (CPU).")
  p.add_argument("--parallel", action="store_true",
                 help="Run both steps at once on the one device (each gets 45%% of its memory).")
  p.add_argument("--cifar_manual_dir", default=None,
                 help="Directory with cifar-10-binary.tar.gz or cifar10_jpg.tar.gz.")
  p.add_argument("--cifar_data_dir", default=None, help="TFDS data_dir (prepared or to prepare).")
  p.add_argument("--cifar_epochs", type=int, default=12)
  p.add_argument("--cifar_batch", type=int, default=256)
  p.add_argument("--cifar_lams", default="0.99,0.9",
                 help="The RAN points' lambdas. The reconstruction term is a sum over 3,072 "
                      "values (~100-200 for CIFAR-10), so (1 - lambda) * error outweighs the "
                      "cross-entropy already at lambda 0.9; smaller lambdas trade accuracy fast.")
  p.add_argument("--attackers", default="ridge,mlp_decoder,mirrored_decoder")
  p.add_argument("--attack_max_epochs", type=int, default=8)
  p.add_argument("--cifar_timeout_s", type=int, default=480)
  p.add_argument("--imagenet_data_dir", default=None, help="TFDS data_dir with imagenet2012.")
  p.add_argument("--imagenet_manual_dir", default=None, help="Directory with the ILSVRC tars.")
  p.add_argument("--imagenet_steps", type=int, default=256)
  p.add_argument("--imagenet_batch", type=int, default=64)
  p.add_argument("--mock_examples", type=int, default=2048,
                 help="Fake examples per split when ImageNet is absent.")
  p.add_argument("--imagenet_timeout_s", type=int, default=420)
  a = p.parse_args(argv)
  a.steps = [s for s in a.steps.split(",") if s]
  bad = sorted(set(a.steps) - {"cifar10", "imagenet"})
  if bad:
    p.error(f"--steps: unknown {bad}; allowed: cifar10, imagenet")
  for name in ("cifar_epochs", "cifar_batch", "imagenet_steps", "imagenet_batch"):
    if getattr(a, name) < 1:
      p.error(f"--{name}={getattr(a, name)}: must be >= 1")
  if a.imagenet_steps < 4:
    p.error(f"--imagenet_steps={a.imagenet_steps}: must be >= 4 (it is stopped half-way)")
  try:
    a.cifar_lams = [float(v) for v in a.cifar_lams.split(",") if v]
  except ValueError:
    p.error(f"--cifar_lams={a.cifar_lams}: comma-separated numbers in [0, 1)")
  if not a.cifar_lams or any(not 0 <= v < 1 for v in a.cifar_lams):
    p.error(f"--cifar_lams={a.cifar_lams}: comma-separated numbers in [0, 1)")
  return a


def _env(memory_fraction=None):
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  if memory_fraction:
    env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = str(memory_fraction)
  return env


# ---------------------------------------------------------------- CIFAR-10 / AlexNet


def cifar_command(a) -> tuple[list, str]:
  out = os.path.join(a.out, "cifar10")
  config = "configs/cifar10_alexnet.py" + (":smoke" if a.tiny else "")
  cmd = [sys.executable, "-m", "ran_jax.sweep", f"--config={config}", f"--workdir={out}",
         "--methods=dnn,ran", "--lams=" + ",".join(f"{v:g}" for v in a.cifar_lams),
         f"--attackers={a.attackers}", f"--attack_max_epochs={a.attack_max_epochs}",
         f"--config.num_epochs={a.cifar_epochs}", f"--config.batch_size={a.cifar_batch}",
         "--config.export_deployment=False"]
  if a.cifar_manual_dir:
    cmd.append(f"--config.data.manual_dir={os.path.abspath(a.cifar_manual_dir)}")
  if a.cifar_data_dir:
    cmd.append(f"--config.data.data_dir={os.path.abspath(a.cifar_data_dir)}")
  if a.tiny:
    cmd += ["--config.eval_batch_size=32", "--config.log_every_steps=1", "--config.ran.k=1"]
  return cmd, out


def cifar_summary(out: str) -> dict:
  """results.csv -> per point accuracy, worst attacker and ratio to DNN; the checks."""
  path = os.path.join(out, "results.csv")
  if not os.path.exists(path):
    return {"ok": False, "error": f"no {path}: the sweep did not finish"}
  def num(r, key):
    return float(r[key]) if r[key] else None

  points = [{
      "method": r["method"], "setting": r["setting"], "lam": r["lam"],
      "accuracy": num(r, "accuracy"), "worst_attacker": r["worst_attacker"],
      "worst_mse_sum": num(r, "worst_mse_sum"), "worst_psnr": num(r, "worst_psnr"),
      "label_only_mse_sum": num(r, "label_only_mse_sum"),
      "attackers_at_cap": [a for a in results.TRAINED_ATTACKERS
                           if r.get(f"{a}_converged") == "False"],
  } for r in results.read_csv(path)]
  dnn = next((p for p in points if p["method"] == "dnn"), None)
  for p in points:
    if dnn and dnn["worst_mse_sum"] and p["worst_mse_sum"] is not None:
      p["worst_over_dnn"] = p["worst_mse_sum"] / dnn["worst_mse_sum"]
  ran = [p for p in points if p["method"] == "ran"]
  checks = {
      "dnn_and_ran_points_attacked": dnn is not None and len(ran) >= 1,
      "ran_accuracy_at_least_paper_0.76": bool(ran) and all(
          (p["accuracy"] or 0) >= PAPER_CIFAR_ACCURACY for p in ran),
  }
  return {"ok": all(checks.values()), "checks": checks, "points": points, "results_csv": path}


# ---------------------------------------------------------------- ImageNet / VGG-16 smoke


def imagenet_command(a, workdir: str) -> tuple[list, bool]:
  config = "configs/imagenet_vgg.py" + (":smoke" if a.tiny else "")
  mocked = not (a.imagenet_data_dir or a.imagenet_manual_dir)
  half = a.imagenet_steps // 2
  cmd = [sys.executable, "-m", "bench.mocked_train",
         f"--mock_examples={a.mock_examples if mocked else 0}",
         f"--config={config}", f"--workdir={workdir}",
         f"--config.batch_size={a.imagenet_batch}",
         f"--config.eval_batch_size={a.imagenet_batch}",
         f"--config.max_steps={a.imagenet_steps}",
         f"--config.log_every_steps={max(1, min(10, half // 4))}",
         "--config.checkpoint_every_steps=0", "--config.keep_checkpoints=1",
         "--config.export_deployment=False", "--config.num_epochs=1000"]
  if a.tiny:
    cmd.append("--config.ran.k=1")
  if a.imagenet_data_dir:
    cmd.append(f"--config.data.data_dir={os.path.abspath(a.imagenet_data_dir)}")
  else:
    # Mocked data still names a data_dir: TFDS would otherwise look in ~/tensorflow_datasets.
    cmd.append(f"--config.data.data_dir={os.path.abspath(os.path.join(workdir, '..', 'tfds'))}")
  if a.imagenet_manual_dir:
    cmd.append(f"--config.data.manual_dir={os.path.abspath(a.imagenet_manual_dir)}")
  if mocked:  # a few thousand examples: each is seen several times, so the loss can fall
    cmd.append(f"--config.data.test_limit={min(a.mock_examples, 4 * a.imagenet_batch)}")
  return cmd, mocked


def read_metrics(workdir: str, kind: str = "train") -> list:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      try:
        r = json.loads(line)
      except json.JSONDecodeError:  # a line being written
        continue
      if r.get("kind") == kind:
        out.append(r)
  return out


def saved_steps(workdir: str) -> list:
  d = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def run_imagenet(a) -> dict:
  root = os.path.join(a.out, "imagenet_smoke")
  workdir = os.path.join(root, "run")
  os.makedirs(root, exist_ok=True)
  cmd, mocked = imagenet_command(a, workdir)
  half = a.imagenet_steps // 2
  deadline = time.time() + a.imagenet_timeout_s
  res = {"mocked": mocked, "command": " ".join(cmd), "planned_steps": a.imagenet_steps,
         "stop_at_step": half}
  prior = read_metrics(workdir)
  log_path = os.path.join(root, "train.log")
  with open(log_path, "a") as lf:
    if not prior or max(r["step"] for r in prior) < half:
      # First half: run until a logged step >= half, then SIGTERM (a preemption).
      t0 = time.time()
      proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(a.memory_fraction), stdout=lf,
                              stderr=subprocess.STDOUT)
      sent = None
      while proc.poll() is None:
        if time.time() > deadline:
          proc.kill()
          proc.wait()
          return {**res, "ok": False, "error": f"first run over {a.imagenet_timeout_s}s"}
        done = read_metrics(workdir)
        if sent is None and done and max(r["step"] for r in done) >= half:
          proc.send_signal(signal.SIGTERM)
          sent = max(r["step"] for r in done)
        time.sleep(0.2)
      res["first_run_s"] = round(time.time() - t0, 1)
      res["first_run_exit"] = proc.returncode
      res["sigterm_after_step"] = sent
      if proc.returncode not in (143, -signal.SIGTERM, 0):
        return {**res, "ok": False,
                "error": f"first run exited {proc.returncode} (see {log_path})"}
    before = read_metrics(workdir)
    res["saved_at_stop"] = saved_steps(workdir)
    stopped_at = max(res["saved_at_stop"] or [0])
    t0 = time.time()
    try:
      rc = subprocess.run(cmd, cwd=ROOT, env=_env(a.memory_fraction), stdout=lf,
                          stderr=subprocess.STDOUT,
                          timeout=max(10, deadline - time.time())).returncode
    except subprocess.TimeoutExpired:
      return {**res, "ok": False, "error": "resumed run over the time limit"}
    res["second_run_s"] = round(time.time() - t0, 1)
    res["second_run_exit"] = rc
  with open(log_path) as f:
    text = f.read()
  res["resumed_from_log"] = f"at step {stopped_at}" in text and "Resumed from" in text
  train = read_metrics(workdir)
  final_path = os.path.join(workdir, "final_metrics.json")
  final = json.load(open(final_path)) if os.path.exists(final_path) else {}
  res["final_step"] = final.get("step")
  # The metric log is appended by both runs; the resumed run's records start after stop.
  first = [r for r in train if r["step"] <= stopped_at]
  after = [r for r in train if r["step"] > stopped_at and r not in before]
  ce = [r["disc/ce"] for r in train]
  recon_key = next((k for k in (train[0] if train else {}) if k.startswith("gen/recon")), None)
  q = max(1, len(train) // 4)
  res["disc_ce"] = {"first_logged": ce[0] if ce else None,
                    "first_quarter_mean": sum(ce[:q]) / q if ce else None,
                    "last_quarter_mean": sum(ce[-q:]) / q if ce else None,
                    "before_stop_last": first[-1]["disc/ce"] if first else None,
                    "after_resume_first": after[0]["disc/ce"] if after else None}
  if recon_key:
    rec = [r[recon_key] for r in train]
    res[recon_key] = {"first_quarter_mean": sum(rec[:q]) / q,
                      "last_quarter_mean": sum(rec[-q:]) / q}
  res["test"] = {k: final[k] for k in ("accuracy", "recon_sse", "recon_mse") if k in final}
  if train:
    rates = [r["examples_per_sec"] for r in train if "examples_per_sec" in r][1:]
    res["examples_per_s_median"] = sorted(rates)[len(rates) // 2] if rates else None
  ce_d = res["disc_ce"]
  checks = {
      "stopped_by_sigterm_and_saved": stopped_at > 0,
      "resumed_at_saved_step": res["resumed_from_log"],
      "reached_planned_step": res["final_step"] == a.imagenet_steps and rc == 0,
      "ce_falls": bool(ce) and ce_d["last_quarter_mean"] < ce_d["first_quarter_mean"],
      # A resume that lost the weights starts again near the first logged loss.
      "no_jump_back_after_resume": bool(after) and bool(first) and (
          ce_d["after_resume_first"] < ce_d["first_logged"]),
  }
  if recon_key:
    checks["recon_falls"] = (res[recon_key]["last_quarter_mean"]
                             < res[recon_key]["first_quarter_mean"])
  res["checks"] = checks
  res["ok"] = all(checks.values())
  return res


# ---------------------------------------------------------------- summary


def _g(v, digits=4) -> str:
  return "" if v is None else f"{v:.{digits}g}"


def _round(v):
  """Numbers in nested dicts/lists to 4 significant digits (for the markdown)."""
  if isinstance(v, float):
    return float(f"{v:.4g}")
  if isinstance(v, dict):
    return {k: _round(x) for k, x in v.items()}
  if isinstance(v, list):
    return [_round(x) for x in v]
  return v


def write_summary(a, summary: dict) -> None:
  with open(os.path.join(a.out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  lines = ["# Paper tasks on an accelerator (`python -m bench tasks`)", "",
           f"Command: `{summary['command']}`", f"Devices: {summary.get('devices', '?')}", ""]
  c = summary.get("cifar10")
  if c:
    lines += ["## CIFAR-10 / AlexNet (T2)", ""]
    if c.get("error"):
      lines.append(f"**Not measured:** {c['error']}")
    lines += ["| point | lambda | test accuracy | worst attacker | worst mse_sum | x DNN "
              "| PSNR dB | label-only |", "|---|---|---|---|---|---|---|---|"]
    for p in c.get("points", []):
      cap = f" (at epoch cap: {', '.join(p['attackers_at_cap'])})" if p["attackers_at_cap"] else ""
      lines.append(
          f"| {p['method']} {p['setting']} | {p['lam']} | {_g(p['accuracy'])} | "
          f"{p['worst_attacker']}{cap} | {_g(p['worst_mse_sum'])} | "
          f"{_g(p.get('worst_over_dnn'), 3)} | {_g(p['worst_psnr'])} | "
          f"{_g(p['label_only_mse_sum'])} |")
    lines += ["", f"Checks: {c.get('checks')}; wall {c.get('wall_s')} s.", ""]
  m = summary.get("imagenet")
  if m:
    lines += ["## ImageNet / VGG-16 (T3) smoke" + (" on TFDS fake data" if m.get("mocked") else ""),
              ""]
    for k in ("error", "planned_steps", "sigterm_after_step", "saved_at_stop", "final_step",
              "disc_ce", "gen/recon_sse", "gen/recon_mse", "test", "examples_per_s_median",
              "first_run_s", "second_run_s", "checks"):
      if k in m:
        lines.append(f"- {k}: {_round(m[k])}")
    lines.append("")
  with open(os.path.join(a.out, "summary.md"), "w") as f:
    f.write("\n".join(lines))


def main(argv=None) -> int:
  a = parse_args(sys.argv[1:] if argv is None else argv)
  os.makedirs(a.out, exist_ok=True)
  a.memory_fraction = 0.45 if a.parallel else None
  summary = {"command": "python -m bench tasks " + " ".join(sys.argv[1:] if argv is None
                                                            else argv)}
  try:
    devices = subprocess.run([sys.executable, "-c", "import jax; print(jax.devices())"],
                             capture_output=True, text=True, timeout=120, env=_env()).stdout
    summary["devices"] = devices.strip()
  except subprocess.TimeoutExpired:
    summary["devices"] = "? (jax.devices() timed out)"
  log = print
  cifar_proc = None
  if "cifar10" in a.steps:
    cmd, out = cifar_command(a)
    os.makedirs(out, exist_ok=True)
    lf = open(os.path.join(out, "sweep.log"), "a")
    t0 = time.time()
    log("cifar10:", " ".join(cmd))
    cifar_proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(a.memory_fraction), stdout=lf,
                                  stderr=subprocess.STDOUT)

    def finish_cifar():
      try:
        rc = cifar_proc.wait(timeout=max(1, a.cifar_timeout_s - (time.time() - t0)))
      except subprocess.TimeoutExpired:
        cifar_proc.kill()
        cifar_proc.wait()
        rc = "timeout"
      lf.close()
      s = cifar_summary(out)
      s.update(exit=rc, wall_s=round(time.time() - t0, 1), command=" ".join(cmd))
      if rc != 0:
        s["ok"] = False
        s.setdefault("error", f"sweep exit {rc} (see {out}/sweep.log)")
      summary["cifar10"] = s
      write_summary(a, summary)
      log("cifar10:", json.dumps({k: s.get(k) for k in ("ok", "checks", "wall_s")}))

    if not a.parallel:
      finish_cifar()
  if "imagenet" in a.steps:
    t0 = time.time()
    summary["imagenet"] = run_imagenet(a)
    summary["imagenet"]["wall_s"] = round(time.time() - t0, 1)
    write_summary(a, summary)
    log("imagenet:", json.dumps({k: summary["imagenet"].get(k) for k in ("ok", "checks")}))
  if cifar_proc is not None and a.parallel:
    finish_cifar()
  write_summary(a, summary)
  ok = all(summary[s]["ok"] for s in ("cifar10", "imagenet") if s in summary)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
