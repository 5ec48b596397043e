"""Smoke test of the experiment scripts (each in --quick mode, one shared tiny world and run cache)
and exact checks of the pieces they are built from."""

import json
import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from esmjax.config import defaults as config_lib  # noqa: E402
from esmjax.evaluation import metrics  # noqa: E402
from experiments import common, groups, runs, stats  # noqa: E402

SCRIPTS = ("esmm_table", "sparsity_curve", "esm2_table", "esm2_ablations")
# In the paper world (quick: a tiny world at lower rates), in an order that lets later scripts
# reuse earlier runs: the probe's runs are the sweep's lowest rate, the debiasing's and the tables'.
PAPER_SCRIPTS = (
  ("eval_size_probe", []),
  ("cvr_sweep", []),
  ("debiasing", []),
  ("esmm_table", ["--world=paper"]),
  ("esm2_table", ["--world=paper"]),
)


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

  # One record per run, shared across scripts through the cache: the table's ESMM is ESM2's.
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
  from esmjax.data.format import dataset as D

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
  g = groups.purchase_group_aucs(cols, schema, train)
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


@pytest.mark.slow
def test_paper_world_scripts_run_in_quick_mode(tmp_path):
  import importlib

  out, cache = str(tmp_path / "results"), str(tmp_path / "cache")
  payloads, files, records = {}, {}, {}
  for name, flags in PAPER_SCRIPTS:
    mod = importlib.import_module(f"experiments.{name}")
    payloads[name] = mod.main(["--quick", *flags, "--out", out, "--cache_dir", cache])
    files[name] = common.results_name(name, "paper" if flags else "default")
    md = open(os.path.join(out, f"{files[name]}.md")).read()
    assert md.startswith(f"<!-- written by `python -m experiments.{name} --quick")
    assert "| " in md and "regenerate, do not edit" in md
    with open(os.path.join(out, f"{files[name]}.json")) as f:
      js = json.load(f)
    assert js["mode"] == "quick" and js["seeds"] == [0] and js["command"].startswith("python -m")
    records[name] = js
  assert files["esmm_table"] == "esmm_table_paper" and files["esm2_table"] == "esm2_table_paper"
  for png in ("cvr_sweep.png", "debiasing.png"):
    assert os.path.getsize(os.path.join(out, png)) > 0

  # The paper-world table trained in the paper world (its rates), and shares the probe's runs.
  table = payloads["esmm_table"]
  quick_paper = common.WORLD_SETTINGS["quick"]["paper"]["synthetic"]
  assert records["esmm_table"]["world"] == "paper"
  assert records["esmm_table"]["world_config"]["cvr"] == quick_paper["cvr"]
  assert records["esmm_table"]["world_config"]["ctr"] == quick_paper["ctr"]
  probe_esmm = payloads["eval_size_probe"]["runs"]["esmm"][0]
  assert table["runs"]["esmm"][0]["key"] == probe_esmm["key"]
  assert payloads["debiasing"]["runs"]["paper"]["esmm"][0]["key"] == probe_esmm["key"]
  # The sweep's own-rate point is the paper world; its other rate another world, same clicks.
  sweep = payloads["cvr_sweep"]
  low, high = min(sweep["rates"]), max(sweep["rates"])
  assert sweep["runs"][f"esmm@{low:g}"][0]["key"] == probe_esmm["key"]
  assert sweep["runs"][f"esmm@{high:g}"][0]["key"] != probe_esmm["key"]
  ws = sweep["world_stats"]
  assert ws[str(low)]["eval"]["clicks"] == ws[str(high)]["eval"]["clicks"]
  assert ws[str(low)]["eval"]["buys"] < ws[str(high)]["eval"]["buys"]
  # Debiasing: every model in both worlds; the probe measured both noise sources per size.
  deb = payloads["debiasing"]["runs"]
  assert set(deb) == {"default", "paper"}
  for w in deb:
    assert set(deb[w]) == {"base", "esmm", "escm2_ipw", "escm2_dr", "aitm", "esm2"}
    for recs in deb[w].values():
      assert 0 < recs[0]["metrics"]["cvr/entire_space_calibration"] < 100
  rows = payloads["eval_size_probe"]["measurements"]
  assert [r["n"] for r in rows if r["key"] == "cvr/auc"] == [2048, 4096]
  for r in rows:
    for p in r["pairs"].values():
      assert all(se > 0 for se in p["eval_se"])


