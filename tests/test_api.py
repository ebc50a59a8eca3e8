"""The public Python API (`ran_jax.train`, `.attack`, `.sweep`, `.search`, `.deploy`) and the
flag vocabulary the commands share."""

import inspect
import json
import logging
import os
import subprocess
import sys

import pytest

import ran_jax
from ran_jax import commands
from tests.helpers import ROOT, subprocess_env

JOBS = ("train", "attack", "erase", "sweep", "search", "deploy", "plan")


def _python(code, timeout=300):
  env = subprocess_env({"PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"})
  r = subprocess.run([sys.executable, "-c", code], cwd="/tmp", env=env, capture_output=True,
                     text=True, timeout=timeout)
  assert r.returncode == 0, r.stderr[-3000:]
  return r.stdout.strip().splitlines()[-1]


def test_import_is_light_and_lists_the_jobs():
  out = json.loads(_python(
      "import json, sys, ran_jax; print(json.dumps([sorted(ran_jax.__all__), "
      "[m for m in ('jax', 'tensorflow', 'flax', 'ran_jax.trainer') if m in sys.modules]]))"))
  names, heavy = out
  assert set(JOBS) <= set(names) and {"get_config", "load_trained"} <= set(names)
  assert heavy == []


@pytest.mark.parametrize("job", JOBS)
def test_each_job_is_its_module_and_its_function(job):
  module = getattr(ran_jax, job)
  assert module is sys.modules[f"ran_jax.{job}"] and callable(module)
  fn = getattr(module, job)
  assert inspect.signature(module) == inspect.signature(fn)
  assert fn.__doc__ and len(fn.__doc__.splitlines()) > 5
  # keyword arguments after the leading positional ones
  params = list(inspect.signature(fn).parameters.values())
  assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in params[2:])
  from ran_jax import sweep  # noqa: F401 - the module, with its other names
  assert getattr(ran_jax, job) is module


def test_module_call_forwards_to_the_function(monkeypatch):
  calls = []
  monkeypatch.setattr(ran_jax.attack, "attack", lambda *a, **k: calls.append((a, k)) or "r")
  assert ran_jax.attack(workdir="w", preset="strong") == "r"
  assert calls == [((), {"workdir": "w", "preset": "strong"})]


def test_presets_and_overrides():
  from ran_jax import attack

  light = attack.attack_config()
  assert light.attackers == ("mirrored_decoder", "mlp_decoder", "ridge")
  assert light.attacker_fit.max_epochs == 15 and attack.skipped_attackers(light) == [
      "resnet_decoder"]
  strong = attack.attack_config(preset="strong")
  assert "resnet_decoder" in strong.attackers and strong.attacker_fit.max_epochs == 100
  assert attack.skipped_attackers(strong) == []
  mine = attack.attack_config(preset="strong", attackers=["ridge"], attack_max_epochs=5,
                              attacker_seed=7)
  assert mine.attackers == ("ridge",) and mine.attacker_fit.max_epochs == 5 and mine.seed == 7
  # the retrained classifier (a utility figure) converges whatever the preset's attacker cap
  assert light.classifier_fit.max_epochs == 100 and mine.classifier_fit.max_epochs == 5
  assert attack.identity_config().releases == ()
  assert attack.identity_config(preset="strong").releases == (4, 16)
  assert attack.identity_config(releases=(8,), attacker_seed=2).seeds == (2, 3, 4)
  with pytest.raises(ValueError, match="preset='huge'"):
    attack.attack_config(preset="huge")
  with pytest.raises(ValueError, match="unknown \\['resnet'\\]"):
    attack.attack_config(attackers=["resnet"])


def test_sweep_and_search_refuse_unknown_options(tmp_path):
  with pytest.raises(TypeError, match="attack_epochs"):
    ran_jax.sweep("digits_lenet:smoke", str(tmp_path), attack_epochs=3)
  with pytest.raises(TypeError, match="seed"):
    ran_jax.search("digits_lenet:smoke", str(tmp_path), seed=3)
  assert not os.listdir(tmp_path)


def test_variant_overrides_spelled_as_on_the_command_line(caplog):
  from ran_jax import sweep

  new = sweep.parse_variant("bn8:config.model.bottleneck_dim=8,config.ran.extra_decoders=(1, 2)")
  assert new == ("bn8", {"model.bottleneck_dim": 8, "ran.extra_decoders": (1, 2)})
  with caplog.at_level(logging.WARNING, logger="ran_jax"):
    old = sweep.parse_variant("bn8:model.bottleneck_dim=8,ran.extra_decoders=(1, 2)")
  assert old == new
  assert "deprecated" in caplog.text and "config.model.bottleneck_dim" in caplog.text
  assert sweep._grid_flag(["paper"], "lams") == sweep.PAPER_LAMS
  assert sweep._grid_flag(["0.2", "0.4"], "noise_factors") == (0.2, 0.4)
  with pytest.raises(ValueError, match="--lams=big"):
    sweep._grid_flag(["big"], "lams")


