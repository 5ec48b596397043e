"""Ingestion that says what is wrong: non-finite numbers, byte-order marks, compressed and binary
inputs, and label leakage, in both converters (`csv_ingest`, `aliccp`); and the data command lines'
user errors, one line and exit 2."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import tiny

from esmjax.data.format import dataset as ds_lib
from esmjax.data.ingest import leakage
from esmjax.data.ingest.aliccp import convert as aliccp
from esmjax.data.ingest.csv import ingest as csv_ingest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "tests" / "data" / "public-samples"
RECHUB_CSV = SAMPLES / "torch-rechub/examples/ranking/data/ali-ccp/ali_ccp_train_sample.csv"


def _config(name: str):
  return tiny.repo_config(f"configs/data/{name}.py")


def _same_rows(a: str, b: str) -> None:
  ra, rb = ds_lib.open_dataset(a).read_all(), ds_lib.open_dataset(b).read_all()
  for k in ra:
    np.testing.assert_array_equal(ra[k], rb[k], err_msg=k)


# ---------------------------------------------------------------------------------------------
# Non-finite numbers.


def test_csv_dense_values_beyond_float32_are_bad_lines_of_their_own(tmp_path):
  lines = RECHUB_CSV.read_text().splitlines()
  header, rows = lines[0], lines[1:]
  odd = ["1e39", "-1e400", "nan", "inf", "-Infinity"]  # D853 is the last column
  changed = [r.rsplit(",", 1)[0] + "," + v for r, v in zip(rows[10:15], odd, strict=True)]
  text = "\n".join([header] + rows[:10] + changed + rows[15:]) + "\n"
  path = tmp_path / "odd.csv"
  path.write_text(text)
  cfg = _config("rechub_aliccp")
  m = csv_ingest.ingest(cfg, [str(path)], str(tmp_path / "o"), progress=False)
  bad = m["ingest"]["bad_lines"]
  assert bad["counts"] == {"nonfinite_dense": 5}
  assert [e[0] for e in bad["examples"]] == [f"{path}:{i}" for i in range(12, 17)]
  assert m["num_rows"] == 95
  for f in m["schema"]["dense"]:
    assert np.isfinite(f["mean"]) and np.isfinite(f["std"]), f
  cfg.bad_lines = "fail"
  want = rf"{re.escape(str(path))}:12: nonfinite_dense \(.*float32.*'D853=1e39; row: click=0"
  with pytest.raises(csv_ingest.IngestError, match=want):
    csv_ingest.ingest(cfg, [str(path)], str(tmp_path / "f"), progress=False)


def test_csv_weights_beyond_float32_are_bad_multi(tmp_path):
  cfg = csv_ingest.base_config()
  cfg.multi = {"hist": {"sep": "|", "weight_sep": ":", "max_len": 3}}
  path = tmp_path / "mv.csv"
  path.write_text("click,buy,hist\n1,0,a:1|b:2\n0,0,a:1e39\n1,1,b:nan\n0,0,c:0.5\n")
  m = csv_ingest.ingest(cfg, [str(path)], str(tmp_path / "o"), progress=False)
  assert m["ingest"]["bad_lines"]["counts"] == {"bad_multi": 2} and m["num_rows"] == 2


def _raw_line(sid, click, buy, key, items):
  feats = "\x01".join(f"{f}\x02{i}\x03{v}" for f, i, v in items)
  return f"{sid},{click},{buy},{key},{len(items)},{feats}"


def _raw_files(directory: Path, values):
  """A common-features file with one user and a skeleton with one line per value of field 508."""
  directory.mkdir(parents=True, exist_ok=True)
  common = directory / "common.csv"
  common.write_text("u1,2,101\x027\x031.0\x01121\x023\x031.0\n")
  sk = directory / "skeleton.csv"
  sk.write_text(
    "".join(
      _raw_line(i, 1, 0, "u1", [("205", 10 + i, "1.0"), ("508", 3, v)]) + "\n"
      for i, v in enumerate(values)
    )
  )
  return sk, common


def test_aliccp_values_beyond_float32_are_bad_lines_of_their_own(tmp_path):
  sk, cf = _raw_files(tmp_path / "raw", ["0.5", "1e39", "nan", "2.0", "-inf", "1e400", "x1"])
  m = aliccp.convert(str(sk), str(cf), str(tmp_path / "o"), workers=1, progress=False)
  bad = m["conversion"]["bad_lines"]["skeleton"]
  assert bad["counts"] == {"nonfinite_value": 4, "bad_feature_item": 1}
  assert [(line, kind) for line, kind, _ in bad["examples"]] == [
    (2, "nonfinite_value"),
    (3, "nonfinite_value"),
    (5, "nonfinite_value"),
    (6, "nonfinite_value"),
    (7, "bad_feature_item"),
  ]
  assert m["num_rows"] == 2
  assert all(np.isfinite(f["mean"]) and np.isfinite(f["std"]) for f in m["schema"]["dense"])
  with pytest.raises(aliccp.ConversionError, match=rf"{re.escape(str(sk))}:2: nonfinite_value \("):
    aliccp.convert(
      str(sk), str(cf), str(tmp_path / "f"), workers=1, bad_lines="fail", progress=False
    )


# ---------------------------------------------------------------------------------------------
# Byte-order marks, compressed and binary inputs.


def test_csv_with_a_utf8_bom_reads_like_without(tmp_path):
  cfg = _config("rechub_aliccp")
  bom = tmp_path / "bom.csv"
  bom.write_bytes(b"\xef\xbb\xbf" + RECHUB_CSV.read_bytes())
  csv_ingest.ingest(cfg, [str(RECHUB_CSV)], str(tmp_path / "plain"), progress=False)
  m = csv_ingest.ingest(cfg, [str(bom)], str(tmp_path / "bom"), progress=False)
  assert m["num_rows"] == 100 and not m["ingest"]["bad_lines"]["counts"]
  _same_rows(str(tmp_path / "plain"), str(tmp_path / "bom"))
  # A file without a header line: the BOM must not become part of the first value.
  aitm = _config("aitm_aliccp")
  test_csv = SAMPLES / "PaddleRec/models/multitask/aitm/data/sample_data/test/test.csv"
  nohead = tmp_path / "nohead.csv"
  nohead.write_bytes(b"\xef\xbb\xbf" + test_csv.read_bytes())
  a = csv_ingest.ingest(aitm, [str(test_csv)], str(tmp_path / "a"), progress=False)
  b = csv_ingest.ingest(aitm, [str(nohead)], str(tmp_path / "b"), progress=False)
  ea, eb = a["ingest"]["bad_lines"], b["ingest"]["bad_lines"]
  assert ea["counts"] == eb["counts"] == {"buy_without_click": 3}
  assert [(w.rsplit(":", 1)[1], k, t) for w, k, t in ea["examples"]] == [
    (w.rsplit(":", 1)[1], k, t) for w, k, t in eb["examples"]
  ]
  assert a["num_rows"] == b["num_rows"]
  _same_rows(str(tmp_path / "a"), str(tmp_path / "b"))


@pytest.mark.parametrize(
  "name,compress",
  [
    ("train.csv.gz", gzip.compress),
    ("train.csv.bz2", bz2.compress),
    ("train.csv.zst", None),
    ("gzip_named_plain.csv", gzip.compress),  # recognised by its bytes, not its name
  ],
)
def test_compressed_csv_is_read_transparently(tmp_path, name, compress):
  if compress is None:
    if not pa.Codec.is_available("zstd"):
      pytest.skip("pyarrow built without zstd")
    compress = lambda b: pa.Codec("zstd").compress(b, asbytes=True)
  cfg = _config("rechub_aliccp")
  path = tmp_path / name
  path.write_bytes(compress(RECHUB_CSV.read_bytes()))
  csv_ingest.ingest(cfg, [str(RECHUB_CSV)], str(tmp_path / "plain"), progress=False)
  m = csv_ingest.ingest(cfg, [str(path)], str(tmp_path / "z"), progress=False)
  assert m["num_rows"] == 100
  _same_rows(str(tmp_path / "plain"), str(tmp_path / "z"))


def _zip_bytes():
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w") as z:
    z.writestr("train.csv", RECHUB_CSV.read_text())
  return buf.getvalue()


def _tar_bytes():
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w") as t:
    t.add(RECHUB_CSV, arcname="train.csv")
  return buf.getvalue()


@pytest.mark.parametrize(
  "name,content,message",
  [
    ("train.zip", _zip_bytes(), r"is a zip archive: .*extract it first"),
    ("train.tar", _tar_bytes(), r"is a tar archive: .*extract it first"),
    ("train.csv", b"\x00\x01\x02binary\x00garbage\n" * 10, r"does not look like text"),
  ],
)
def test_archives_and_binary_files_are_refused_with_one_line(tmp_path, name, content, message):
  path = tmp_path / name
  path.write_bytes(content)
  with pytest.raises(csv_ingest.IngestError, match=re.escape(str(path)) + " " + message):
    csv_ingest.ingest(_config("rechub_aliccp"), [str(path)], str(tmp_path / "o"), progress=False)


@pytest.mark.parametrize(
  "kind,make,hint",
  [
    ("xz", lzma.compress, "xz -dk"),
    ("bzip2", bz2.compress, "bunzip2 -k"),
    ("tar archive", None, "tar -xf"),
  ],
)
def test_aliccp_refuses_compressed_inputs_naming_the_file(tmp_path, kind, make, hint):
  sk, cf = _raw_files(tmp_path / "raw", ["1.0"])
  target = tmp_path / "raw" / "skeleton_packed.csv"
  if make is None:
    with tarfile.open(target, "w") as t:
      t.add(sk, arcname="skeleton.csv")
  else:
    target.write_bytes(make(sk.read_bytes()))
  want = rf"--skeleton: {re.escape(str(target))} is a? ?{kind}.*{hint}"
  with pytest.raises(aliccp.ConversionError, match=want):
    aliccp.convert(str(target), str(cf), str(tmp_path / "o"), workers=1, progress=False)


# ---------------------------------------------------------------------------------------------
# Label leakage.


def test_leakage_stats_merge_equals_one_pass():
  rng = np.random.default_rng(0)
  n = 4000
  block = {
    "labels": (rng.random((n, 2)) < 0.3).astype(np.uint8),
    "sparse": rng.integers(0, 5, (n, 2)).astype(np.int32),
    "dense": rng.normal(size=(n, 3)).astype(np.float32),
  }
  block["dense"][:, 1] = block["labels"][:, 0]  # a copy of the first label
  block["sparse"][:, 1] = 7 + 3 * block["labels"][:, 1]  # ids that encode the second label
  one = leakage.LeakageStats(["click", "buy"], ["a", "b"], ["x", "y", "z"])
  one.add(block)
  parts = leakage.LeakageStats(["click", "buy"], ["a", "b"], ["x", "y", "z"])
  for lo in range(0, n, 700):
    p = leakage.LeakageStats(["click", "buy"], ["a", "b"], ["x", "y", "z"])
    p.add({k: v[lo : lo + 700] for k, v in block.items()})
    parts.merge(leakage.LeakageStats.from_json(p.to_json()))
  assert (
    one.findings()
    == parts.findings()
    == [
      {"column": "y", "label": "click", "kind": "dense", "detail": "equals click"},
      {
        "column": "b",
        "label": "buy",
        "kind": "ids",
        "detail": "its 2 values each occur with one buy value only (1 with buy=1, 1 with buy=0)",
      },
    ]
  )
  few = {k: v[:40] for k, v in block.items()}
  few["labels"] = np.zeros_like(few["labels"])
  few["labels"][:4, 0] = 1  # 4 positives: too few to tell a leak from chance
  small = leakage.LeakageStats(["click", "buy"], ["a", "b"], ["x", "y", "z"])
  small.add(few)
  assert small.findings() == []


@pytest.mark.parametrize(
  "name,inputs",
  [
    (
      "rechub_aliccp",
      [
        "torch-rechub/examples/ranking/data/ali-ccp/ali_ccp_train_sample.csv",
        "torch-rechub/examples/ranking/data/ali-ccp/ali_ccp_val_sample.csv",
        "torch-rechub/examples/ranking/data/ali-ccp/ali_ccp_test_sample.csv",
      ],
    ),
    (
      "aitm_aliccp",
      [
        "PaddleRec/models/multitask/aitm/data/sample_data/train/train.csv",
        "PaddleRec/models/multitask/aitm/data/sample_data/test/test.csv",
      ],
    ),
    (
      "aliexpress",
      [
        "FuxiCTR/data/tiny_mtl/train.csv",
        "FuxiCTR/data/tiny_mtl/test.csv",
        "torch-rechub/examples/ranking/data/aliexpress/aliexpress_train_sample.csv",
      ],
    ),
  ],
)
def test_no_leakage_reported_on_the_public_samples(tmp_path, name, inputs, capsys):
  for i, rel in enumerate(inputs):
    m = csv_ingest.ingest(_config(name), [str(SAMPLES / rel)], str(tmp_path / str(i)))
    assert m["ingest"]["label_leakage"] == [], rel
  assert "label leakage" not in capsys.readouterr().err


def test_csv_leakage_is_reported_recorded_and_optionally_fatal(tmp_path, capsys):
  lines = RECHUB_CSV.read_text().splitlines()
  text = "\n".join([lines[0] + ",ctr_flag"] + [r + "," + r.split(",")[0] for r in lines[1:]]) + "\n"
  path = tmp_path / "leak.csv"
  path.write_text(text)
  cfg = _config("rechub_aliccp")
  cfg.dense = cfg.dense + ("ctr_flag",)
  cfg.sparse = cfg.sparse + ("purchase",)  # the buy label itself, declared as a feature
  m = csv_ingest.ingest(cfg, [str(path)], str(tmp_path / "o"))
  found = {(f["column"], f["label"], f["kind"]) for f in m["ingest"]["label_leakage"]}
  assert found == {("ctr_flag", "click", "dense"), ("purchase", "buy", "config")}
  err = capsys.readouterr().err
  assert "feature column 'ctr_flag' gives the label 'click' away: equals click" in err
  assert "feature column 'purchase' gives the label 'buy' away: declared as the label 'buy'" in err
  cfg.label_leakage = "fail"
  with pytest.raises(
    csv_ingest.IngestError, match=r"label leakage: feature column 'purchase' gives the label 'buy'"
  ):
    csv_ingest.ingest(cfg, [str(path)], str(tmp_path / "f"), progress=False)
  cfg.sparse = cfg.sparse[:-1]
  with pytest.raises(
    csv_ingest.IngestError, match=r"feature column 'ctr_flag' gives the label 'click' away"
  ):
    csv_ingest.ingest(cfg, [str(path)], str(tmp_path / "f"), progress=False)
  assert not (tmp_path / "f" / "manifest.json").exists()


def test_aliccp_leakage_is_reported_and_optionally_fatal(tmp_path):
  import test_aliccp

  sk, cf, rows = test_aliccp.build_raw(tmp_path, reps=3)  # 30 rows, 6 clicks
  m = aliccp.convert(
    str(sk), str(cf), str(tmp_path / "clean"), workers=2, range_mb=1 / 1024, progress=False
  )
  assert m["conversion"]["label_leakage"] == []
  # 702's value copies the click label: its dense column gives click away.
  leaky = tmp_path / "leaky.csv"
  out = []
  for line in sk.read_text().splitlines():
    sid, click, buy, key, n, feats = line.split(",", 5)
    items = [it for it in feats.split("\x01") if not it.startswith("702\x02")]
    items.append(f"702\x029\x03{click}.0")
    out.append(",".join([sid, click, buy, key, str(len(items)), "\x01".join(items)]))
  leaky.write_text("\n".join(out) + "\n")
  m = aliccp.convert(
    str(leaky), str(cf), str(tmp_path / "leak"), workers=2, range_mb=1 / 1024, progress=False
  )
  assert [(f["column"], f["label"], f["detail"]) for f in m["conversion"]["label_leakage"]] == [
    ("702_value", "click", "equals click")
  ]
  with pytest.raises(
    aliccp.ConversionError,
    match=r"label leakage: feature column '702_value' gives the label 'click'",
  ):
    aliccp.convert(
      str(leaky), str(cf), str(tmp_path / "fail"), workers=1, label_leakage="fail", progress=False
    )
  assert not (tmp_path / "fail" / "manifest.json").exists()


# ---------------------------------------------------------------------------------------------
# The data command lines (the converters, the synthetic world): a user error is one line on
# stderr and exit 2.

CSV_CONFIG = f"--config={REPO / 'configs/data/rechub_aliccp.py'}"
RAW_CONFIG = f"--config={REPO / 'configs/data/aliccp_raw.py'}"


@pytest.mark.parametrize(
  "module,args,message",
  [
    ("csv_ingest", [], "--config is required"),
    ("csv_ingest", [CSV_CONFIG, "--input={tmp}/nope.csv", "--out_dir={tmp}/o"], "nope.csv"),
    ("csv_ingest", [CSV_CONFIG, f"--input={RECHUB_CSV}"], "--out_dir is required"),
    ("csv_ingest", [CSV_CONFIG, f"--input={RECHUB_CSV}", "--out_dir={file}"], "File exists"),
    ("csv_ingest", ["--config={tmp}/none.py"], "--config={tmp}/none.py: no such file"),
    ("csv_ingest", [CSV_CONFIG, "--config.no_key=1"], "unknown config key 'no_key'; keys of"),
    ("csv_ingest", [CSV_CONFIG, "--config.block_rows=x"], "config key block_rows takes an int"),
    ("csv_ingest", [CSV_CONFIG, "--no_such_flag=1"], "Unknown command line flag 'no_such_flag'"),
    ("csv_ingest", [CSV_CONFIG, "stray"], "unexpected arguments: ['stray']"),
    ("aliccp", [], "--skeleton is required"),
    ("aliccp", ["--skeleton={tmp}/sk.csv"], "--skeleton: no such file: "),
    ("aliccp", ["--bad_lines=maybe"], "--bad_lines=maybe: value should be one of <skip|fail>"),
    ("aliccp", [RAW_CONFIG, "--config.fields.x=1"], "unknown config key 'fields.x'"),
    ("aliccp", ["--config.dense_buckets=1"], "--config.dense_buckets=1 needs --config=FILE"),
    ("synthetic", ["{tmp}/cache", "--world=nope"], "world 'nope' is not defined; allowed: "),
    ("synthetic", ["{tmp}/cache", "--set=cvr"], "--set='cvr': give knob=value"),
    ("synthetic", ["{tmp}/cache", "--set=num_train=x"], "num_train='x' must be a number"),
    ("synthetic", ["{tmp}/cache", "{tmp}/other"], "unexpected arguments: "),
  ],
)
def test_data_command_user_errors_are_one_line_and_exit_2(tmp_path, module, args, message):
  (tmp_path / "file").write_text("")
  fill = lambda s: s.format(tmp=tmp_path, file=tmp_path / "file")
  res = subprocess.run(
    [sys.executable, "-m", f"esmjax.data.{module}", *map(fill, args)],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert res.returncode == 2, res.stderr[-3000:]
  lines = res.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("esmjax: error: "), res.stderr[-3000:]
  assert fill(message) in lines[0]
