"""Mutation testing of the modules behind ran_jax's claims.

Each mutant is one change of one operator in one module (cosmic-ray's operators on a parso
tree, plus the two below): a sign, a comparison or its boundary, a boolean, a small integer,
a min for a max. The mutant is written over the module in a private copy of the repository
(build/mutation/tree<N>), and the tests that cover its line (found once per module by
coverage's per-test contexts) run against it with pytest, stopping at the first failure.
A failing test kills the mutant; a passing run lets it survive.

    python mutation/run.py run [--module losses ...] [--workers 2] [--fresh]
    python mutation/run.py report          # mutation/REPORT.md from mutation/results/
    python mutation/run.py sample          # CI: the fixed mutants of mutation/sample.toml
    python mutation/run.py list losses     # the mutants of a module, with their ids

Results are kept in mutation/results/<module>.json, written after every mutant: an
interrupted run resumes where it stopped (`--fresh` starts over). A mutant's id is
`<function>/<operator>/<k>`: the k-th place in that function where the operator applies,
stable when other functions change. Equivalent mutants (no behaviour can tell them apart)
are listed with their reason in mutation/explained.toml and counted apart. A line ending in
`# pragma: no mutate` is not mutated.

Why not mutmut: mutmut 3 forks a child per mutant from a process that has already run the
tests, and XLA's thread pools do not survive a fork; its trampolines also live in a copy
(`mutants/`) that the train.py subprocesses of the end-to-end tests never import.
"""

import argparse
import concurrent.futures
import contextlib
import dataclasses
import difflib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib

import parso
import parso.python.tree
from cosmic_ray.ast import Visitor
from cosmic_ray.mutating import MutationVisitor
from cosmic_ray.operators.operator import Operator
from cosmic_ray.plugins import get_operator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, "mutation")
BUILD = os.path.join(ROOT, "build", "mutation")
RESULTS = os.path.join(HERE, "results")
NO_MUTATE = "# pragma: no mutate"

# cosmic-ray's operators that make the bugs a refactor makes. Left out: replacing one
# arithmetic operator by every other (an Add by a BitXor is not a slip anyone makes), the
# exception replacer and the decorator remover (they test Python, not ran_jax).
CORE = (
    "ReplaceBinaryOperator_Add_Sub", "ReplaceBinaryOperator_Sub_Add",
    "ReplaceBinaryOperator_Mul_Div", "ReplaceBinaryOperator_Div_Mul",
    "ReplaceBinaryOperator_FloorDiv_Div", "ReplaceBinaryOperator_Pow_Mul",
    "ReplaceComparisonOperator_Eq_NotEq", "ReplaceComparisonOperator_NotEq_Eq",
    "ReplaceComparisonOperator_Lt_LtE", "ReplaceComparisonOperator_LtE_Lt",
    "ReplaceComparisonOperator_Gt_GtE", "ReplaceComparisonOperator_GtE_Gt",
    "ReplaceComparisonOperator_Lt_GtE", "ReplaceComparisonOperator_Gt_LtE",
    "ReplaceComparisonOperator_Is_IsNot", "ReplaceComparisonOperator_IsNot_Is",
    "ReplaceUnaryOperator_USub_UAdd", "ReplaceUnaryOperator_Delete_Not",
    "ReplaceTrueWithFalse", "ReplaceFalseWithTrue",
    "ReplaceAndWithOr", "ReplaceOrWithAnd",
    "ReplaceBreakWithContinue",
)

_SWAP = {"min": "max", "max": "min", "minimum": "maximum", "maximum": "minimum",
         "argmin": "argmax", "argmax": "argmin", "nanmin": "nanmax", "nanmax": "nanmin",
         "amin": "amax", "amax": "amin"}


class SwapMinMax(Operator):
  """min for max (and minimum, argmin, nanmin, amin), called as a function or a method."""

  def mutation_positions(self, node):
    if (isinstance(node, parso.python.tree.Name) and node.value in _SWAP
        and not node.is_definition() and _is_called(node)):
      yield (node.start_pos, node.end_pos)

  def mutate(self, node, index):
    return parso.python.tree.Name(_SWAP[node.value], node.start_pos, node.prefix)

  @classmethod
  def examples(cls):
    return ()


def _is_called(name):
  """`max(...)`, `jnp.max(...)`, `x.max(...)`: the name is followed by a call."""
  parent = name.parent
  if parent.type == "trailer":  # `.max` inside `jnp.max(...)`
    siblings, holder = parent.parent.children, parent
  else:
    siblings, holder = parent.children, name
  idx = siblings.index(holder)
  nxt = siblings[idx + 1] if idx + 1 < len(siblings) else None
  return nxt is not None and nxt.type == "trailer" and nxt.children[0].value == "("


