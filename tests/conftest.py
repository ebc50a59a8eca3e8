"""Test setup: 4 fake CPU devices so every sharded step really runs on a mesh.

The test run shares one persistent XLA compilation cache, with the train.py
subprocesses too (through the environment): the end-to-end tests start many
processes that compile the same programs, and on 2 CPU cores compilation is most
of their time. A cached executable is the same program, so results are unchanged.
Set RAN_TEST_COMPILATION_CACHE=0 to compile everything afresh.

The tests compile with XLA's backend optimisations off (JAX's own switch,
JAX_DISABLE_MOST_OPTIMIZATIONS, inherited by the subprocesses): the programs are the same
HLO, lowered by LLVM without its optimisation passes, which halves compilation, most of
the suite's time, while the tests' tiny shapes make the slower code cost nothing. Values
move by float rounding only (a few ulps: no fast-math is on either way). A test that
compares with numbers recorded under the default level, or whose claim must hold as users
compile (bit-exact resume, 1 vs 8 devices), is marked `xla_optimized` and compiles as users
do; its train.py subprocesses are started with `tests.helpers.run_train(...,
optimized=True)`, which does not pass the variable on. RAN_TEST_XLA_OPTIMIZE=1 runs the
whole suite that way.

The README's test command runs the tests in two pytest-xdist workers (`-n 2 --dist
loadfile`: a file stays on one worker, so its module fixtures are built once). On a
2-core machine most of a test's time is single-threaded XLA compilation, so two workers
finish in about half the time. The files that take longest are handed out first
(`_LONGEST_FIRST`), so that the short ones fill the gaps at the end.

`-m "not slow"` leaves out the end-to-end tests (train.py, the notebook and the bench
commands as subprocesses, and the tests of a module fixture that trains) for a quick run.
"""

import atexit
import os
import shutil
import sys
import tempfile

import pytest

# Read by JAX when it is imported, and by every subprocess through the environment.
_OPTIMIZE = os.environ.get("RAN_TEST_XLA_OPTIMIZE", "0") == "1"
if not _OPTIMIZE:
  os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"

import jax  # noqa: E402

jax.config.update("jax_disable_most_optimizations", not _OPTIMIZE)
# Must happen before any JAX computation initialises the backend.
jax.config.update("jax_num_cpu_devices", 4)

if os.environ.get("RAN_TEST_COMPILATION_CACHE", "1") != "0":
  # pytest-xdist workers inherit the directory the controlling process made (it loads this
  # file first), so the workers and their subprocesses share one cache; its maker removes it.
  _cache = os.environ.get("RAN_TEST_XLA_CACHE")
  if not _cache or not os.path.isdir(_cache):
    _cache = tempfile.mkdtemp(prefix="ran_jax_test_xla_cache_")
    os.environ["RAN_TEST_XLA_CACHE"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_cache,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  jax.config.update("jax_compilation_cache_dir", _cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


# Test files by their CPU time, longest first (measured with the suite on 2 cores); the rest
# follow in their usual order.
_LONGEST_FIRST = ("test_train_e2e.py", "test_tpu_plan.py", "test_commands.py",
                  "test_batch_norm_groups.py", "test_paper_tasks.py", "test_fast_conv.py",
                  "test_packaging.py", "test_defences.py", "test_distributed.py",
                  "test_fused.py", "test_deploy.py", "test_search_resume.py",
                  "test_attacker_inversion.py", "test_stages.py")


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "xla_optimized: compile with XLA's default optimisations (the test compares "
      "with values recorded under them)")
  config.addinivalue_line(
      "markers", "slow: end to end (subprocesses, a notebook, a trained module fixture); "
      "`-m 'not slow'` for a quick local run")
  if hasattr(config.option, "loadscopereorder"):
    # pytest-xdist would hand out files by their number of tests; keep the order below.
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


@pytest.fixture(autouse=True)
def _xla_optimization_level(request):
  """In-process compilation at XLA's default level for tests marked `xla_optimized`."""
  if request.node.get_closest_marker("xla_optimized") is None or _OPTIMIZE:
    yield
    return
  jax.config.update("jax_disable_most_optimizations", False)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", True)