def test_delong_matches_structural_components():
  rng = np.random.default_rng(0)
  y = rng.random(60) < 0.3
  a = np.round(rng.normal(size=60) + y, 1)  # ties, within and across the classes
  b = np.round(rng.normal(size=60) + 0.5 * y, 1)
  x_a, x_b = (a[y], a[~y]), (b[y], b[~y])

  def psi(p, n):  # 1 if the positive is above, ½ on a tie
    return (p[:, None] > n[None, :]) + 0.5 * (p[:, None] == n[None, :])

  aucs, cov = stats.delong(y, [a, b])
  ka, kb = psi(*x_a), psi(*x_b)
  assert aucs[0] == pytest.approx(ka.mean()) and aucs[1] == pytest.approx(kb.mean())
  assert aucs[0] == pytest.approx(metrics.auc(y, a))
  m, n = y.sum(), (~y).sum()
  v10 = np.stack([ka.mean(1), kb.mean(1)])
  v01 = np.stack([ka.mean(0), kb.mean(0)])
  want = np.cov(v10) / m + np.cov(v01) / n
  np.testing.assert_allclose(cov, want, rtol=1e-12)
  d, se = stats.paired_se(y, a, b)
  assert d == pytest.approx(aucs[0] - aucs[1])
  assert se == pytest.approx(np.sqrt(want[0, 0] + want[1, 1] - 2 * want[0, 1]))
  assert stats.auc_se(y, a) == pytest.approx(np.sqrt(want[0, 0]))
  assert stats.paired_se(y, a, a)[1] == 0.0  # a model against itself: no eval noise
  with pytest.raises(ValueError, match="at least 2 positives"):
    stats.delong(np.array([1, 0, 0]), [np.array([0.1, 0.2, 0.3])])


def test_shipped_configs_take_the_world():
  from esmjax.data.synthetic import cache as synthetic

  paper = synthetic.world_config("paper")
  names = ["esmm", "esm2", "escm2_ipw", "escm2_dr", "aitm"] + [
    os.path.splitext(f)[0] for f in os.listdir(os.path.join(common.REPO, "configs", "baselines"))
  ]
  for name in names:
    default_cfg, paper_cfg = common.load_config(name), common.load_config(name, "paper")
    assert default_cfg.data.synthetic.to_dict() == synthetic.world_config("default").to_dict()
    assert paper_cfg.data.synthetic.to_dict() == paper.to_dict(), name
    assert paper_cfg.model.to_dict() == default_cfg.model.to_dict()
    assert paper_cfg.train.to_dict() == default_cfg.train.to_dict()
  with pytest.raises(ValueError, match="allowed: \\['default', 'paper'\\]"):
    common.load_config("esmm", "nope")


def test_cli_config_flag_passes_the_world():
  from absl import flags
  from ml_collections import config_flags

  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config", flag_values=fv)
  path = os.path.join(common.REPO, "configs", "esmm.py")
  fv(["prog", f"--config={path}:paper"])
  assert fv.config.data.synthetic.cvr == pytest.approx(0.0053)
  assert fv.config.data.synthetic.ctr == pytest.approx(0.04)
  fv2 = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config", flag_values=fv2)
  fv2(["prog", f"--config={path}"])
  assert fv2.config.data.synthetic.cvr == pytest.approx(0.09)


def test_experiment_config_sizes_each_world():
  full_default = common.experiment_config("esmm", "full", 3, world="default")
  assert full_default.data.synthetic.block_rows == 1024 and full_default.data.window_blocks == 64
  assert full_default.train.seed == 3 and full_default.train.batch_size == 1024
  full_paper = common.experiment_config("base", "full", 0, world="paper")
  from esmjax.data.synthetic import cache as synthetic

  assert full_paper.data.synthetic.to_dict() == synthetic.world_config("paper").to_dict()
  assert full_paper.model.name == "base" and full_paper.train.batch_size == 1024
  over = common.experiment_config("esmm", "full", 0, world="paper", **{"data.synthetic.cvr": 0.01})
  assert over.data.synthetic.cvr == 0.01 and over.data.synthetic.ctr == 0.04
  assert runs.run_key(over) != runs.run_key(full_paper)
  assert common.results_name("esmm_table", "paper") == "esmm_table_paper"
  assert common.results_name("esmm_table", "default") == "esmm_table"


def test_paired_differences_match_seeds():
  a = [{"seed": 0, "metrics": {"m": 0.7}}, {"seed": 1, "metrics": {"m": 0.6}}]
  b = [{"seed": 1, "metrics": {"m": 0.5}}, {"seed": 2, "metrics": {"m": 0.1}}]
  assert common.paired(a, b, "m") == [pytest.approx(0.1)]