class NumberPlusOne(Operator):
  """A small integer constant (0 to 4) one higher: an off-by-one, an index, a count."""

  def mutation_positions(self, node):
    if isinstance(node, parso.python.tree.Number):
      try:
        value = eval(node.value)  # noqa: S307 - a parsed Python number literal
      except SyntaxError:
        return
      if isinstance(value, int) and 0 <= value <= 4:
        yield (node.start_pos, node.end_pos)

  def mutate(self, node, index):
    return parso.python.tree.Number(str(eval(node.value) + 1), node.start_pos, node.prefix)

  @classmethod
  def examples(cls):
    return ()


def operators():
  ops = {name: get_operator(f"core/{name}")() for name in CORE}
  ops["SwapMinMax"] = SwapMinMax()
  ops["NumberPlusOne"] = NumberPlusOne()
  return ops


@dataclasses.dataclass
class Mutant:
  id: str
  operator: str
  occurrence: int
  line: int
  code: str


class _Positions(Visitor):
  """Every place (in MutationVisitor's walk order) where an operator applies."""

  def __init__(self, operator):
    self.operator = operator
    self.found = []

  def visit(self, node):
    for _ in self.operator.mutation_positions(node):
      self.found.append(node)
    return node


def _qualname(node):
  names = []
  scope = node.parent
  while scope is not None:
    if scope.type in ("funcdef", "classdef"):
      names.append(scope.name.value)
    scope = scope.parent
  return ".".join(reversed(names)) or "<module>"


def _in_docstring(node):
  return isinstance(node, parso.python.tree.String)


def mutants(path, scope=()):
  """All mutants of the file at `path`, restricted to functions under `scope` if given."""
  with open(path, encoding="utf-8") as f:
    source = f.read()
  lines = source.split("\n")
  out, counts = [], {}
  for op_name, op in operators().items():
    visitor = _Positions(op)
    visitor.walk(parso.parse(source))
    for occurrence, node in enumerate(visitor.found):
      line = node.start_pos[0]
      qual = _qualname(node)
      if NO_MUTATE in lines[line - 1] or _in_docstring(node):
        continue
      if scope and not any(qual == s or qual.startswith(s + ".") for s in scope):
        continue
      key = (qual, op_name)
      k = counts.get(key, 0)
      counts[key] = k + 1
      code = MutationVisitor.mutate_code(source, op, occurrence)
      if code is None or code == source:
        continue
      out.append(Mutant(f"{qual}/{op_name}/{k}", op_name, occurrence, line, code))
  out.sort(key=lambda m: (m.line, m.id))
  return source, out


def diff(source, code, path):
  return "\n".join(difflib.unified_diff(source.split("\n"), code.split("\n"), f"a/{path}",
                                        f"b/{path}", lineterm="", n=1))


def load_modules():
  with open(os.path.join(HERE, "modules.toml"), "rb") as f:
    return tomllib.load(f)


def _env(tree):
  env = dict(os.environ)
  os.makedirs(os.path.join(BUILD, "xla_cache"), exist_ok=True)
  env.update(PYTHONPATH=tree, PYTHONDONTWRITEBYTECODE="1",
             RAN_TEST_XLA_CACHE=os.path.join(BUILD, "xla_cache"))
  return env


def make_tree(index):
  """A private copy of the repository's tracked and new files, for one worker."""
  tree = os.path.join(BUILD, f"tree{index}")
  shutil.rmtree(tree, ignore_errors=True)
  files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split("\n")
  for rel in filter(None, files):
    src = os.path.join(ROOT, rel)
    if rel.startswith("mutation/") or not os.path.isfile(src):
      continue
    dst = os.path.join(tree, rel)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copy2(src, dst)
  return tree


