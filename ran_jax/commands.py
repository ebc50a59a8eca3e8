"""How every command line starts, and the flag vocabulary all commands share.

The commands and their two spellings (the console scripts are installed by pip;
`pyproject.toml` maps each to the same `run` as its module's `__main__`), and the
Python function each one calls (`ran_jax.<name>(...)`, keyword arguments, docstrings):

  ran-train   | python -m ran_jax.train   (| python train.py)  ran_jax.train(config, workdir)
  ran-attack  | python -m ran_jax.attack                       ran_jax.attack(workdir, ...)
  ran-erase   | python -m ran_jax.erase                        ran_jax.erase(workdir, ...)
  ran-sweep   | python -m ran_jax.sweep                        ran_jax.sweep(config, workdir, ...)
  ran-search  | python -m ran_jax.search                       ran_jax.search(config, workdir, ...)
  ran-deploy  | python -m ran_jax.deploy                       ran_jax.deploy(workdir, ...)

One vocabulary: `--workdir` is the directory a command writes (or the finished run it
reads and writes into), `--out` only ever a file; `--config=NAME[:smoke]` with
`--config.<section>.<field>=VALUE` overrides (a sweep's per-variant overrides are
spelled the same, `--variant='NAME:config.<section>.<field>=VALUE,...'`); one name
per seed (`--attacker_seed`: the attackers' split and fits; `--noise_seed`: the
deployed release noise; `--config.seed`: the training); `--preset=light|thorough` for
how hard the attackers try; `--attribute` wherever identity is measured. Older
spellings (`RENAMED`) still work for one release and print the new one.

absl's `--help` prints `__main__`'s docstring and the flags its main module defines: as a
console script, `__main__` is pip's wrapper (no docstring, no flags), and flags defined
elsewhere in the library would show only under `--helpfull`. `run_app` makes `--help`
print the command's docstring and every flag the library defines, and exit 0.
No module defines flags at import time: each command's `run()` defines its own.
"""

from __future__ import annotations

import sys
import types
from typing import Callable, Optional, Sequence

HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort")
VERSION_FLAGS = ("--version", "-version", "-V")

# Old flag spellings -> the new ones, per command (kept for one release, with a note).
RENAMED = {
    "attack": {"out": "eval_dir", "seed": "attacker_seed"},
    "sweep": {"out": "workdir", "seed": "attacker_seed"},
    "search": {"seed": "attacker_seed"},
    "deploy": {"seed": "noise_seed"},
}


def _library_module(name: Optional[str]) -> bool:
  return bool(name) and (name == "ran_jax" or name.startswith("ran_jax.") or name == sys.argv[0])


def show_library_flags_in_help() -> None:
  """Registers every flag defined by a ran_jax module as a key flag of the main module."""
  from absl import flags

  fv = flags.FLAGS
  for name in list(fv):
    flag = fv[name]
    if name != flag.name:   # a short alias of a flag listed under its long name
      continue
    if _library_module(fv.find_module_defining_flag(name)):
      fv.register_key_flag_for_module(sys.argv[0], flag)


def deprecation_note(old: str, new: str) -> str:
  return f"note: {old} is deprecated and will be removed in the next release; use {new}"


def rename_flags(argv: Sequence[str], renamed: dict) -> list:
  """argv with old flag spellings (`--seed=1`, `--seed 1`, `--noflag`) rewritten to the new
  ones, printing a note for each on stderr."""
  out = [argv[0]] if argv else []
  for a in list(argv)[1:]:
    if a.startswith("--") and not a.startswith("--config"):
      name, eq, value = a[2:].partition("=")
      neg = name.startswith("no") and name[2:] in renamed
      key = name[2:] if neg else name
      if key in renamed:
        new = ("--no" if neg else "--") + renamed[key]
        print(deprecation_note(f"--{name}", new), file=sys.stderr)
        a = new + eq + value
    out.append(a)
  return out


def plain_text(doc: str) -> str:
  """A docstring as a terminal shows it: without markdown's emphasis and code marks."""
  return doc.replace("**", "").replace("`", "")


def command_name(argv0: str) -> str:
  """The console command a process runs as: 'ran-train' for the console script, for
  `python -m ran_jax.train` (argv[0] .../ran_jax/train.py) and for `python train.py`."""
  import os

  base = os.path.basename(argv0)
  if base == "__main__.py":   # a package's __main__ (python -m ran_jax.deploy)
    base = os.path.basename(os.path.dirname(argv0))
  base = base[:-3] if base.endswith(".py") else base
  return base if base.startswith("ran-") else "ran-" + base


def version_line(argv0: str) -> str:
  """What `--version` prints, e.g. 'ran-train (ran_jax) 0.1.0'."""
  from ran_jax import __version__

  return f"{command_name(argv0)} (ran_jax) {__version__}"


