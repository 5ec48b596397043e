"""`python -m experiments.full_scale` at a tiny scale (hash buckets capped): every stage runs, the
counts agree from the raw files to the predictions, a rerun skips what finished, and the guards
(another scale in the workdir, too little disk) stop with one line. Also the raw world's generator:
seeded, in the converter's format, its ground truth consistent with its labels."""

from __future__ import annotations

import gzip
import hashlib
from collections import namedtuple

import numpy as np
import pyarrow.parquet as pq
import pytest

from esmjax.data.format import dataset as ds_lib
from esmjax.data.synthetic import aliccp_world
from experiments import full_scale
from experiments import full_scale_stages as st

SCALE = 0.0002  # 8,460 training and 8,600 test impressions


def _lines(path: str) -> list[str]:
  with gzip.open(path, "rt", newline="") as f:
    return f.read().splitlines()


def test_world_is_seeded_and_its_truth_matches_its_labels(tmp_path):
  a = aliccp_world.generate(str(tmp_path / "a"), SCALE, 3, progress=False, workers=1)
  aliccp_world.generate(str(tmp_path / "b"), SCALE, 3, progress=False, workers=1)
  for name in ("sample_skeleton_train.csv.gz", "common_features_test.csv.gz", "truth_test.npy"):
    digests = {hashlib.sha256((tmp_path / d / name).read_bytes()).hexdigest() for d in "ab"}
    assert len(digests) == 1, name
  assert a["splits"]["train"]["rows"] == 8460 and a["splits"]["test"]["rows"] == 8600
  sk = _lines(str(tmp_path / "a" / "sample_skeleton_test.csv.gz"))
  truth = np.load(tmp_path / "a" / "truth_test.npy")
  assert len(sk) == len(truth) == 8600
  cols = [line.split(",", 5) for line in sk]
  sid = np.array([int(c[0]) for c in cols])
  click = np.array([int(c[1]) for c in cols])
  buy = np.array([int(c[2]) for c in cols])
  np.testing.assert_array_equal(sid, np.arange(1, 8601))
  # A buy is a click the true would-buy draw converted; nothing else buys.
  np.testing.assert_array_equal(buy, click * truth[:, 2].astype(int))
  assert 0.03 < click.mean() < 0.05  # the public set's CTR ≈ 4 %
  assert ((truth[:, :2] > 0) & (truth[:, :2] < 1)).all()
  keys = {
    line.split(",", 1)[0] for line in _lines(str(tmp_path / "a" / "common_features_test.csv.gz"))
  }
  assert {c[3] for c in cols} <= keys  # every impression's request is in the common file
  assert all(int(c[4]) == len(c[5].split("\x01")) for c in cols[:500])  # feature_num is right


def test_tiny_full_scale_run_end_to_end_and_resume(tmp_path, capsys):
  work, out = tmp_path / "w", tmp_path / "res"
  argv = [f"--scale={SCALE}", "--buckets=1000", f"--workdir={work}", f"--out={out}", "--name=t"]
  state = full_scale.main(argv)
  assert list(state["stages"]) == list(full_scale.STAGES)
  s = state["stages"]
  world = s["generate"]["world"]["splits"]
  assert s["convert_train"]["rows"] == world["train"]["rows"] == 8460
  assert s["convert_test"]["rows"] == world["test"]["rows"] == 8600
  assert s["convert_train"]["clicks"] == world["train"]["clicks"]
  assert s["convert_test"]["buys"] == world["test"]["buys"]
  test_ds = ds_lib.open_dataset(str(work / "data" / "test"))
  train_ds = ds_lib.open_dataset(str(work / "data" / "train"))
  assert test_ds.schema.dense == train_ds.schema.dense  # the test split took the train statistics
  assert max(f.vocab_size for f in train_ds.schema.sparse) == 1002  # buckets capped, + PAD, OOV
  for m in st.MODELS:
    assert s[f"train_{m}"]["steps"] == -(-8460 // st.BATCH)  # the last batch wraps around
    t = pq.read_table(work / f"predictions_{m}.parquet")
    pred = {c: t.column(c).to_numpy() for c in t.column_names}
    assert len(pred["sample_id"]) == 8600
    np.testing.assert_array_equal(np.sort(pred["sample_id"]), np.arange(1, 8601))
    np.testing.assert_allclose(pred["pctcvr"], pred["pctr"] * pred["pcvr"], rtol=1e-5, atol=1e-9)
    met = s[f"predict_{m}"]["metrics"]
    assert met["n/impressions"] == 8600 and met["n/clicks"] == world["test"]["clicks"]
    for k in ("cvr/auc", "cvr/entire_space_auc", "cvr/population_auc", "ctcvr/auc"):
      assert 0 <= met[k] <= 1, k
    assert s[f"train_{m}"]["peak_rss_bytes"] > 0 and s[f"train_{m}"]["checkpoint_bytes"] > 0
  md = (out / "t.md").read_text()
  assert "python -m experiments.full_scale" in md and "| predict_base | 8,600 |" in md
  assert "entire-space CVR AUC" in md

  capsys.readouterr()
  again = full_scale.main(argv)  # a rerun: every stage finished, none runs again
  assert again["stages"] == state["stages"]
  assert capsys.readouterr().out.count("done earlier, skipped") == len(full_scale.STAGES)

  with pytest.raises(SystemExit) as e:  # the workdir holds another scale's run
    full_scale.main([f"--scale={SCALE * 2}", "--buckets=1000", f"--workdir={work}"])
  assert e.value.code == 2


def test_free_space_check_names_the_need_and_the_space(tmp_path, monkeypatch, capsys):
  usage = namedtuple("usage", "total used free")
  monkeypatch.setattr(full_scale.shutil, "disk_usage", lambda p: usage(10**12, 0, 3 * 10**9))
  need = full_scale.need_bytes("convert_train", str(tmp_path), 1.0)
  assert need == int(full_scale._CONVERT_BYTES_PER_ROW * 42_300_000) > 3 * 10**9
  with pytest.raises(SystemExit) as e:
    full_scale.check_space("convert_train", str(tmp_path), 1.0)
  assert e.value.code == 3
  err = capsys.readouterr().err
  assert f"stage convert_train needs ~{need / 1e9:.1f} GB of disk" in err
  assert "has 3.0 GB free" in err
  full_scale.check_space("convert_train", str(tmp_path), 0.01)  # enough space: no exit