def _pytest(tree, args, timeout, log):
  """Runs pytest in `tree`; returns (exit code or None on timeout, seconds)."""
  cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]
  start = time.monotonic()
  with open(log, "w") as out:
    proc = subprocess.Popen(cmd, cwd=tree, env=_env(tree), stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
      rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
      rc = None
  return rc, time.monotonic() - start


def coverage_map(name, spec, tree):
  """Per line of the module, the tests (pytest node ids) that run it, and their seconds.

  The module's tests run once, unmutated, in two pytest-xdist workers under coverage with
  per-test contexts; they must pass. Lines run only inside subprocesses (train.py) are not
  seen, and their mutants run the module's whole test list.
  """
  os.makedirs(BUILD, exist_ok=True)
  data = os.path.join(BUILD, f"{name}.coverage")
  junit = os.path.join(BUILD, f"{name}.xml")
  rcfile = os.path.join(BUILD, f"{name}.coveragerc")
  # the module's file by path: naming it as a module (--cov=pkg.mod) makes coverage import
  # its package before the tests start, which some packages' imports do not survive
  with open(rcfile, "w") as f:
    f.write(f"[run]\nbranch = false\ninclude =\n    {os.path.join(tree, spec['path'])}\n")
  args = ["-q", "-n", "2", "--dist", "loadfile", "--cov", "--cov-context=test",
          f"--cov-config={rcfile}", "--cov-report=", f"--junitxml={junit}", *spec["tests"]]
  env_extra = {"COVERAGE_FILE": data}
  os.environ.update(env_extra)
  # not named after the data file: coverage erases those
  log = os.path.join(BUILD, f"{name}.covrun.log")
  rc, _ = _pytest(tree, args, spec.get("coverage_timeout", 3600), log)
  if rc != 0:
    sys.exit(f"{name}: the unmutated tests do not pass (exit {rc}); see {log}")
  import coverage
  import xml.etree.ElementTree as ET
  cov = coverage.CoverageData(basename=data)
  cov.read()
  target = os.path.join(tree, spec["path"])
  by_line = {}
  for line, contexts in cov.contexts_by_lineno(target).items():
    tests = sorted({c.split("|")[0] for c in contexts if c})
    if tests:
      by_line[line] = tests
  seconds = {}
  for case in ET.parse(junit).iter("testcase"):
    file = case.get("classname", "").replace(".", "/")
    seconds[f"{file}.py::{case.get('name')}"] = float(case.get("time", 0))
  return by_line, seconds


def _results_path(name):
  return os.path.join(RESULTS, f"{name}.json")


def _digest(text):
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _commit():
  """HEAD, with "+changes" when tracked files differ from it (the trees copy the work tree)."""
  head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                        text=True).stdout.strip()
  dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "ran_jax",
                          "tests"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
  return head + ("+changes" if dirty else "")


def run_module(name, spec, workers, fresh, only=None, survivors=False):
  path = os.path.join(ROOT, spec["path"])
  missing = [t for t in spec["tests"] if not os.path.exists(os.path.join(ROOT, t.split("::")[0]))]
  if missing:
    sys.exit(f"modules.toml: [{name}] names test files that do not exist: {missing}")
  source, found = mutants(path, spec.get("scope", ()))
  if only:
    found = [m for m in found if m.id in only]
  os.makedirs(RESULTS, exist_ok=True)
  res_file = _results_path(name)
  state = None
  if os.path.exists(res_file) and not fresh:
    with open(res_file) as f:
      state = json.load(f)
    if state["source"] != _digest(source):
      sys.exit(f"{name}: {spec['path']} changed since {res_file} was written; rerun with --fresh")
  if state is None:
    state = {"module": spec["path"], "source": _digest(source), "mutants": {}}
  state.update(commit=_commit(), total=len(found) if not only else state.get("total", len(found)))
  if survivors:  # the tests changed: their coverage again, then every mutant not killed
    state.pop("coverage", None)   # (an equivalent one, explained.toml, cannot be: kept)
    equivalent = load_explained().get(name, {})
    for mid in [i for i, r in state["mutants"].items()
                if r["status"] in ("survived", "error") and i not in equivalent]:
      del state["mutants"][mid]
  todo = [m for m in found if m.id not in state["mutants"]]
  print(f"{name}: {len(found)} mutants, {len(todo)} to run", flush=True)
  if not todo:
    _write(res_file, state)
    return state
  trees = [make_tree(i) for i in range(workers)]
  if "coverage" not in state or fresh:
    by_line, seconds = coverage_map(name, spec, trees[0])
    state["coverage"] = {"lines": {str(k): v for k, v in by_line.items()}, "seconds": seconds}
    _write(res_file, state)
  lines = state["coverage"]["lines"]
  seconds = state["coverage"]["seconds"]
  lock = threading.Lock()
  free = list(trees)
  done = [0]

  def one(m):
    with lock:
      tree = free.pop()
    try:
      tests = lines.get(str(m.line))
      if tests is None:
        tests, how = list(spec["tests"]), "module's tests (line not run in-process)"
      else:  # the quickest first: with -x, a killed mutant stops at its first failure
        tests, how = sorted(tests, key=lambda t: seconds.get(t, 30.0)), "covering tests"
      # tests that run the function in subprocesses, which coverage does not see
      qualname = m.id.split("/")[0]
      extra = [t for prefix, ts in spec.get("subprocess_tests", {}).items()
               if qualname.startswith(prefix) for t in ts if t not in tests]
      if extra:
        tests, how = tests + extra, how + " + subprocess tests"
      budget = 90 + 3 * sum(seconds.get(t, 30.0) for t in tests)
      target = os.path.join(tree, spec["path"])
      log = os.path.join(BUILD, f"{name}.mutant.{os.path.basename(tree)}.log")
      with open(target, "w", encoding="utf-8") as f:
        f.write(m.code)
      try:
        rc, secs = _pytest(tree, ["-x", "-q", "-rfE", "--timeout=0", *tests], budget, log)
      finally:
        with open(target, "w", encoding="utf-8") as f:
          f.write(source)
      with open(log) as f:
        output = f.read()
      status = {None: "timeout", 0: "survived", 1: "killed", 2: "killed"}.get(rc, "error")
      failed = [ln for ln in output.split("\n") if ln.startswith(("FAILED", "ERROR"))][:3]
      record = {"status": status, "line": m.line, "operator": m.operator, "how": how,
                "tests": len(tests), "seconds": round(secs, 1), "killed_by": failed,
                "diff": diff(source, m.code, spec["path"])}
      if status == "error":
        record["output"] = output[-2000:]
      with lock:
        state["mutants"][m.id] = record
        _write(res_file, state)
        done[0] += 1
        print(f"  [{done[0]}/{len(todo)}] {m.id} (line {m.line}): {status} in {secs:.0f} s",
              flush=True)
    finally:
      with lock:
        free.append(tree)

  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for fut in [pool.submit(one, m) for m in todo]:
      fut.result()
  return state