def test_old_flag_spellings_are_rewritten_with_a_note(capsys):
  argv = ["ran-attack", "--workdir=w", "--out=e", "--seed", "3", "--config.seed=1", "--noseed"]
  assert commands.rename_flags(argv, commands.RENAMED["attack"]) == [
      "ran-attack", "--workdir=w", "--eval_dir=e", "--attacker_seed", "3", "--config.seed=1",
      "--noattacker_seed"]
  err = capsys.readouterr().err
  assert "--out is deprecated" in err and "use --eval_dir" in err and "use --attacker_seed" in err
  assert commands.rename_flags(["x", "--seed=1"], commands.RENAMED["deploy"]) == [
      "x", "--noise_seed=1"]
  assert commands.rename_flags(["x", "--out=d"], commands.RENAMED["sweep"]) == ["x", "--workdir=d"]


def test_robustness_old_and_new_spellings_agree(capsys):
  from bench import robustness

  cfg = os.path.join(ROOT, "configs", "digits_lenet.py")
  new = robustness.parse_args([f"--config={cfg}", "--workdir=/tmp/r", "--train_seeds=0,2",
                               "--config.ran.lam=0.5", "--config.num_epochs=2"])
  old = robustness.parse_args([f"--config={cfg}", "--out=/tmp/r", "--seeds=0,2",
                               "--set=ran.lam=0.5", "--set=num_epochs=2"])
  for args in (new, old):
    assert (args.workdir, args.train_seeds) == ("/tmp/r", [0, 2])
    assert sorted(args.overrides) == ["num_epochs=2", "ran.lam=0.5"]
  err = capsys.readouterr().err
  assert "use --workdir" in err and "use --train_seeds" in err and "use --config.ran.lam=0.5" in err
  with pytest.raises(SystemExit):
    robustness.parse_args([f"--config={cfg}", "--workdir=/tmp/r", "--lam=0.5"])


# One flag vocabulary: the flags each command defines, compared across commands.
_FLAGS_OF = """
import json, sys
from absl import flags
import ran_jax.{module} as m
before = set(flags.FLAGS)
m.define_flags() if hasattr(m, 'define_flags') else m._define_flags()
print(json.dumps(sorted(set(flags.FLAGS) - before)))
"""


@pytest.fixture(scope="module")
def command_flags():
  mods = {"train": "train", "attack": "attack", "erase": "erase", "sweep": "sweep",
          "search": "search", "deploy": "deploy.cli", "plan": "plan"}
  code = ("import json, subprocess, sys\nout = {}\n"
          f"for k, m in {mods!r}.items():\n"
          "  out[k] = json.loads(subprocess.run([sys.executable, '-c', "
          f"{_FLAGS_OF!r}.format(module=m)], capture_output=True, text=True, check=True)"
          ".stdout.splitlines()[-1])\nprint(json.dumps(out))")
  return json.loads(_python(code))


def test_no_module_defines_flags_at_import():
  out = _python("from absl import flags\nimport ran_jax.attack, ran_jax.sweep, ran_jax.search, "
                "ran_jax.train, ran_jax.commands, ran_jax.deploy.cli\n"
                "print(sorted(n for n in flags.FLAGS if n in ('workdir', 'config', 'out', "
                "'preset', 'attackers')))")
  assert out == "[]"


def test_one_flag_vocabulary(command_flags):
  f = command_flags
  assert all("workdir" in names for names in f.values())
  assert "seed" not in set().union(*f.values())          # each seed has its own name
  assert [k for k, names in f.items() if "out" in names] == ["deploy"]   # --out: files only
  for job in ("attack", "sweep", "search"):
    assert {"attribute", "preset", "attackers", "attacker_seed", "progress"} <= set(f[job]), job
  assert {"preset", "attackers", "attacker_seed", "noise_seed"} <= set(f["deploy"])
  assert "config" in f["train"] and "config" in f["sweep"] and "config" in f["search"]
  assert {"attribute", "eraser_seed"} <= set(f["erase"]) and "attacker_seed" not in f["erase"]


@pytest.mark.slow
def test_train_then_attack_in_python(tmp_path):
  """The README's Python example, shrunk: what the functions return is what they write."""
  wd = str(tmp_path / "run")
  metrics = ran_jax.train("digits_lenet:smoke", wd, overrides={"ran.lam": 0.25})
  with open(os.path.join(wd, "final_metrics.json")) as f:
    assert json.load(f)["accuracy"] == pytest.approx(metrics["accuracy"])
  with open(os.path.join(wd, "config.json")) as f:
    assert json.load(f)["ran"]["lam"] == 0.25
  report = ran_jax.attack(workdir=wd, attackers=["ridge"], progress=False)
  with open(os.path.join(wd, "eval", "result.json")) as f:
    saved = json.load(f)
  assert saved["worst"] == report["worst"] and set(report["attackers"]) >= {"ridge"}
  assert report["skipped_attackers"] == ["mirrored_decoder", "mlp_decoder", "resnet_decoder"]
  assert 0.0 <= report["accuracy"] <= 1.0 and report["worst"]["mse_sum"] > 0
  with pytest.raises(ValueError, match="Unknown config field 'ran.lamda'"):
    ran_jax.train("digits_lenet:smoke", str(tmp_path / "x"), overrides={"ran.lamda": 0.3})
