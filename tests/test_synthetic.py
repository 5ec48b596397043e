"""The synthetic world: determinism, label consistency, schema validity, selection bias, caching."""

import json
import os

import numpy as np
import pytest
import tiny

from esmjax.data.format import dataset as ds_lib
from esmjax.data.pipeline import batches as pipeline
from esmjax.data.synthetic import cache as syn

TINY = tiny.TINY_WORLD  # the world of the tests below


@pytest.fixture(scope="module")
def world():
  return syn.build_world(TINY)


@pytest.fixture(scope="module")
def train_rows(world):
  return ds_lib.concat_blocks(list(syn.iter_blocks(world, "train")))


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
  cache = str(tmp_path_factory.mktemp("cache"))
  return cache, syn.ensure_dataset(TINY, cache)


def _read(d):
  return ds_lib.open_dataset(d).read_all()


def test_config_rejects_unknown_and_out_of_range():
  with pytest.raises(ValueError, match="num_user"):
    syn.resolve_config({"num_user": 3})
  with pytest.raises(ValueError, match="shared_structure"):
    syn.resolve_config({"shared_structure": 1.5})
  assert syn.config_hash(TINY) == syn.config_hash(syn.resolve_config(TINY))
  assert syn.config_hash(TINY) != syn.config_hash(dict(TINY, click_bait=1.0))


def test_generate_is_deterministic(tmp_path, cached):
  _, (train_dir, _) = cached
  syn.generate(TINY, str(tmp_path / "a"), "train")
  a, b = _read(str(tmp_path / "a")), _read(train_dir)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  ma = json.load(open(tmp_path / "a" / "manifest.json"))
  mb = json.load(open(os.path.join(train_dir, "manifest.json")))
  assert ma == mb
  assert ma["source"]["seed"] == 0 and ma["source"]["config"]["num_train"] == TINY["num_train"]
  other = next(syn.iter_blocks(syn.build_world(dict(TINY, seed=1)), "train"))
  assert not np.array_equal(other["sparse"], a["sparse"][: len(other["sparse"])])
  assert not np.array_equal(other["labels"], a["labels"][: len(other["labels"])])


def test_labels_are_consistent(train_rows):
  lab, truth = train_rows["labels"].astype(bool), train_rows["truth"]
  click, buy, cart, wish, daction = (lab[:, i] for i in range(5))
  would_buy = truth[:, 3]
  assert set(np.unique(would_buy)) <= {0.0, 1.0}
  assert not (buy & ~click).any()
  assert not (cart & ~click).any() and not (wish & ~click).any()
  np.testing.assert_array_equal(daction, cart | wish)
  np.testing.assert_array_equal(buy, click & (would_buy == 1))
  assert click.sum() > 0 and buy.sum() > 0 and cart.sum() > 0 and wish.sum() > 0
  p = truth[:, :3]
  assert ((p > 0) & (p < 1)).all()


def test_schema_is_valid(world, train_rows, cached):
  sch = world.schema
  assert sch.labels == ("click", "buy", "cart", "wish", "daction")
  assert sch.truth == ("pctr", "pcvr", "pdaction", "would_buy")
  assert ds_lib.check_block(sch, train_rows) == TINY["num_train"]
  assert 20 <= len(sch.sparse) + len(sch.multi) <= 26
  sp = train_rows["sparse"]
  for j, f in enumerate(sch.sparse):
    col = sp[:, j]
    assert col.min() >= 0 and col.max() < f.vocab_size, f.name
    assert not (col == ds_lib.OOV).any(), f.name  # real ids start at 2
    if f.group != "combo":
      assert col.min() >= 2, f.name
  ids, w = train_rows["mv_ids"], train_rows["mv_w"]
  for f, off in zip(sch.multi, sch.mv_offsets, strict=True):
    fi, fw = ids[:, off : off + f.max_len], w[:, off : off + f.max_len]
    assert fi.min() >= 0 and fi.max() < f.vocab_size, f.name
    assert not (fi == ds_lib.OOV).any(), f.name
    np.testing.assert_array_equal(fw == 0, fi == ds_lib.PAD, err_msg=f.name)
    assert (fw >= 0).all() and (fi > 0).any(), f.name
  for f in sch.dense:
    assert len(f.boundaries) == 15 and np.all(np.diff(f.boundaries) >= 0) and f.std > 0, f.name
  np.testing.assert_array_equal(train_rows["user"], sp[:, 0])
  np.testing.assert_array_equal(train_rows["sample_id"], np.arange(TINY["num_train"]))
  _, (train_dir, eval_dir) = cached
  ev = _read(eval_dir)
  np.testing.assert_array_equal(ev["sample_id"], TINY["num_train"] + np.arange(TINY["num_eval"]))
  assert ds_lib.open_dataset(train_dir).schema == ds_lib.open_dataset(eval_dir).schema == sch