def test_baseline_configs_override_only_their_model():
  default = config_lib.default_config()
  for name, model, key, value in (
    ("aman:rate=0.5", "aman", "aman_rate", 0.5),
    ("oversampling:k=10", "oversampling", "oversample_k", 10.0),
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


@pytest.mark.parametrize("rates", ["0.2,x", "0.2,1.5", ","])
def test_cvr_sweep_refuses_bad_rates(rates, capsys):
  from experiments import cvr_sweep

  with pytest.raises(SystemExit) as e:
    cvr_sweep.main([f"--rates={rates}", "--quick"])
  assert e.value.code == 2
  assert f"argument --rates: {rates!r}" in capsys.readouterr().err


@pytest.mark.slow
def test_large_batch_quick_scales_the_learning_rates(tmp_path):
  from experiments import large_batch

  out, cache = str(tmp_path / "results"), str(tmp_path / "cache")
  payload = large_batch.main(["--quick", "--out", out, "--cache_dir", cache])
  md = open(os.path.join(out, "large_batch.md")).read()
  # Quick mode: reference batch 512, so sqrt at 2,048 doubles both rates.
  assert "| ESMM | 2,048 | sqrt (towers + tables) | 0.002 / 0.1 |" in md
  assert "| ESMM | 2,048 | none | 0.001 / 0.05 |" in md and "## Against batch 512" in md
  none, scaled = payload["runs"]["esmm/b2048/none/all"], payload["runs"]["esmm/b2048/sqrt/all"]
  assert none[0]["key"] != scaled[0]["key"]
  assert none[0]["metrics"]["ctr/logloss"] != scaled[0]["metrics"]["ctr/logloss"]


def test_run_key_of_auto_is_the_dtype_it_resolves_to(monkeypatch):
  """model.dtype=auto is cached under the dtype it trains with on this machine: an f32 run keeps
  the key it had when float32 was the default, a bf16 one shares an explicit bfloat16 run's."""
  from esmjax.models import model as model_lib

  cfg = lambda **o: common.experiment_config("esmm", "full", 0, world="paper", **o)
  k32, k16 = (
    runs.run_key(cfg(**{"model.dtype": "float32"})),
    runs.run_key(cfg(**{"model.dtype": "bfloat16"})),
  )
  assert "model.dtype" not in runs._config_diff(cfg(**{"model.dtype": "float32"}))
  assert k32 != k16
  for resolved, want in (("bfloat16", k16), ("float32", k32)):
    monkeypatch.setattr(model_lib, "auto_dtype", lambda *a, r=resolved, **k: (r, "test"))
    assert cfg().model.dtype == "auto" and runs.run_key(cfg()) == want


def test_bf16_quality_pairs_the_dtypes_by_seed_against_f32_seed_noise(tmp_path):
  from experiments import bf16_quality

  out, cache = str(tmp_path / "results"), str(tmp_path / "cache")
  p = bf16_quality.main(["--quick", "--models=esmm", "--out", out, "--cache_dir", cache])
  f32, bf = p["runs"]["esmm/float32"][0], p["runs"]["esmm/bfloat16"][0]
  assert f32["seed"] == bf["seed"] == 0 and f32["key"] != bf["key"]
  assert f32["train_rows"] == bf["train_rows"] and f32["metrics"] != bf["metrics"]
  by_metric = {c["metric"]: c for c in p["checks"]}
  assert set(by_metric) == {k for k, _, _ in bf16_quality.KEYS}
  d = by_metric["cvr/auc"]
  assert d["mean_diff"] == pytest.approx(bf["metrics"]["cvr/auc"] - f32["metrics"]["cvr/auc"])
  md = open(os.path.join(out, "bf16_quality_paper.md")).read()
  assert "| ESMM | bfloat16 | 0 |" in md and "the leading 50% of" in md
  # The verdict: a paired difference within the f32 seeds' spread holds, one beyond it does not.
  rec = lambda seed, v: {"seed": seed, "metrics": {k: v for k, _, _ in bf16_quality.KEYS}}
  res = {
    ("esmm", "float32"): [rec(0, 0.70), rec(1, 0.72), rec(2, 0.74)],  # seed std 0.02
    ("esmm", "bfloat16"): [rec(0, 0.71), rec(1, 0.73), rec(2, 0.75)],
    ("esm2", "float32"): [rec(0, 0.70), rec(1, 0.72), rec(2, 0.74)],
    ("esm2", "bfloat16"): [rec(0, 0.75), rec(1, 0.77), rec(2, 0.79)],
  }
  checks = bf16_quality.verdicts(res)
  assert all(c["within_noise"] for c in checks if c["model"] == "esmm")
  assert not any(c["within_noise"] for c in checks if c["model"] == "esm2")