def _write(path, state):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(state, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def load_explained():
  path = os.path.join(HERE, "explained.toml")
  if not os.path.exists(path):
    return {}
  with open(path, "rb") as f:
    return tomllib.load(f)


def summarise(name, state, explained):
  counts = dict(mutants=state.get("total", 0), run=len(state["mutants"]), killed=0, timeout=0,
                survived=0, equivalent=0, error=0)
  survivors = []
  for mid, r in state["mutants"].items():
    if r["status"] == "survived" and mid in explained:
      counts["equivalent"] += 1
    else:
      counts[r["status"]] += 1
      if r["status"] in ("survived", "error"):
        survivors.append((mid, r))
  live = counts["run"] - counts["equivalent"]
  counts["score"] = (counts["killed"] + counts["timeout"]) / live if live else float("nan")
  return counts, survivors


def report():
  modules = load_modules()
  explained = load_explained()
  out = ["# Mutation testing report", "",
         "Generated by `python mutation/run.py report` from `mutation/results/` "
         "(regenerate all with `python mutation/run.py run --fresh`; "
         "see tests/README.md). Operators: cosmic-ray's "
         + ", ".join(f"`{o}`" for o in CORE) + ", and the script's `SwapMinMax` and "
         "`NumberPlusOne`. Score: (killed + timed out) / (mutants run - equivalent).", "",
         "| module | commit | mutants | run | killed | timed out | survived | equivalent |"
         " error | score |", "|---|---|---|---|---|---|---|---|---|---|"]
  details = []
  for name, spec in modules.items():
    path = _results_path(name)
    if not os.path.exists(path):
      out.append(f"| `{spec['path']}` | - | not run | | | | | | | |")
      continue
    with open(path) as f:
      state = json.load(f)
    c, survivors = summarise(name, state, explained.get(name, {}))
    scope = f" ({', '.join(spec['scope'])})" if spec.get("scope") else ""
    with open(os.path.join(ROOT, spec["path"])) as f:
      stale = "" if _digest(f.read()) == state["source"] else " (stale: the module changed since)"
    commit = state["commit"][:10] + ("+changes" if state["commit"].endswith("+changes") else "")
    out.append(f"| `{spec['path']}`{scope} | `{commit}`{stale} | {c['mutants']} | "
               f"{c['run']} | {c['killed']} | {c['timeout']} | {c['survived']} | "
               f"{c['equivalent']} | {c['error']} | {100 * c['score']:.1f} % |")
    if survivors:
      details += [f"## Survivors in `{spec['path']}`", ""]
      for mid, r in survivors:
        details += [f"### `{mid}` (line {r['line']}, {r['status']})", "", "```diff",
                    r["diff"], "```", ""]
    eq = explained.get(name, {})
    if eq:
      details += [f"## Equivalent mutants in `{spec['path']}`", ""]
      details += [f"- `{mid}`: {why}" for mid, why in eq.items()] + [""]
  text = "\n".join(out + [""] + details)
  with open(os.path.join(HERE, "REPORT.md"), "w") as f:
    f.write(text)
  print(text.split("\n\n## ")[0])


def sample(workers):
  """Runs the fixed mutants of sample.toml (each with the tests named there) and fails if
  any survives: a new blind spot in the sampled code shows in the next CI run."""
  with open(os.path.join(HERE, "sample.toml"), "rb") as f:
    spec = tomllib.load(f)
  modules = load_modules()
  trees = [make_tree(i) for i in range(workers)]
  jobs = []
  for name, entry in spec.items():
    path = os.path.join(ROOT, modules[name]["path"])
    source, found = mutants(path, modules[name].get("scope", ()))
    by_id = {m.id: m for m in found}
    missing = [i for i in entry["ids"] if i not in by_id]
    if missing:
      sys.exit(f"sample.toml: {name} has no mutant {missing} (the code moved: pick again "
               f"with `python mutation/run.py list {name}`)")
    jobs += [(name, modules[name]["path"], source, by_id[i], entry["tests"]) for i in entry["ids"]]
  lock, free, bad = threading.Lock(), list(trees), []

  # The sampled tests must pass on the code as it is, or a "kill" would mean nothing.
  for name, entry in spec.items():
    rc, secs = _pytest(trees[0], ["-q", *entry["tests"]], 600,
                       os.path.join(BUILD, f"sample.{name}.clean.log"))
    print(f"{name}: its sampled tests on the unmutated code: "
          f"{'pass' if rc == 0 else 'FAIL'} ({secs:.0f} s)", flush=True)
    if rc != 0:
      sys.exit(f"sample.toml: the tests of {name} fail without a mutant (see "
               f"{os.path.join(BUILD, f'sample.{name}.clean.log')}); fix them first")

  def one(job):
    name, rel, source, m, tests = job
    with lock:
      tree = free.pop()
    try:
      target = os.path.join(tree, rel)
      with open(target, "w") as f:
        f.write(m.code)
      try:
        rc, secs = _pytest(tree, ["-x", "-q", *tests], 300,
                           os.path.join(BUILD, f"sample.{os.path.basename(tree)}.log"))
      finally:
        with open(target, "w") as f:
          f.write(source)
      status = {None: "timeout", 0: "SURVIVED", 1: "killed", 2: "killed"}.get(rc, "error")
      print(f"{name} {m.id}: {status} ({secs:.0f} s)", flush=True)
      if status in ("SURVIVED", "error"):
        with lock:
          bad.append((name, m.id, diff(source, m.code, rel)))
    finally:
      with lock:
        free.append(tree)

  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for fut in [pool.submit(one, j) for j in jobs]:
      fut.result()
  for name, mid, d in bad:
    print(f"\n{name} {mid} was not killed by its tests:\n{d}")
  sys.exit(1 if bad else 0)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  run = sub.add_parser("run", help="run the mutants, resuming unless --fresh")
  run.add_argument("--module", action="append", help="a name in mutation/modules.toml")
  run.add_argument("--id", action="append", help="only these mutant ids")
  run.add_argument("--workers", type=int, default=2)
  run.add_argument("--fresh", action="store_true")
  run.add_argument("--survivors", action="store_true",
                   help="after changing the tests: rerun the mutants that survived")
  sub.add_parser("report", help="write mutation/REPORT.md")
  smp = sub.add_parser("sample", help="the fixed CI sample (sample.toml)")
  smp.add_argument("--workers", type=int, default=2)
  lst = sub.add_parser("list", help="the mutants of one module")
  lst.add_argument("module")
  args = parser.parse_args()
  modules = load_modules()
  if args.command == "run":
    names = args.module or list(modules)
    unknown = [n for n in names if n not in modules]
    if unknown:
      sys.exit(f"unknown module {unknown}; known: {', '.join(modules)}")
    for name in names:
      run_module(name, modules[name], args.workers, args.fresh, set(args.id or ()),
                 args.survivors)
    report()
  elif args.command == "report":
    report()
  elif args.command == "sample":
    sample(args.workers)
  else:
    if args.module not in modules:
      sys.exit(f"unknown module {args.module!r}; known: {', '.join(modules)}")
    spec = modules[args.module]
    source, found = mutants(os.path.join(ROOT, spec["path"]), spec.get("scope", ()))
    for m in found:
      print(f"{m.id}  (line {m.line})")
    print(f"{len(found)} mutants", file=sys.stderr)


if __name__ == "__main__":
  with contextlib.suppress(KeyboardInterrupt):
    main()