def test_rates_near_targets(world, train_rows):
  t = train_rows["truth"].astype(np.float64)
  pctr, pcvr, pd = t[:, 0], t[:, 1], t[:, 2]
  cfg = syn.default_config()
  assert abs(pctr.mean() / cfg.ctr - 1) < 0.15
  assert abs(np.average(pcvr, weights=pctr) / cfg.cvr - 1) < 0.15
  assert abs(np.average(pd, weights=pctr) / cfg.daction_rate - 1) < 0.15
  assert 0.03 < train_rows["labels"][:, 0].mean() < 0.07


def test_selection_bias_and_click_bait(world, train_rows):
  t = train_rows["truth"].astype(np.float64)
  click = train_rows["labels"][:, 0].astype(bool)
  pctr, pcvr = t[:, 0], t[:, 1]
  # Exact in expectation: E[pcvr | click] = E[pctr·pcvr] / E[pctr] vs E[pcvr].
  assert abs(np.average(pcvr, weights=pctr) / pcvr.mean() - 1) > 0.1
  assert abs(pcvr[click].mean() / pcvr.mean() - 1) > 0.1
  bait = world.bait[train_rows["sparse"][:, 9] - 2]  # field 205
  hi, lo = bait > np.quantile(bait, 0.8), bait < np.quantile(bait, 0.2)
  assert pctr[hi].mean() > 1.5 * pctr[lo].mean()
  assert pcvr[hi].mean() < 0.67 * pcvr[lo].mean()
  # Without click-bait and shared structure the selection (on pcvr) is much weaker.
  w0 = syn.build_world(dict(TINY, click_bait=0.0, shared_structure=0.0, num_train=8_192))
  t0 = next(syn.iter_blocks(w0, "train"))["truth"].astype(np.float64)
  ratio0 = np.average(t0[:, 1], weights=t0[:, 0]) / t0[:, 1].mean()
  assert abs(ratio0 - 1) < abs(np.average(pcvr, weights=pctr) / pcvr.mean() - 1)


def test_daction_carries_signal(train_rows):
  lab = train_rows["labels"].astype(bool)
  click, buy, daction = lab[:, 0], lab[:, 1], lab[:, 4]
  assert buy[click & daction].mean() > 2 * buy[click & ~daction].mean()


def test_ensure_dataset_caches(cached, capsys):
  cache, (train_dir, eval_dir) = cached
  files = [os.path.join(d, f) for d in (train_dir, eval_dir) for f in os.listdir(d)]
  mtimes = {f: os.stat(f).st_mtime_ns for f in files}
  assert syn.ensure_dataset(TINY, cache) == (train_dir, eval_dir)
  assert "reused" in capsys.readouterr().out
  assert {f: os.stat(f).st_mtime_ns for f in files} == mtimes
  assert sorted(os.listdir(cache)) == [os.path.basename(os.path.dirname(train_dir))]  # no temp left


def test_ensure_dataset_replaces_incomplete(tmp_path, capsys):
  cfg = dict(TINY, num_train=3_000, num_eval=1_000, seed=7)
  root = tmp_path / f"synthetic-{syn.config_hash(cfg)}"
  (root / "train").mkdir(parents=True)
  (root / "train" / "junk").write_text("crashed")
  train_dir, eval_dir = syn.ensure_dataset(cfg, str(tmp_path))
  assert "generated" in capsys.readouterr().out
  assert not os.path.exists(os.path.join(train_dir, "junk"))
  assert ds_lib.open_dataset(train_dir).num_rows == 3_000
  assert ds_lib.open_dataset(eval_dir).num_rows == 1_000


def test_reads_back_through_the_pipeline(cached):
  _, (train_dir, _) = cached
  d = ds_lib.open_dataset(train_dir)
  cfg = pipeline.PipelineConfig(batch_size=1_000, num_epochs=1, prefetch=0)
  it = iter(pipeline.train_iter_dataset(d, cfg))
  batches = list(it)
  assert len(batches) == TINY["num_train"] // 1_000
  b = batches[0]
  assert b["sparse"].shape == (1_000, len(d.schema.sparse))
  assert b["mv_ids"].shape == (1_000, d.schema.mv_total_len)
  assert b["truth"].shape == (1_000, 4)
  ids = np.sort(np.concatenate([x["sample_id"] for x in batches]))
  np.testing.assert_array_equal(ids, np.arange(TINY["num_train"]))


