"""Smoke test of the experiment scripts (each in --quick mode, one shared tiny world and run cache)
and exact checks of the pieces they are built from."""

import json
import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from esmjax import config as config_lib  # noqa: E402
from esmjax import metrics  # noqa: E402
from experiments import common  # noqa: E402

SCRIPTS = ("esmm_table", "sparsity_curve", "esm2_table", "esm2_ablations")


@pytest.mark.slow
def test_every_script_runs_in_quick_mode(tmp_path):
  import importlib

  out, cache = str(tmp_path / "results"), str(tmp_path / "cache")
  payloads = {}
  for name in SCRIPTS:
    mod = importlib.import_module(f"experiments.{name}")
    payloads[name] = mod.main(["--quick", "--out", out, "--cache_dir", cache])
    md = open(os.path.join(out, f"{name}.md")).read()
    assert (
      md.startswith("<!-- written by `python -m experiments.")
      and "| model" in md
      or "| fraction" in md
      or "| group" in md
    )
    with open(os.path.join(out, f"{name}.json")) as f:
      js = json.load(f)
    assert js["mode"] == "quick" and js["seeds"] == [0]
  assert os.path.getsize(os.path.join(out, "sparsity_curve_auc.png")) > 0

  # One record per run, shared across scripts through the cache: ESMM of the table is ESMM of ESM2's.
  esmm_a = payloads["esmm_table"]["runs"]["esmm"][0]
  esmm_b = payloads["esm2_table"]["runs"]["esmm"][0]
  assert esmm_a["key"] == esmm_b["key"] and esmm_a["metrics"] == esmm_b["metrics"]
  for r in [*payloads["esmm_table"]["runs"]["base"], esmm_a]:
    for k in ("cvr/auc", "ctcvr/auc", "cvr/entire_space_auc", "ctr/auc"):
      assert 0.0 <= r["metrics"][k] <= 1.0
  # The world sweep trained on another world (click_bait=1): other runs, another selection ratio,
  # and the default world's point reuses the table's runs.
  default_pt, bait_pt = payloads["esmm_table"]["world_sweep"]
  assert default_pt["default"] and default_pt["runs"]["esmm"][0]["key"] == esmm_a["key"]
  assert not bait_pt["default"] and bait_pt["value"] == 1.0
  assert {r["key"] for r in bait_pt["runs"]["esmm"]}.isdisjoint({esmm_a["key"]})
  assert (
    bait_pt["world_stats_eval"]["selection_ratio"]
    != default_pt["world_stats_eval"]["selection_ratio"]
  )
  # The SCart-only ablation trained another model than the reference (it read another label).
  abl = payloads["esm2_ablations"]
  scart = abl["runs"]["DAction: SCart only"][0]
  assert scart["key"] != abl["reference_runs"][0]["key"]
  groups = abl["group_runs"]["esm2"][0]["groups"]
  assert [g["group"] for g in groups["history"]] == ["[0,10]", "[11,20]", "[21,50]", "[51,+]"]
  assert sum(g["impressions"] for g in groups["train_buys"]) == esmm_a["metrics"]["n/impressions"]


def test_purchase_group_aucs_exact():
  from esmjax.data import dataset as D

  schema = D.Schema(
    sparse=(D.SparseField("u", 10),),
    multi=(),
    dense=(D.DenseField("user_buys_hist"),),
    labels=("click", "buy"),
    truth=(),
  )
  click = np.array([1, 1, 1, 1, 0, 1, 1, 1], np.uint8)
  buy = np.array([1, 0, 1, 0, 0, 0, 1, 0], np.uint8)
  cols = {
    "labels": np.stack([click, buy], 1),
    "user": np.array([1, 1, 2, 2, 3, 3, 4, 4]),
    "dense": np.array([[0], [0], [15], [15], [60], [60], [30], [30]], np.float32),
    "pcvr": np.array([0.9, 0.1, 0.2, 0.8, 0.5, 0.5, 0.6, 0.4]),
    "pctcvr": np.array([0.5, 0.1, 0.1, 0.4, 0.0, 0.2, 0.3, 0.2]),
  }
  train = {"labels": np.array([[1, 1], [1, 1], [1, 0]], np.uint8), "user": np.array([2, 2, 4])}
  g = common.purchase_group_aucs(cols, schema, train)
  hist = {r["group"]: r for r in g["history"]}
  assert hist["[0,10]"]["cvr_auc"] == 1.0 and hist["[11,20]"]["cvr_auc"] == 0.0
  assert hist["[21,50]"]["cvr_auc"] == 1.0 and math.isnan(
    hist["[51,+]"]["cvr_auc"]
  )  # no buyer: no AUC
  assert hist["[51,+]"]["impressions"] == 2 and hist["[51,+]"]["clicks"] == 1
  tb = {
    r["group"]: r for r in g["train_buys"]
  }  # user 2 bought twice in training, users 1, 3, 4 never
  assert tb["[2,+]"]["impressions"] == 2 and tb["0"]["impressions"] == 6
  zero = g["train_buys"][0]
  assert zero["impressions"] == 6
  mask = np.isin(cols["user"], [1, 3, 4])
  c = mask & (click == 1)
  assert zero["cvr_auc"] == metrics.auc(buy[c], cols["pcvr"][c])


def test_paired_differences_match_seeds():
  a = [{"seed": 0, "metrics": {"m": 0.7}}, {"seed": 1, "metrics": {"m": 0.6}}]
  b = [{"seed": 1, "metrics": {"m": 0.5}}, {"seed": 2, "metrics": {"m": 0.1}}]
  assert common.paired(a, b, "m") == [pytest.approx(0.1)]


def test_baseline_configs_override_only_their_model():
  default = config_lib.default_config()
  for name, model, key, value in (
    ("aman_50", "aman", "aman_rate", 0.5),
    ("oversampling_10", "oversampling", "oversample_k", 10.0),
    ("esmm_ns", "esmm_ns", None, None),
    ("dnn_os", "dnn_os", "oversample_k", 5.0),
  ):
    c = config_lib.validate(common.load_config(name))
    assert c.model.name == model
    if key:
      assert c.model[key] == value
    assert c.model.embed_dim == default.model.embed_dim and tuple(c.model.hidden) == tuple(
      default.model.hidden
    )


def test_daction_label_is_validated():
  c = config_lib.default_config()
  c.model.daction_label = "basket"
  with pytest.raises(config_lib.ConfigError, match="model.daction_label"):
    config_lib.validate(c)