def run_app(main: Callable, doc: str, argv: Optional[Sequence[str]] = None,
            renamed: Optional[dict] = None) -> None:
  """absl's `app.run(main)` with the project's flag parsing (`config_lib.parse_flags_or_exit`:
  bad flags and config values end with `error: ...`, exit 2), old flag spellings
  (`renamed`: {old: new}) rewritten with a note, a `--help` that names the command's
  flags (exit 0) and a `--version` (exit 0)."""
  from absl import app

  from ran_jax import config_lib

  argv = list(sys.argv if argv is None else argv)
  argv = rename_flags(argv, renamed or {})
  sys.modules["__main__"].__doc__ = plain_text(doc)   # what absl's usage() prints
  show_library_flags_in_help()

  def parse(args):
    if any(a in VERSION_FLAGS for a in args[1:]):
      print(version_line(args[0]))
      sys.exit(0)
    if any(a in HELP_FLAGS for a in args[1:]):
      app.usage(shorthelp=True, writeto_stdout=True)
      print("Try --helpfull to get a list of all flags (absl's and JAX's too).")
      sys.exit(0)
    return config_lib.parse_flags_or_exit(args)

  def start(args):
    from ran_jax import parallel

    parallel.cpu_unless_accelerator()   # no TPU runtime errors on a machine without a TPU
    return main(args)

  app.run(start, argv=argv, flags_parser=parse)


# ---------------------------------------------------------------- shared flags


def define_attack_flags() -> None:
  """The flags of `ran_jax.attack.attack_config` (the reconstruction attackers)."""
  from absl import flags

  from ran_jax.attack import PRESETS
  from ran_jax.privacy import protocol

  flags.DEFINE_enum("preset", "light", list(PRESETS),
                    "The attacker budget: what the searched attackers may try. " + "; ".join(
                        f"{k}: {p.describe()}" for k, p in PRESETS.items())
                    + ". --attackers and --attack_max_epochs override the preset's.")
  flags.DEFINE_list("attackers", None, "Reconstruction attacker families to train, from "
                    f"{list(protocol.ATTACKERS)} (default: the preset's).")
  flags.DEFINE_integer("attack_max_epochs", None,
                       "Epoch cap of each early-stopped fit (default: the preset's; fits end "
                       "on a plateau, and a fit that hits the cap is reported as not converged).")
  flags.DEFINE_integer("attack_train_limit", 0,
                       "First N training examples for attackers (0: the whole split).")
  flags.DEFINE_integer("test_limit", 0, "First N test examples (0: all).")
  flags.DEFINE_integer("patience", 3, "Epochs without validation improvement before a cut/stop.")
  flags.DEFINE_integer("resnet_width", 64, "Channels of the residual decoder's coarsest stage.")
  flags.DEFINE_integer("attacker_seed", 0, "Seed of the attackers' split and fits (and of the "
                       "attribute attackers' first seed).")
  flags.DEFINE_bool("progress", True, "Show a progress bar with an ETA on stderr.")


def define_identity_flags() -> None:
  """The flags of `ran_jax.attack.identity_config` (attribute inference) and --attribute."""
  from absl import flags

  from ran_jax.privacy import identity

  flags.DEFINE_string("attribute", None,
                      "Sensitive attribute to infer (e.g. subject, speaker); default: the "
                      "config's data.attribute; '' skips the attribute attacks.")
  flags.DEFINE_list("identity_attackers", None, "Attribute attacker families, from "
                    f"{list(identity.FAMILIES)} (default: the budget's, --preset).")
  flags.DEFINE_integer("identity_seeds", 3, "Seeds per attribute attacker (release noise, init).")
  flags.DEFINE_list("releases", None,
                    "N of the 'mean of N releases of one input' threats (noisy releases), "
                    "besides one release and the clean features (default: the budget's; "
                    "light: none, thorough: 4,16).")
  flags.DEFINE_integer("person_releases", 10,
                       "Releases of different inputs of one person an attacker combines (0: off).")
  flags.DEFINE_integer("person_groups", 1000, "Random groups of person_releases scored.")


ATTACK_KEYS = ("preset", "attackers", "attack_max_epochs", "attack_train_limit", "test_limit",
               "patience", "resnet_width", "attacker_seed", "progress")
IDENTITY_KEYS = ("identity_attackers", "identity_seeds", "releases", "person_releases",
                 "person_groups")


def attack_options_from_flags(identity: bool = True) -> dict:
  """The keyword arguments of `ran_jax.attack` the shared flags set (bad values: exit 2)."""
  from absl import flags

  from ran_jax import config_lib

  f = flags.FLAGS
  out = {k: f[k].value for k in ATTACK_KEYS}
  if identity:
    out.update({k: f[k].value for k in IDENTITY_KEYS})
    try:
      out["releases"] = None if f.releases is None else tuple(int(n) for n in f.releases)
    except ValueError:
      config_lib.exit_with_error(f"--releases={','.join(f.releases)}: integers >= 2 expected.")
  for k in ("attackers", "identity_attackers"):
    if out.get(k) is not None:
      out[k] = tuple(out[k])
  return out


# ---------------------------------------------------------------- callable command modules


class _CommandModule(types.ModuleType):
  """A command's module that is also its function: `ran_jax.attack(workdir=...)` calls
  `ran_jax.attack.attack`, while `ran_jax.attack.format_table` etc. stay attributes."""

  def __call__(self, *args, **kwargs):
    return getattr(self, self.__name__.rsplit(".", 1)[-1])(*args, **kwargs)


def callable_module(name: str) -> None:
  """Makes module `name` (e.g. 'ran_jax.attack') callable as its same-named function.

  Importing `ran_jax.attack` binds the attribute `attack` of the package to the module,
  so the function cannot be the package's attribute; the module itself is callable
  instead, and `inspect.signature(ran_jax.attack)` and `help` read the function's.
  """
  module = sys.modules[name]
  fn = getattr(module, name.rsplit(".", 1)[-1])
  module.__class__ = _CommandModule
  module.__wrapped__ = fn   # inspect.signature follows it
