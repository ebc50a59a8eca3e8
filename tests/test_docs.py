"""The documentation: generated references current, README short and true to CI, data in place.

The site itself is built with warnings as errors by .ci/run (`mkdocs build --strict`:
broken links, missing anchors and pages left out of the navigation fail it).
"""

import difflib
import glob
import importlib.util
import inspect
import os
import re

import pytest

from tests.helpers import ROOT

DOCS = os.path.join(ROOT, "docs")


@pytest.fixture(scope="module")
def gen():
  spec = importlib.util.spec_from_file_location("gen_reference",
                                                os.path.join(DOCS, "gen_reference.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _read(*parts):
  with open(os.path.join(ROOT, *parts)) as f:
    return f.read()


@pytest.mark.parametrize("page", ["config.md", "cli.md"])
def test_reference_page_is_current(gen, page):
  """The page on disk equals what docs/gen_reference.py makes from the code now."""
  want = gen.PAGES[page]()
  have = _read("docs", "reference", page)
  diff = "".join(difflib.unified_diff(have.splitlines(True), want.splitlines(True),
                                      f"docs/reference/{page}", "generated", n=1))
  assert have == want, ("out of date: run `python docs/gen_reference.py` and commit "
                        f"docs/reference/{page}\n{diff[:4000]}")


def test_config_reference_covers_every_field(gen):
  from ran_jax import config_lib

  page = gen.config_reference()
  fields = config_lib.known_fields()
  rows = dict(re.findall(r"^\| `([\w.]+)` \| (.*?) \|", page, re.M))
  assert set(fields) <= set(rows)
  for path, default in fields.items():
    assert rows[path] == gen._cell(f"`{default!r}`"), path
  # Every field is explained where it is defined (a comment beside or above it).
  comments = gen.field_comments(inspect.getsource(config_lib.base_config))
  assert [p for p, inline, block in comments if not (inline or block)] == []


def test_field_comments_reads_inline_continued_and_leading_comments(gen):
  source = '''def base_config():
  c = ml_collections.ConfigDict()
  c.seed = 0                   # parameter init
  c.data = ml_collections.ConfigDict()
  c.data.name = "digits"       # a built-in name
                               # or any TFDS name
  # A leading comment
  # on two lines.
  c.data.attribute = ""
  c.data.train_limit = 0
'''
  assert gen.field_comments(source) == [
      ("seed", "parameter init", ""),
      ("data.name", "a built-in name or any TFDS name", ""),
      ("data.attribute", "", "A leading comment on two lines."),
      ("data.train_limit", "", ""),
  ]


def test_cli_reference_has_every_console_command(gen):
  page = _read("docs", "reference", "cli.md")
  scripts = gen.console_scripts()
  assert scripts and all(f"## `{name}`" in page for name in scripts)
  assert ROOT not in page and os.path.expanduser("~") + "/" not in page


def test_readme_is_short_and_runs_what_ci_runs():
  readme = _read("README.md")
  assert len(readme.splitlines()) <= 150
  ci = _read(".ci", "run")
  # What follows the install (pip's -q aside): the lint and the test invocation.
  lines = [line.strip() for line in ci.splitlines()]
  lint = next(line for line in lines if line.startswith(".venv/bin/ruff"))
  tests = next(line for line in lines if line.startswith(".venv/bin/python -m pytest"))
  test_command = f"{lint} && {tests}"
  install = next(line for line in lines if line.startswith(".venv/bin/pip install"))
  assert "-r requirements-dev.txt -e ." in install, "CI installs the package, as command 2 does"
  assert ("pip install -r requirements-dev.txt -e . && " + test_command) in readme, (
      "README command 2 must run .ci/run's lint and test command")
  # Command 1 installs the package (its commands), then trains with the installed command.
  first_screen = "\n".join(readme.splitlines()[:40])
  assert ("source .venv/bin/activate && pip install -r requirements.txt . && "
          "ran-train --config=digits_lenet --workdir=runs/digits") in first_screen


def _user_pages():
  """README and the hand-written pages (not the reports that runs wrote: robustness/, search_*)."""
  pages = [os.path.join(ROOT, "README.md")]
  pages += glob.glob(os.path.join(DOCS, "*.md"))
  for sub in ("tutorials", "howto", "reference", "explanation", "results"):
    pages += glob.glob(os.path.join(DOCS, sub, "*.md"))
  return pages


def test_user_pages_need_no_checkout_beside_the_repository():
  offenders = [os.path.relpath(p, ROOT) for p in _user_pages()
               if "../shared" in open(p).read() or "/work/shared" in open(p).read()]
  assert offenders == []


def test_results_data_live_in_docs_data():
  loose = [f for f in os.listdir(DOCS) if f.endswith((".csv", ".json"))]
  assert loose == []
  linked = set()
  for page in _user_pages():
    linked |= set(re.findall(r"docs/data/([\w./-]+\.(?:csv|json))", open(page).read()))
  missing = [f for f in linked if not os.path.exists(os.path.join(DOCS, "data", f))]
  assert linked and missing == []


def test_every_page_is_in_the_navigation():
  import yaml

  with open(os.path.join(ROOT, "mkdocs.yml")) as f:
    site = yaml.safe_load(f)
  assert site["strict"] is True

  def pages(nav):
    for item in nav:
      value = next(iter(item.values())) if isinstance(item, dict) else item
      if isinstance(value, list):
        yield from pages(value)
      else:
        yield value

  in_nav = set(pages(site["nav"]))
  on_disk = {os.path.relpath(p, DOCS) for p in glob.glob(os.path.join(DOCS, "**", "*.md"),
                                                          recursive=True)}
  assert on_disk - in_nav == set() and in_nav - on_disk == set()


def test_readme_links_resolve():
  """Every relative link of the README (inline or reference-style) names a file that exists."""
  readme = _read("README.md")
  targets = re.findall(r"\]\(([^)\s]+)\)", readme) + re.findall(r"^\[\w+\]: (\S+)$", readme, re.M)
  local = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+://", t)]
  assert local and [t for t in local if t and not os.path.exists(os.path.join(ROOT, t))] == []


@pytest.mark.parametrize("task", ["har", "fsdd"])
def test_identity_front_circles_the_recommended_config(task, tmp_path):
  """docs/gen_fronts.py draws each front from the sweeps' CSVs in docs/data, and the point
  it circles as the recommended config is one of their rows, drawn once (a renamed or
  dropped point fails here)."""
  spec = importlib.util.spec_from_file_location("gen_fronts", os.path.join(DOCS, "gen_fronts.py"))
  fronts = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(fronts)
  csvs, _, recommended, _ = fronts.FRONTS[task]
  paths = [p for p in (os.path.join(DOCS, "data", c) for c in csvs) if os.path.exists(p)]
  pts = fronts.front_points(paths, recommended)
  assert [p["label"] for p in pts if p.get("highlight")] == [recommended]
  assert len({(p["group"], p["label"]) for p in pts}) == len(pts)   # no point drawn twice
  out = fronts.draw(task, out_dir=str(tmp_path))
  assert os.path.getsize(out) > 10_000
