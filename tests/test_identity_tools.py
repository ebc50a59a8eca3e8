"""Identity in the tools: the search's --objective=identity (choice on the validation part,
confirmation on the test part, resume) and the sweep's identity columns and front.

Data: a tiny .npz of 28x28 images with an attribute `who` (4 values): a brighter quadrant,
so that the real attribute attackers have something to find.
"""

import csv
import json
import os
import shutil

import numpy as np
import pytest

from configs import digits_lenet
from ran_jax import export, input_pipeline, parallel, search, search_report, sweep
from ran_jax.config_lib import ConfigError
from ran_jax.data.source import ArraySplit, DataSource, attach_attribute
from ran_jax.privacy import identity, methods, protocol, results
from ran_jax.program import InputSpec, build_program
from tests.test_search import BUDGET, REF_ACC, marker_train, synthetic_evaluate

N_ATTR = 4


@pytest.fixture(scope="module")
def npz_path(tmp_path_factory):
  rng = np.random.default_rng(0)
  out = {}
  for split, n in (("train", 64), ("test", 32)):
    who = np.arange(n) % N_ATTR
    x = rng.uniform(0, 0.5, (n, 28, 28, 1)).astype(np.float32)
    for i, w in enumerate(who):                      # the attribute: a bright quadrant
      x[i, 14 * (w // 2):14 * (w // 2 + 1), 14 * (w % 2):14 * (w % 2 + 1), 0] += 0.5
    out.update({f"x_{split}": x, f"y_{split}": rng.integers(0, 3, n), f"who_{split}": who})
  path = str(tmp_path_factory.mktemp("npz") / "who.npz")
  np.savez(path, **out)
  return path


def config_with_attribute(npz_path):
  c = digits_lenet.get_config("smoke")           # train_limit 48, test_limit 40
  c.data.name, c.data.attribute = npz_path, "who"
  c.model.widths, c.model.classifier_hidden, c.model.conv_impl = (4, 8), (16,), "xla"  # fast
  return c


@pytest.fixture(scope="module")
def copy_export(npz_path, tmp_path_factory):
  """A train_fn that copies one exported untrained network (built once: its compilation is
  most of these tests' time) and writes the run's config.json."""
  cfg = config_with_attribute(npz_path)
  first = str(tmp_path_factory.mktemp("export"))
  source = input_pipeline.load_dataset(cfg.data)
  program = build_program(cfg, parallel.make_mesh(), InputSpec.of(source), total_steps=6)
  export.export_trained(first, program.create_state(0), cfg, program.input_spec, source.name)

  def train_fn(cfg, workdir):
    shutil.copytree(os.path.join(first, export.EXPORT_DIR),
                    os.path.join(workdir, export.EXPORT_DIR))
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(cfg.to_json_best_effort())

  return train_fn


# ---------------------------------------------------------------- the choosing split


def _source(rule):
  n = 240
  rng = np.random.default_rng(0)
  att, lab = np.arange(n) % N_ATTR, (np.arange(n) // N_ATTR) % 3
  x = rng.normal(0, 1, (n, 2, 2, 1)).astype(np.float32)
  tr = np.arange(n) < 160
  order = np.where(tr, np.arange(n), np.arange(n) - 160)
  if rule == "recording":
    order = order % 50
  src = DataSource("fake", ArraySplit(x[tr], lab[tr]), ArraySplit(x[~tr], lab[~tr]), (2, 2, 1), 3)
  return attach_attribute(src, "who", {"train": att[tr], "test": att[~tr]},
                          {"train": order[tr], "test": order[~tr]}, rule)


@pytest.mark.parametrize("rule", ["time", "recording", "stratified"])
def test_choosing_pool_never_holds_the_test_part(rule):
  src = _source(rule)
  full = identity.split_pool(src, identity.IdentityConfig())
  pick = identity.split_pool(src, identity.IdentityConfig(scored_part="validation"))
  n_train = len(src.train)
  parts = (pick.fit, pick.val, pick.test)
  for part in parts:
    assert len(part) and part.max() < n_train          # training-split examples only
    assert not set(part) & set(full.test)              # the figure's test part: never
  assert not set(pick.fit) & set(pick.val) and not set(pick.val) & set(pick.test)
  assert not set(pick.fit) & set(pick.test)
  # what is scored to choose is the full attack's validation part (its training-split rows)
  np.testing.assert_array_equal(pick.test, full.val[full.val < n_train])
  assert set(pick.fit) | set(pick.val) <= set(full.fit)


# ---------------------------------------------------------------- the search


def synthetic_identity(calls, fail_at=None):
  """Identity top-1 lowest at feature_noise 0.5 (not monotone: the choice must read it);
  runs the real split so that a bad scored part fails here."""

  def identity_fn(workdir, source, cfg, name):
    calls.append((name, cfg.scored_part))
    if fail_at is not None and len(calls) == fail_at:
      raise RuntimeError("killed")
    identity.split_pool(source, cfg)
    with open(os.path.join(workdir, "config.json")) as f:
      sigma = json.load(f)["model"]["feature_noise"]
    top1 = 0.3 + abs(sigma - 0.5)
    worst = {"attacker": "knn", "top1": top1, "ci95": [top1 - 0.1, top1 + 0.1]}
    single = {"attackers": {}, "worst": worst,
              "person": {"attacker": "logreg", "top1": top1 + 0.05, "releases": 10}}
    settings = {"single": single}
    if sigma:
      settings["clean"] = {"attackers": {}, "worst": {**worst, "top1": top1 + 0.1}}
    return {"attribute": "who", "chance": 0.25, "feature_noise": sigma, "settings": settings,
            "split": {"scored_part": cfg.scored_part, "n_test": 12,
                      "test_values": 3 if cfg.scored_part == "validation" else 4}}

  return identity_fn


def test_identity_objective_chooses_within_budget_and_resumes(tmp_path, npz_path):
  cfg = config_with_attribute(npz_path)
  wd = str(tmp_path / "search")
  kw = dict(knob="model.feature_noise", low=0.0, high=2.0, max_accuracy_drop=BUDGET,
            max_trainings=4, resolution=0.0, objective="identity")
  calls = []
  with pytest.raises(RuntimeError, match="killed"):   # dies scoring the 2nd candidate
    search.run_search(cfg, wd, train_fn=marker_train([]), evaluate_fn=synthetic_evaluate([]),
                      identity_fn=synthetic_identity(calls, fail_at=3), **kw)
  state = json.load(open(os.path.join(wd, search.STATE_FILE)))
  assert state["reference"]["identity"]["single"] == pytest.approx(0.8)
  assert [c["identity"]["worst"] for c in state["candidates"]] == [pytest.approx(0.9)]  # 1.0

  calls2, trains = [], []
  state = search.run_search(cfg, wd, train_fn=marker_train(trains),
                            evaluate_fn=synthetic_evaluate([]),
                            identity_fn=synthetic_identity(calls2), **kw)
  # finished identity scores are read back; only the rest are attacked
  assert calls2 == [("feature_noise0.5", "validation"), ("feature_noise0.75", "validation"),
                    ("feature_noise0.625", "validation"), ("reference", "test"),
                    ("feature_noise0.5", "test")]
  assert [n for n, _, _ in trains] == ["feature_noise0.75", "feature_noise0.625"]
  values = {c["value"]: c for c in state["candidates"]}
  assert sorted(values) == [0.5, 0.625, 0.75, 1.0]
  assert [values[v]["within_budget"] for v in sorted(values)] == [True, True, False, False]
  # the reconstruction objective would take the most private qualifying 0.625; identity
  # takes the lowest worst-case top-1 (of one release, clean features, the person)
  assert state["chosen"]["value"] == 0.5
  c = values[0.625]["identity"]
  assert c["worst"] == pytest.approx(max(c["single"], c["clean"], c["person"]))
  assert c["worst"] == pytest.approx(0.425 + 0.1)
  assert state["candidates"][0]["accuracy"] >= REF_ACC - BUDGET
  conf = state["confirm"]["chosen"]["identity"]
  assert conf["scored_part"] == "test" and conf["chance"] == 0.25
  report = open(os.path.join(wd, "report.md")).read()
  assert "what chose the point" in report and "validation part" in report
  assert "Identity confirmed" in report and "| chosen | 0.3000" in report
  assert report.count("holds 3 of the 4 values") == 1   # chance among the scored values
  assert os.path.getsize(os.path.join(wd, "front_identity.png")) > 1000

  # rerun: nothing trained or attacked; another objective in this workdir is refused
  calls3 = []
  search.run_search(cfg, wd, train_fn=marker_train(trains), evaluate_fn=synthetic_evaluate([]),
                    identity_fn=synthetic_identity(calls3), **kw)
  assert calls3 == [] and len(trains) == 2
  with pytest.raises(search.SearchError, match="other settings"):
    search.run_search(cfg, wd, train_fn=marker_train([]), evaluate_fn=synthetic_evaluate([]),
                      **{**kw, "objective": "reconstruction"})


def test_identity_search_through_real_exports_and_attackers(tmp_path, npz_path, copy_export):
  """An untrained network exported as the trainer does, scored by the real attribute
  attackers; reconstruction scores are synthetic."""
  assert search.fast_identity_config().attackers == ("logreg", "knn")   # the CLI's default
  id_fast = search.fast_identity_config(("knn",), person_releases=2, person_groups=20)
  id_full = identity.IdentityConfig(attackers=("knn",), seeds=(0,), releases=(), raw=False,
                                    person_releases=2, person_groups=20, bootstrap=50)
  wd = str(tmp_path / "real")
  state = search.run_search(config_with_attribute(npz_path), wd, knob="ran.lam",
                            max_accuracy_drop=1.0, max_trainings=1, train_fn=copy_export,
                            evaluate_fn=synthetic_evaluate([]), objective="identity",
                            identity_fast_cfg=id_fast, identity_full_cfg=id_full)
  assert state["chosen"]["value"] == 0.5
  cand = json.load(open(os.path.join(wd, "points", "lam0.5", search.IDENTITY_FILE)))
  conf = json.load(open(os.path.join(wd, "confirm", "lam0.5", search.IDENTITY_FILE)))
  assert cand["split"]["scored_part"] == "validation" and conf["split"]["scored_part"] == "test"
  assert cand["config"]["seeds"] == [0] and conf["config"]["seeds"] == [0]
  assert cand["split"]["n_test"] < conf["split"]["n_test"]
  # the planted attribute is found even through an untrained encoder, above chance (0.25)
  assert state["confirm"]["chosen"]["identity"]["worst"] > 0.5
  assert "Identity confirmed" in open(os.path.join(wd, "report.md")).read()


@pytest.mark.parametrize("kw, message", [
    (dict(objective="privacy"), "--objective='privacy'"),
    (dict(objective="identity"), "needs a sensitive attribute"),
])
def test_bad_objective_arguments(kw, message):
  args = dict(knob="model.feature_noise", low=None, high=None, max_accuracy_drop=0.005,
              max_trainings=6, val_fraction=0.1)
  with pytest.raises(search.SearchError, match=message):
    search.check_args(digits_lenet.get_config("smoke"), **args, **kw)


def test_new_knobs(npz_path):
  assert search.check_args(digits_lenet.get_config("smoke"), "ran.compactness", None, None,
                           0.005, 6, 0.1) == (0.0, 20.0)
  with pytest.raises(ConfigError, match="needs a sensitive attribute"):   # the game needs one
    search.check_args(digits_lenet.get_config("smoke"), "ran.attribute_weight", None, None,
                      0.005, 6, 0.1)
  cfg = config_with_attribute(npz_path)
  assert search.check_args(cfg, "ran.attribute_weight", None, None, 0.005, 6, 0.1,
                           objective="identity") == (0.0, 8.0)
  assert search.knob_value(0.25, "ran.attribute_weight", 0.0, 8.0) == 2.0
  cfg.ran.attribute_weight = 1.0   # the reference plays no game
  assert search.reference_overrides(cfg)["ran.attribute_weight"] == 0.0
  cfg.ran.entangle = 2.0          # nor the entanglement penalty
  assert search.reference_overrides(cfg)["ran.entangle"] == 0.0
  assert search.check_args(cfg, "ran.entangle", None, None, 0.005, 6, 0.1,
                           objective="identity") == (0.0, 8.0)
  with pytest.raises(ConfigError, match="needs a sensitive attribute"):
    search.check_args(digits_lenet.get_config("smoke"), "ran.entangle", None, None,
                      0.005, 6, 0.1)
  assert "ran.attribute_weight" not in search.reference_overrides(config_with_attribute(npz_path))


# ---------------------------------------------------------------- the sweep


def test_sweep_identity_columns_and_front(tmp_path, npz_path, copy_export, monkeypatch):
  config = config_with_attribute(npz_path)
  out = str(tmp_path / "sweep")
  icfg = identity.IdentityConfig(attackers=("knn",), seeds=(0,), releases=(), raw=False,
                                 person_releases=2, person_groups=20, bootstrap=50)
  ecfg = protocol.AttackConfig(attackers=("ridge",), retrain_classifier=False, n_show=4,
                               n_scatter=40)
  kw = dict(lams=[], noise_factors=[0.5], eval_cfg=ecfg, identity_cfg=icfg,
            include=("dnn", "dnn_resized"))
  rows = sweep.run_sweep(config, out, train_fn=copy_export, **kw)
  with open(os.path.join(out, "results.csv"), newline="") as f:
    got = list(csv.DictReader(f))
  assert [r["method"] for r in got] == ["dnn", "dnn_resized"]
  for r, point in zip(got, ("dnn", "dnn_resized_f0.5")):
    assert r["attribute"] == "who" and float(r["attribute_chance"]) == 0.25
    parts = [float(r[f"attribute_{k}_top1"]) for k in ("single", "clean", "person")]
    assert float(r["attribute_worst_top1"]) == pytest.approx(max(parts))
    # each figure is its point's attack result: the single release's worst attacker...
    saved = json.load(open(os.path.join(out, "points", point, sweep.IDENTITY_FILE)))
    single = saved["settings"]["single"]
    assert parts[0] == pytest.approx(max(a["top1"] for a in single["attackers"].values()))
    assert parts[0] == pytest.approx(single["worst"]["top1"])
    assert parts[2] == pytest.approx(single["person"]["top1"])   # ...and the person's
  dnn_id = json.load(open(os.path.join(out, "points", "dnn", sweep.IDENTITY_FILE)))
  assert set(dnn_id["settings"]) == {"single"}          # noise-free: clean = one release
  assert float(got[0]["attribute_clean_top1"]) == float(got[0]["attribute_single_top1"])
  resized = json.load(open(os.path.join(out, "points", "dnn_resized_f0.5", sweep.IDENTITY_FILE)))
  assert set(resized["settings"]) == {"single", "clean"}
  assert os.path.getsize(os.path.join(out, "pareto_identity.png")) > 1000

  # resume: nothing attacked again; --attribute='' leaves the columns empty
  def boom(*a, **k):
    raise AssertionError("a finished point was attacked again")

  monkeypatch.setattr(identity, "attack_identity", boom)
  assert sweep.run_sweep(config, out, train_fn=copy_export, make_figures=False, **kw) == rows
  off = sweep.run_sweep(config, out, train_fn=copy_export, make_figures=False, attribute="", **kw)
  assert all(r[c] == "" for r in off for c in results.IDENTITY_COLUMNS)


def test_baseline_releases_for_the_identity_attack():
  """The Noisy and DNN(resized) baselines as releases (what the sweep's identity attack
  receives): fresh noise on each release, none in the clean features."""
  import jax

  from tests.test_identity import FakeTrained

  x = np.random.default_rng(0).normal(0, 1, (40, 4, 4, 1)).astype(np.float32)
  noisy = sweep.NoisyRelease(2.0)
  k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
  np.testing.assert_array_equal(np.asarray(noisy.features(x)), x)
  assert float(np.std(np.asarray(noisy.encode(x, k1)) - x)) == pytest.approx(2 * np.sqrt(2),
                                                                             rel=0.2)
  enc = FakeTrained(16, dim_out=8)
  resized = sweep.ResizedRelease(enc, methods.ResizedEncoder(enc, x, 1.0, 3))
  clean = np.asarray(resized.features(x))
  a, b = np.asarray(resized.encode(x, k1)), np.asarray(resized.encode(x, k2))
  assert clean.shape == (40, 8) and not np.allclose(a, b)
  # The release is the clean projection plus Laplace noise of the encoder's scale on the
  # principal components, nothing else: read back through the components, it is that draw.
  comp = np.asarray(resized.components)
  assert comp.shape == (3, 8)
  np.testing.assert_allclose(comp @ comp.T, np.eye(3), atol=1e-5)
  noise = np.asarray(jax.random.laplace(k1, (40, 3))) * np.asarray(resized.scale)
  np.testing.assert_allclose((a - clean) @ comp.T, noise, atol=1e-4)


def test_identity_front_draws_the_label_only_floor(tmp_path, monkeypatch):
  """The front draws the label-only floors (one example, a person) as horizontal lines at
  their values, labelled as such; without them no such line is drawn."""
  from matplotlib import pyplot as plt

  from ran_jax.privacy import figures

  kept = []
  monkeypatch.setattr(plt, "close", kept.append)
  pts = [{"label": "a", "accuracy": 0.9, "single": 0.05, "clean": 0.2, "person": 0.07,
          "worst": 0.2, "group": "g"}]
  assert figures.identity_front(pts, str(tmp_path / "f.png"), 1 / 30, label_only=0.0479,
                                label_only_person=0.0447)
  assert figures.identity_front(pts, str(tmp_path / "g.png"), 1 / 30)

  def floors(fig):
    return {ln.get_label().rsplit(" ", 1)[0]: ln.get_ydata()[0]
            for ln in fig.axes[0].get_lines() if "label-only" in ln.get_label()}

  assert floors(kept[0]) == {"label-only floor, one example": pytest.approx(0.0479),
                             "label-only floor, person": pytest.approx(0.0447)}
  assert floors(kept[1]) == {}


def test_candidates_can_be_scored_by_the_searched_budget_attackers():
  """--fast_identity_budget: every family of the declared budget, searched, on validation."""
  from ran_jax.privacy import budget as budget_lib

  cfg = search.fast_identity_config(budget="light", seed=3, person_releases=7)
  light = budget_lib.get_budget("light").identity
  assert tuple(cfg.attackers) == tuple(light.families) and tuple(cfg.draws) == tuple(light.draws)
  assert cfg.scored_part == "validation" and cfg.seeds == (0,) and cfg.seed == 3
  assert cfg.person_releases == 7 and cfg.budget == "light" and cfg.set_attacker
  thorough = search.fast_identity_config(budget="thorough")
  assert "boosting" in thorough.attackers and tuple(thorough.draws) == (1, 4, 16)
  whole = search_report._whole_budget
  assert whole(cfg.to_dict()) and whole(thorough.to_dict())
  assert not whole(search.fast_identity_config().to_dict())
  with pytest.raises(search.SearchError, match="fast_identity_budget='heavy'"):
    search.search("digits_lenet:smoke", "/nonexistent/never_written", objective="identity",
                  fast_identity_budget="heavy")
