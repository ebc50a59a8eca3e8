"""ran_jax: privacy-preserving representations with the Reconstructive Adversarial Network.

The Python API: one function per job, keyword arguments, the same defaults as the
commands (`ran-train`, `ran-attack`, ...), which only parse flags and call these.

  import ran_jax

  metrics = ran_jax.train("digits_lenet", "runs/digits")      # -> final test metrics
  report = ran_jax.attack(workdir="runs/digits")              # -> the attack report (dict)
  report = ran_jax.erase(workdir="runs/har", attribute="subject")  # -> an attribute eraser
  rows = ran_jax.sweep("digits_lenet", "runs/sweep")           # -> results.csv rows
  state = ran_jax.search("digits_lenet", "runs/search", max_trainings=3)
  manifest = ran_jax.deploy("runs/digits")                     # -> WORKDIR/deploy/
  report = ran_jax.plan("imagenet_vgg", "v5e-8")               # -> a TPU slice's compile plan
  config = ran_jax.get_config("digits_lenet:smoke")            # a ConfigDict to edit
  trained = ran_jax.load_trained("runs/digits")                # the exported networks

`train`, `attack`, `erase`, `sweep`, `search`, `deploy` and `plan` are the modules of those
commands, callable as their function (`ran_jax.attack(...)` is `ran_jax.attack.attack(...)`);
they and their dependencies (JAX, TensorFlow) load on first use, so `import ran_jax` is quick.
"""

from __future__ import annotations

import importlib

from ran_jax import storage as _storage

__version__ = "0.1.0"

_storage.use_gcsfs()   # gs:// paths through gcsfs, before any module touches one

# The jobs: each a module `ran_jax.<name>` callable as its same-named function.
_JOBS = ("train", "attack", "erase", "sweep", "search", "deploy", "plan")
_FUNCTIONS = {"get_config": ("ran_jax.configs", "get_config"),
              "load_trained": ("ran_jax.export", "load_trained")}

__all__ = ["__version__", *_JOBS, *_FUNCTIONS]


def __getattr__(name: str):
  if name in _JOBS:
    return importlib.import_module(f"{__name__}.{name}")
  if name in _FUNCTIONS:
    module, attr = _FUNCTIONS[name]
    return getattr(importlib.import_module(module), attr)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(__all__))
