"""How every command line starts: absl's app with a `--help` that shows the command's flags.

The commands and their two spellings (the console scripts are installed by pip;
`pyproject.toml` maps each to the same `run` as its module's `__main__`):

  ran-train   | python -m ran_jax.train   (| python train.py from the repository root)
  ran-attack  | python -m ran_jax.attack
  ran-sweep   | python -m ran_jax.sweep
  ran-search  | python -m ran_jax.search
  ran-deploy  | python -m ran_jax.deploy

absl's `--help` prints `__main__`'s docstring and the flags its main module defines: as a
console script, `__main__` is pip's wrapper (no docstring, no flags), and flags defined
elsewhere in the library (the attack flags, `--config`) would show only under
`--helpfull`. `run_app` makes `--help` print the command's docstring and every flag the
library defines, and exit 0.
"""

from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence

HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort")


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


def run_app(main: Callable, doc: str, argv: Optional[Sequence[str]] = None) -> None:
  """absl's `app.run(main)` with the project's flag parsing (`config_lib.parse_flags_or_exit`:
  bad flags and config values end with `error: ...`, exit 2) and a `--help` that names
  the command's flags (exit 0)."""
  from absl import app

  from ran_jax import config_lib

  argv = list(sys.argv if argv is None else argv)
  sys.modules["__main__"].__doc__ = doc   # what absl's usage() prints
  show_library_flags_in_help()

  def parse(args):
    if any(a in HELP_FLAGS for a in args[1:]):
      app.usage(shorthelp=True, writeto_stdout=True)
      print("Try --helpfull to get a list of all flags (absl's and JAX's too).")
      sys.exit(0)
    return config_lib.parse_flags_or_exit(args)

  app.run(main, argv=argv, flags_parser=parse)
