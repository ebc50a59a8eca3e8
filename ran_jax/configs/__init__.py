"""The task configs, shipped with the library: one module per paper setting.

Every command's `--config` takes a packaged config by name or a config file by path,
with an optional `:arg` (e.g. `:smoke`, a seconds-long variant for tests):

  ran-train --config=digits_lenet:smoke --workdir=/tmp/x              # by name, from anywhere
  python train.py --config=configs/digits_lenet.py --workdir=runs/x   # by path (repository root)
  ran-train --config=/path/to/my_config.py --workdir=...              # a config of your own

A path that exists is always what is loaded (ml_collections loads it by path, relative
to the working directory); otherwise a bare name (`digits_lenet`, `digits_lenet.py`) or
`configs/<name>.py` names the packaged module of that name, so the README's commands also
work outside the repository. A config of your own builds on the library's defaults:

  from ran_jax.configs import common
  def get_config(arg=None):
    c = common.get_base_config()
    ...
    return common.finish(c, arg)

In Python: `ran_jax.configs.get_config("digits_lenet:smoke")`.
The repository's `configs/*.py` are thin aliases of these modules.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_NOT_CONFIGS = ("common",)   # modules of this package that are not task configs


def names() -> list[str]:
  """The packaged task configs' names, e.g. ['cifar10_alexnet', 'digits_lenet', ...]."""
  return sorted(m.name for m in pkgutil.iter_modules([PACKAGE_DIR])
                if not m.ispkg and m.name not in _NOT_CONFIGS)


def packaged_name(path: str) -> str | None:
  """The packaged config `path` names ('digits_lenet', 'digits_lenet.py' or
  'configs/digits_lenet.py'), or None."""
  p = os.path.normpath(path)
  if os.path.dirname(p) in ("", "configs"):
    name = os.path.basename(p)
    name = name[:-3] if name.endswith(".py") else name
    if name in names():
      return name
  return None


def resolve(spec: str) -> str:
  """'NAME[:arg]' or 'PATH[:arg]' -> the config file's path (and the same ':arg').

  An existing file wins; otherwise a packaged config's name (see the module docstring).
  Raises ValueError naming the packaged configs when neither exists.
  """
  path, sep, arg = spec.partition(":")
  if not path:
    raise ValueError("empty config: give a packaged config's name "
                     f"({', '.join(names())}) or a path to a config file.")
  if os.path.isfile(path):
    return spec
  name = packaged_name(path)
  if name is None:
    raise ValueError(f"no config file {path!r} (relative to {os.getcwd()}) and no packaged "
                     f"config of that name; packaged configs: {', '.join(names())}.")
  return os.path.join(PACKAGE_DIR, name + ".py") + sep + arg


def get_config(spec: str):
  """The ConfigDict of a packaged config or a config file, e.g. 'digits_lenet:smoke'.

  The same resolution as the commands' `--config` (see `resolve`); overrides are
  ordinary assignments afterwards (`c.num_epochs = 5`).
  """
  path, _, arg = resolve(spec).partition(":")
  name = packaged_name(path) if os.path.dirname(os.path.abspath(path)) == PACKAGE_DIR else None
  if name is not None:
    module = importlib.import_module(f"{__name__}.{name}")
  else:
    loader_spec = importlib.util.spec_from_file_location("ran_jax_user_config", path)
    module = importlib.util.module_from_spec(loader_spec)
    loader_spec.loader.exec_module(module)
  return module.get_config(*([arg] if arg else []))


HELP = ("The config: a packaged config by name ({names}) or a path to a config file; "
        "':smoke' after it selects the seconds-long variant (e.g. digits_lenet:smoke). "
        "Override any field with --config.<section>.<field>=VALUE "
        "(e.g. --config.ran.lam=0.3); every field, its default and allowed values: the "
        "documentation's reference page 'Config fields'.")


def define_config_flag(name: str = "config", flag_values=None):
  """`--config` of a command: ml_collections' config-file flag that also takes a name.

  ml_collections loads `--config` only as a path relative to the working directory; the
  flag's parser is swapped for one that resolves packaged names first (`resolve`).
  Overrides (`--config.ran.lam=0.3`) and the locked config behave as with
  `config_flags.DEFINE_config_file`.
  """
  from absl import flags
  from ml_collections import config_flags

  class NamedConfigParser(flags.ArgumentParser):
    """ml_collections' config-file parser, given a packaged config's file for its name."""

    def __init__(self, inner):
      self.inner = inner

    def parse(self, argument):
      return self.inner.parse(resolve(argument))  # ValueError -> "flag --config=...: ..."

    def flag_type(self):
      return self.inner.flag_type()

  fv = flags.FLAGS if flag_values is None else flag_values
  holder = config_flags.DEFINE_config_file(name, None, HELP.format(names=", ".join(names())),
                                           flag_values=fv, lock_config=True)
  fv[name].parser = NamedConfigParser(fv[name].parser)
  return holder