def test_world_stats(cached):
  _, (train_dir, _) = cached
  st = syn.world_stats(train_dir)
  rows = _read(train_dir)
  assert st["rows"] == TINY["num_train"]
  assert st["ctr"] == pytest.approx(rows["labels"][:, 0].mean())
  assert st["buys_per_impression"] == pytest.approx(rows["labels"][:, 1].mean())
  assert st["mean_pcvr_all"] == pytest.approx(rows["truth"][:, 1].mean(), rel=1e-5)
  assert st["mean_pcvr_clicked"] != pytest.approx(st["mean_pcvr_all"], rel=0.05)


def test_named_worlds_and_the_config_that_selects_them():
  from esmjax.config import defaults as config_lib

  paper = syn.world_config("paper")
  assert (paper.ctr, paper.cvr, paper.daction_rate, paper.num_train, paper.num_eval) == (
    0.04,
    0.0053,
    0.2,
    4_000_000,
    1_000_000,
  )
  assert syn.world_config("default").to_dict() == syn.default_config().to_dict()
  assert config_lib.default_config(world="paper").data.synthetic.to_dict() == paper.to_dict()
  assert config_lib.default_config().data.synthetic.to_dict() == syn.default_config().to_dict()
  assert syn.world_config("paper", cvr=0.01, num_eval=10).cvr == 0.01
  with pytest.raises(
    ValueError, match=r"world 'papr' is not defined; allowed: \['default', 'paper'\]"
  ):
    syn.world_config("papr")
  with pytest.raises(ValueError, match=r"unknown key 'cvx'"):
    syn.world_config("paper", cvx=0.01)


def test_paper_world_rates():
  small = {k: v for k, v in TINY.items() if k not in ("num_train", "num_eval")}
  w = syn.build_world(syn.world_config("paper", **small, num_train=40_000, num_eval=0))
  t = np.concatenate([b["truth"] for b in syn.iter_blocks(w, "train")]).astype(np.float64)
  pctr, pcvr = t[:, 0], t[:, 1]
  assert abs(pctr.mean() / 0.04 - 1) < 0.1
  assert abs(np.average(pcvr, weights=pctr) / 0.0053 - 1) < 0.15


def test_conversion_rate_sweeps_hold_impressions_and_clicks():
  rows = {}
  for cvr in (0.09, 0.01, 0.0053):
    w = syn.build_world(dict(TINY, cvr=cvr, num_train=16_384))
    rows[cvr] = ds_lib.concat_blocks(list(syn.iter_blocks(w, "train")))
  base = rows[0.09]
  for cvr in (0.01, 0.0053):
    r = rows[cvr]
    for k in ("sparse", "mv_ids", "mv_w", "dense", "user", "sample_id"):
      np.testing.assert_array_equal(r[k], base[k], err_msg=k)
    # click and daction
    np.testing.assert_array_equal(r["labels"][:, [0, 4]], base["labels"][:, [0, 4]])
    np.testing.assert_array_equal(r["truth"][:, [0, 2]], base["truth"][:, [0, 2]])  # pctr, pdaction
    assert r["labels"][:, 1].sum() < base["labels"][:, 1].sum()  # fewer buys
    click = r["labels"][:, 0].astype(bool)
    assert abs(np.average(r["truth"][:, 1], weights=r["truth"][:, 0]) / cvr - 1) < 0.15
    assert click.sum() == base["labels"][:, 0].sum()


def test_cli_prints_a_named_worlds_statistics(tmp_path):
  args = [f"--set={k}={v}" for k, v in TINY.items()]
  args += ["--set=num_train=8192", "--set=num_eval=4096"]
  r = tiny.run_cli([tmp_path, "--world=paper", *args], module="esmjax.data.synthetic")
  assert r.returncode == 0, r.stderr[-2000:]
  lines = dict(
    line.split(" ", 1) for line in r.stdout.splitlines() if line.startswith(("train ", "eval "))
  )
  train = json.loads(lines["train"])
  assert train["rows"] == 8192 and json.loads(lines["eval"])["rows"] == 4096
  assert 0.02 < train["ctr"] < 0.06 and train["mean_pcvr_clicked"] < 0.01
  r = tiny.run_cli([tmp_path, "--world=nope"], module="esmjax.data.synthetic")
  assert r.returncode == 2, r.stderr
  assert (
    r.stderr
    == "esmjax: error: synthetic world 'nope' is not defined; allowed: ['default', 'paper']\n"
  )
  assert "synthetic world 'nope' is not defined; allowed: ['default', 'paper']" in r.stderr
