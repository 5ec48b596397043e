"""Declared-schema CSV/Parquet ingestion of the public samples (torch-rechub Ali-CCP, PaddleRec
AITM, AliExpress from FuxiCTR and torch-rechub) into the blocked format."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tiny

from esmjax.data.format import dataset as ds_lib
from esmjax.data.format import ids as ids_lib
from esmjax.data.ingest.csv import ingest as csv_ingest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "tests" / "data" / "public-samples"
RECHUB = SAMPLES / "torch-rechub/examples/ranking/data"
AITM = SAMPLES / "PaddleRec/models/multitask/aitm/data/sample_data"
FUXI = SAMPLES / "FuxiCTR/data/tiny_mtl"


def _config(name: str):
  return tiny.repo_config(f"configs/data/{name}.py")


def _rows(path: Path, columns=None):
  with open(path, newline="") as f:
    r = list(csv.reader(f))
  if columns is None:
    return r[0], r[1:]
  return list(columns), (r[1:] if r[0] == list(columns) else r)


def _check_against_source(d: ds_lib.Dataset, cfg, header, rows, vocabs=None):
  """Every kept row's labels, ids (through the vocabulary) and dense values equal the source's."""
  b = d.read_all()
  col = {c: i for i, c in enumerate(header)}
  labels = [(l, c) for l, c in cfg.labels.items()]
  assert len(b["user"]) == len(rows)
  for r, row in enumerate(rows):
    for lab, c in labels:
      assert b["labels"][r, d.schema.label_index(lab)] == int(row[col[c]])
    for j, f in enumerate(d.schema.sparse):
      v = row[col[f.name]]
      want = (
        ids_lib.NUM_RESERVED + vocabs[f.name]["values"].index(v)
        if v in vocabs[f.name]["values"]
        else ids_lib.OOV
      )
      assert b["sparse"][r, j] == want, (r, f.name)
    for j, f in enumerate(d.schema.dense):
      assert b["dense"][r, j] == pytest.approx(float(row[col[f.name]]), rel=1e-6)
    if cfg.user:
      assert b["user"][r] == int(row[col[cfg.user]])
  return b


def _vocabs(out: Path):
  import json

  return json.loads((out / "vocabs.json").read_text())


def test_rechub_aliccp_train_val_test(tmp_path):
  cfg = _config("rechub_aliccp")
  tr = tmp_path / "train"
  m = csv_ingest.ingest(
    cfg, [str(RECHUB / "ali-ccp/ali_ccp_train_sample.csv")], str(tr), progress=False
  )
  header, rows = _rows(RECHUB / "ali-ccp/ali_ccp_train_sample.csv")
  assert m["num_rows"] == 100 and not m["ingest"]["bad_lines"]["counts"]
  d = ds_lib.open_dataset(str(tr))
  assert (
    len(d.schema.sparse) == 23 and len(d.schema.dense) == 8 and d.schema.labels == ("click", "buy")
  )
  b = _check_against_source(d, cfg, header, rows, _vocabs(tr))
  assert b["labels"].sum(0).tolist() == [7, 1]  # MANIFEST: 7 clicks, 1 purchase
  assert b["sample_id"].tolist() == list(range(100))
  # Dense statistics from the first pass.
  x = np.array([[float(r[header.index(f.name)]) for f in d.schema.dense] for r in rows])
  np.testing.assert_allclose([f.mean for f in d.schema.dense], x.mean(0), rtol=1e-6)
  np.testing.assert_allclose(
    [f.std for f in d.schema.dense], np.where(x.std(0) > 1e-9, x.std(0), 1.0), rtol=1e-5
  )
  assert all(list(f.boundaries) == sorted(set(f.boundaries)) for f in d.schema.dense)
  # Validation and test splits reuse the train vocabularies and dense statistics.
  for split, n, clicks in (("val", 50, 3), ("test", 50, 2)):
    out = tmp_path / split
    m = csv_ingest.ingest(
      cfg,
      [str(RECHUB / f"ali-ccp/ali_ccp_{split}_sample.csv")],
      str(out),
      stats_from=str(tr),
      progress=False,
    )
    dd = ds_lib.open_dataset(str(out))
    assert m["num_rows"] == n and dd.schema.dense == d.schema.dense
    assert [f.vocab_size for f in dd.schema.sparse] == [f.vocab_size for f in d.schema.sparse]
    h, rr = _rows(RECHUB / f"ali-ccp/ali_ccp_{split}_sample.csv")
    bb = _check_against_source(dd, cfg, h, rr, _vocabs(tr))
    assert bb["labels"][:, 0].sum() == clicks


def test_aitm_header_and_headerless_and_buy_without_click(tmp_path):
  cfg = _config("aitm_aliccp")
  tr = tmp_path / "train"
  m = csv_ingest.ingest(cfg, [str(AITM / "train/train.csv")], str(tr), progress=False)
  header, rows = _rows(AITM / "train/train.csv", cfg.columns)
  # The public sample itself has click=0, purchase=1 rows (lines 9 and 14): skipped and reported.
  bad = m["ingest"]["bad_lines"]
  assert bad["counts"] == {"buy_without_click": 2}
  assert [e[0].rsplit(":", 1)[1] for e in bad["examples"]] == ["9", "14"]
  keep = [r for r in rows if not (r[0] == "0" and r[1] == "1")]
  _check_against_source(ds_lib.open_dataset(str(tr)), cfg, header, keep, _vocabs(tr))
  te = tmp_path / "test"  # no header line in this file
  m = csv_ingest.ingest(
    cfg, [str(AITM / "test/test.csv")], str(te), stats_from=str(tr), progress=False
  )
  header, rows = _rows(AITM / "test/test.csv", cfg.columns)
  keep = [r for r in rows if not (r[0] == "0" and r[1] == "1")]
  assert m["num_rows"] == len(keep) == len(rows) - 3
  assert [e[0].rsplit(":", 1)[1] for e in m["ingest"]["bad_lines"]["examples"]] == ["7", "15", "19"]
  _check_against_source(ds_lib.open_dataset(str(te)), cfg, header, keep, _vocabs(tr))


def test_aliexpress_fuxictr_and_rechub_and_parquet(tmp_path):
  import pyarrow.csv as pcsv
  import pyarrow.parquet as pq

  cfg = _config("aliexpress")
  paths = [FUXI / "train.csv", RECHUB / "aliexpress/aliexpress_train_sample.csv"]
  out = tmp_path / "ax"
  m = csv_ingest.ingest(cfg, [str(p) for p in paths], str(out), progress=False)
  header, rows = _rows(paths[0])
  rows += _rows(paths[1])[1]
  assert m["num_rows"] == 200 and len(ds_lib.open_dataset(str(out)).schema.dense) == 63
  b = _check_against_source(ds_lib.open_dataset(str(out)), cfg, header, rows, _vocabs(out))
  assert b["labels"][:100].sum(0).tolist() == [
    3,
    2,
  ]  # MANIFEST: FuxiCTR train 3 clicks, 2 conversions
  # FuxiCTR test split with the train vocabularies.
  m = csv_ingest.ingest(
    cfg, [str(FUXI / "test.csv")], str(tmp_path / "axt"), stats_from=str(out), progress=False
  )
  assert m["num_rows"] == 100
  # Parquet with typed columns gives the same dataset as the CSV.
  pq_path = tmp_path / "train.parquet"
  pq.write_table(pcsv.read_csv(paths[0]), pq_path)
  a = csv_ingest.ingest(cfg, [str(paths[0])], str(tmp_path / "c"), progress=False)
  p = csv_ingest.ingest(cfg, [str(pq_path)], str(tmp_path / "p"), progress=False)
  assert a["num_rows"] == p["num_rows"] == 100
  ba, bp = (
    ds_lib.open_dataset(str(tmp_path / "c")).read_all(),
    ds_lib.open_dataset(str(tmp_path / "p")).read_all(),
  )
  for k in ("labels", "user", "dense"):
    np.testing.assert_array_equal(ba[k], bp[k], err_msg=k)
  # Integer columns print the same in Parquet; vocab ids may differ only by tie order, so compare
  # values.
  va, vp = _vocabs(tmp_path / "c"), _vocabs(tmp_path / "p")
  for j, f in enumerate(ds_lib.open_dataset(str(tmp_path / "c")).schema.sparse):
    ra = [va[f.name]["values"][i - 2] for i in ba["sparse"][:, j]]
    rp = [vp[f.name]["values"][i - 2] for i in bp["sparse"][:, j]]
    assert ra == rp, f.name


def test_hash_mapping_and_overrides(tmp_path):
  cfg = _config("aitm_aliccp")
  cfg.id_mapping = "hash"
  cfg.hash_buckets = 1000
  cfg.field_overrides = {"301": {"mapping": "vocab"}}
  csv_ingest.ingest(cfg, [str(AITM / "train/train.csv")], str(tmp_path / "h"), progress=False)
  d = ds_lib.open_dataset(str(tmp_path / "h"))
  header, rows = _rows(AITM / "train/train.csv", cfg.columns)
  rows = [r for r in rows if not (r[0] == "0" and r[1] == "1")]
  b = d.read_all()
  for j, f in enumerate(d.schema.sparse):
    raw = np.array([int(r[header.index(f.name)]) for r in rows])
    if f.name == "301":
      assert f.vocab_size == 2 + len(set(raw))
    else:
      assert f.vocab_size == 1002
      np.testing.assert_array_equal(
        b["sparse"][:, j], ids_lib.hash_ids(raw, ids_lib.field_salt(f.name), 1000)
      )


def _write_csv(path: Path, header, rows):
  path.write_text("\n".join([",".join(header)] + [",".join(r) for r in rows]) + "\n")
  return path


def test_bad_lines_skip_and_fail(tmp_path):
  cfg = _config("rechub_aliccp")
  header, rows = _rows(RECHUB / "ali-ccp/ali_ccp_train_sample.csv")
  lines = [",".join(r) for r in rows]
  good = lines[:5]
  bad = [
    ",".join(rows[5][:10]),  # column_count
    "x" + lines[6][1:],  # bad_label
    "0,1" + lines[7][3:],  # buy_without_click
    lines[8].rsplit(",", 1)[0] + ",abc",  # bad_dense
  ]
  text = "\n".join([",".join(header)] + good + bad + [""] + lines[9:]) + "\n"
  path = tmp_path / "bad.csv"
  path.write_text(text)
  m = csv_ingest.ingest(cfg, [str(path)], str(tmp_path / "o"), progress=False)
  got = m["ingest"]["bad_lines"]
  assert got["counts"] == {
    "column_count": 1,
    "bad_label": 1,
    "buy_without_click": 1,
    "bad_dense": 1,
  }
  assert sorted((int(w.rsplit(":", 1)[1]), k) for w, k, _ in got["examples"]) == [
    (7, "column_count"),
    (8, "bad_label"),
    (9, "buy_without_click"),
    (10, "bad_dense"),
  ]
  assert m["num_rows"] == 5 + len(lines[9:])  # every good row (the blank line is not a row)
  with pytest.raises(csv_ingest.IngestError, match=rf"{path}:7: column_count"):
    cfg.bad_lines = "fail"
    csv_ingest.ingest(cfg, [str(path)], str(tmp_path / "f"), progress=False)
  # fail reports the first bad line in file order, whatever its kind or whether the parser or the
  # validation found it.
  path2 = tmp_path / "bad2.csv"
  path2.write_text("\n".join([",".join(header)] + good + [bad[3], bad[0], bad[1]]) + "\n")
  with pytest.raises(csv_ingest.IngestError, match=rf"{path2}:7: bad_dense"):
    csv_ingest.ingest(cfg, [str(path2)], str(tmp_path / "f2"), progress=False)
  empty = tmp_path / "empty.csv"
  empty.write_text(",".join(header) + "\n")
  cfg.bad_lines = "skip"
  # A header and no row: nothing to write is an error, and nothing is written.
  with pytest.raises(
    csv_ingest.IngestError, match=r"no rows to write: .* \(bad lines: empty_file=1;"
  ):
    csv_ingest.ingest(cfg, [str(empty)], str(tmp_path / "e"), progress=False)
  assert not (tmp_path / "e").exists()


def test_multi_valued_columns_keep_values_and_weights(tmp_path):
  cfg = csv_ingest.base_config()
  cfg.labels = {"click": "click", "buy": "buy"}
  cfg.sparse = ("uid",)
  cfg.multi = {
    "hist": {"sep": "|", "weight_sep": ":", "max_len": 3},
    "tags": {"sep": " ", "max_len": 2},
  }
  cfg.user = "uid"
  cfg.sample_id = "sid"
  path = _write_csv(
    tmp_path / "mv.csv",
    ["sid", "uid", "click", "buy", "hist", "tags"],
    [
      ["10", "7", "1", "1", "a:0.5|b:2|c", "x y"],
      ["11", "8", "0", "0", "", "y"],
      ["12", "7", "1", "0", "b:1|a:1|d:1|e:3", "x y z"],
      ["13", "9", "0", "0", "a:oops", "x"],  # bad_multi
    ],
  )
  m = csv_ingest.ingest(cfg, [str(path)], str(tmp_path / "o"), progress=False)
  assert m["ingest"]["bad_lines"]["counts"] == {"bad_multi": 1}
  assert m["ingest"]["truncated"] == {
    "hist": {"values": 1, "rows": 1},
    "tags": {"values": 1, "rows": 1},
  }
  d = ds_lib.open_dataset(str(tmp_path / "o"))
  b = d.read_all()
  v = _vocabs(tmp_path / "o")
  idx = lambda f, x: 2 + v[f]["values"].index(x)
  assert b["sample_id"].tolist() == [10, 11, 12] and b["user"].tolist() == [7, 8, 7]
  hist = b["mv_ids"][:, 0:3]
  np.testing.assert_array_equal(hist[0], [idx("hist", "a"), idx("hist", "b"), idx("hist", "c")])
  np.testing.assert_allclose(b["mv_w"][0, 0:3], [0.5, 2.0, 1.0])
  np.testing.assert_array_equal(hist[1], [0, 0, 0])  # empty cell: all PAD
  np.testing.assert_array_equal(hist[2], [idx("hist", "b"), idx("hist", "a"), idx("hist", "d")])
  np.testing.assert_array_equal(
    b["mv_ids"][:, 3:5],
    [
      [idx("tags", "x"), idx("tags", "y")],
      [idx("tags", "y"), 0],
      [idx("tags", "x"), idx("tags", "y")],
    ],
  )


def test_config_errors_name_the_key(tmp_path):
  cfg = _config("rechub_aliccp")
  cfg.id_mapping = "lookup"
  with pytest.raises(
    csv_ingest.IngestError, match=r"config.id_mapping='lookup'; allowed: \['hash', 'vocab'\]"
  ):
    csv_ingest.ingest(cfg, [str(RECHUB / "ali-ccp/ali_ccp_train_sample.csv")], str(tmp_path / "o"))
  cfg = _config("rechub_aliccp")
  cfg.labels = {"click": "click", "purchase": "purchase"}
  with pytest.raises(
    csv_ingest.IngestError, match=r"labels\['purchase'\].*allowed: \['click', 'buy'"
  ):
    csv_ingest.ingest(cfg, [str(RECHUB / "ali-ccp/ali_ccp_train_sample.csv")], str(tmp_path / "o"))
  cfg = _config("rechub_aliccp")
  cfg.dense = ("D508", "no_such_column")
  with pytest.raises(
    csv_ingest.IngestError, match=r"column\(s\) \['no_such_column'\] named in the config"
  ):
    csv_ingest.ingest(cfg, [str(RECHUB / "ali-ccp/ali_ccp_train_sample.csv")], str(tmp_path / "o"))
  with pytest.raises(csv_ingest.IngestError, match=r"input file does not exist: .*nope.csv"):
    csv_ingest.ingest(_config("rechub_aliccp"), [str(tmp_path / "nope.csv")], str(tmp_path / "o"))


def test_cli(tmp_path):
  out = tmp_path / "cli"
  res = subprocess.run(
    [
      sys.executable,
      "-m",
      "esmjax.data.csv_ingest",
      f"--config={REPO / 'configs/data/aliexpress.py'}",
      f"--input={FUXI / 'train.csv'}",
      f"--out_dir={out}",
      "--config.id_mapping=hash",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert res.returncode == 0, res.stderr
  d = ds_lib.open_dataset(str(out))
  assert (
    d.num_rows == 100 and d.manifest["ingest"]["id_mapping"]["categorical_1"] == f"hash/{1 << 20}"
  )
