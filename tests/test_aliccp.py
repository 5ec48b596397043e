"""The raw Ali-CCP converter on a fixture built from PaddleRec's small.txt (the public skeleton +
common-features join), re-emitted in the raw format: `\\x01\\x02\\x03` separators, user fields split
off into a common-features file keyed by a hex `common_feature_index`, values added."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from esmjax.data.format import dataset as ds_lib
from esmjax.data.format import ids as ids_lib
from esmjax.data.ingest.aliccp import convert as aliccp
from esmjax.data.ingest.aliccp import parse as aliccp_parse
from esmjax.data.ingest.aliccp import spec as aliccp_spec

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "tests" / "data" / "public-samples"
SMALL = SAMPLES / "PaddleRec/models/multitask/esmm/data/train/small.txt"
USER_FIELDS = {
  "101",
  "121",
  "122",
  "124",
  "125",
  "126",
  "127",
  "128",
  "129",
  "109_14",
  "110_14",
  "127_14",
  "150_14",
}


def _value(field: str, fid: str) -> str:
  # small.txt dropped the values; behaviour lists and combinations get varied ones, so that weights
  # are tested.
  if field.endswith("_14") or field in ("508", "509", "702", "853"):
    return f"{(int(fid) % 5) * 0.5 + 0.5:g}"
  return "1.0"


def _source_rows():
  rows = []
  for line in SMALL.read_text().splitlines():
    parts = line.split(",")
    items = [tuple(p.split(":")) for p in parts[3:]]
    rows.append((int(parts[0]), int(parts[1]), int(parts[2]), items))
  return rows


def build_raw(directory: Path, reps: int = 1) -> tuple[Path, Path, list]:
  """skeleton.csv + common.csv in the raw format; `reps` copies with new sample ids (and users)."""
  sk, common, rows = [], {}, []
  for rep in range(reps):
    for sid, click, buy, items in _source_rows():
      items = [(f, str(int(i) + 1_000_000 * rep) if f == "101" else i) for f, i in items]
      user = [(f, i) for f, i in items if f in USER_FIELDS]
      other = [(f, i) for f, i in items if f not in USER_FIELDS]
      ustr = "\x01".join(f"{f}\x02{i}\x03{_value(f, i)}" for f, i in user)
      key = hashlib.md5(ustr.encode()).hexdigest()[:16]
      common[key] = f"{key},{len(user)},{ustr}\n"
      ostr = "\x01".join(f"{f}\x02{i}\x03{_value(f, i)}" for f, i in other)
      sid = sid + 1000 * rep
      sk.append(f"{sid},{click},{buy},{key},{len(other)},{ostr}\n")
      rows.append((sid, click, buy, items))
  (directory / "skeleton.csv").write_text("".join(sk))
  (directory / "common.csv").write_text("".join(common.values()))
  return directory / "skeleton.csv", directory / "common.csv", rows


def _big_lists_config():
  cfg = aliccp.default_config()
  for f in ("109_14", "110_14", "127_14", "150_14"):  # 117..342 values a row in small.txt
    cfg.fields[f].max_len = 400
  cfg.fields["210"].max_len = 16  # up to 14
  cfg.fields["853"].max_len = 4  # up to 3
  return cfg


def _row_features(block, schema, r):
  """{field: sorted [(id, weight)]} of row r."""
  out = {}
  for j, f in enumerate(schema.sparse):
    if block["sparse"][r, j]:
      out[f.name] = [int(block["sparse"][r, j])]
  for f, off in zip(schema.multi, schema.mv_offsets, strict=True):
    ids = block["mv_ids"][r, off : off + f.max_len]
    w = block["mv_w"][r, off : off + f.max_len]
    if (ids != 0).any():
      out[f.name] = sorted(
        zip(ids[ids != 0].tolist(), np.round(w[ids != 0], 4).tolist(), strict=True)
      )
  return out


def _expected_features(items, spec):
  by = {}
  for f, i in items:
    by.setdefault(f, []).append((int(i), float(_value(f, i))))
  out = {}
  for f, vals in by.items():
    k = spec.names.index(f)
    h = ids_lib.hash_ids(
      np.array([v for v, _ in vals]), ids_lib.field_salt(f), int(spec.buckets[k])
    ).tolist()
    out[f] = (
      [h[0]]
      if spec.kinds[k] == "sparse"
      else sorted(zip(h, [round(w, 4) for _, w in vals], strict=True))
    )
  return out


def test_keeps_every_feature_of_every_row(tmp_path):
  sk, cf, rows = build_raw(tmp_path)
  cfg = _big_lists_config()
  m = aliccp.convert(str(sk), str(cf), str(tmp_path / "out"), config=cfg, workers=1, progress=False)
  d = ds_lib.open_dataset(str(tmp_path / "out"))
  b = d.read_all()
  spec = aliccp.compile_config(cfg)
  assert m["num_rows"] == len(rows) == 10
  assert all(v["values"] == 0 for v in m["conversion"]["truncated"].values())
  for r, (sid, click, buy, items) in enumerate(rows):
    assert b["sample_id"][r] == sid and b["labels"][r].tolist() == [click, buy]
    assert b["user"][r] == int(dict(items)["101"])  # raw id of field 101: the GAUC key
    got, want = _row_features(b, d.schema, r), _expected_features(items, spec)
    assert got == want, f"row {r}: fields differ: {sorted(set(got) ^ set(want))}"
    # Peers drop the first feature of each line, or all but one value of a multi-valued field.
    first_field, _ = items[0]
    assert got[first_field] == want[first_field]
    assert len(got["210"]) == sum(f == "210" for f, _ in items) >= 3
  # Row 4 (sample 4) has three 853 values: all kept, with their weights.
  assert len(_row_features(b, d.schema, 3)["853"]) == 3
  # 508/509/702 values also land in the dense columns.
  names = [f.name for f in d.schema.dense]
  assert names == ["508_value", "509_value", "702_value"]
  for r, (_, _, _, items) in enumerate(rows):
    for j, f in enumerate(("508", "509", "702")):
      vals = [float(_value(f, i)) for ff, i in items if ff == f]
      assert b["dense"][r, j] == pytest.approx(vals[0] if vals else 0.0)


def test_truncation_keeps_largest_weights_and_is_counted(tmp_path):
  sk, cf, rows = build_raw(tmp_path)
  m = aliccp.convert(
    str(sk), str(cf), str(tmp_path / "out"), workers=1, progress=False
  )  # max_len 32
  d = ds_lib.open_dataset(str(tmp_path / "out"))
  b = d.read_all()
  for f, off in zip(d.schema.multi, d.schema.mv_offsets, strict=True):
    n_per_row = [sum(ff == f.name for ff, _ in items) for *_, items in rows]
    dropped = sum(max(0, n - f.max_len) for n in n_per_row)
    assert m["conversion"]["truncated"][f.name] == {
      "values": dropped,
      "rows": sum(n > f.max_len for n in n_per_row),
      "max_len": f.max_len,
    }
    for r, (*_, items) in enumerate(rows):
      w = b["mv_w"][r, off : off + f.max_len]
      src = sorted((float(_value(f.name, i)) for ff, i in items if ff == f.name), reverse=True)
      assert sorted(w[w > 0].tolist(), reverse=True) == pytest.approx(src[: f.max_len])


def test_parallel_ranges_match_single_process_and_resume(tmp_path):
  sk, cf, rows = build_raw(tmp_path, reps=30)  # 300 rows, 30 users
  one = tmp_path / "one"
  aliccp.convert(str(sk), str(cf), str(one), workers=1, progress=False)
  two = tmp_path / "two"
  m = aliccp.convert(str(sk), str(cf), str(two), workers=2, range_mb=4 / 1024, progress=False)
  assert len(m["shards"]) > 2 and m["num_rows"] == 300
  a, b = ds_lib.open_dataset(str(one)).read_all(), ds_lib.open_dataset(str(two)).read_all()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)

  # An interrupted run: one range's shard never renamed (only a .tmp), its sidecar absent, no
  # manifest.
  os.remove(two / "manifest.json")
  os.remove(two / "shard-00001.done.json")
  os.replace(two / "shard-00001.esb", two / "shard-00001.esb.tmp")
  with pytest.raises(ds_lib.DatasetError, match="no manifest.json"):
    ds_lib.open_dataset(str(two))  # a half-written directory never looks complete
  m2 = aliccp.convert(str(sk), str(cf), str(two), workers=1, range_mb=4 / 1024, progress=False)
  assert m2["num_rows"] == 300 and not list(two.glob("*.tmp"))
  c = ds_lib.open_dataset(str(two)).read_all()
  for k in a:
    np.testing.assert_array_equal(a[k], c[k], err_msg=k)

  # Other settings: the old shards go, the conversion restarts from scratch.
  cfg = aliccp.default_config()
  cfg.fields["210"].max_len = 4
  m3 = aliccp.convert(str(sk), str(cf), str(two), config=cfg, workers=1, progress=False)
  assert m3["num_rows"] == 300 and len(m3["shards"]) == 1
  assert sorted(p.name for p in two.glob("shard-*.esb")) == ["shard-00000.esb"]


def _write(path: Path, lines):
  path.write_bytes(b"".join(l.encode() + b"\n" for l in lines))
  return path


def test_bad_lines_are_counted_reported_and_no_good_row_is_lost(tmp_path, capsys):
  sk, cf, rows = build_raw(tmp_path)
  key = cf.read_text().split(",")[0]
  good = sk.read_text().splitlines()
  bad = [
    f"101,0,0,{key},1",  # column_count
    f"102,x,0,{key},1,205\x021\x031.0",  # bad_label
    f"103,0,1,{key},1,205\x021\x031.0",  # buy_without_click
    f"104,0,0,{key},1,2051.0",  # bad_feature_item: no separators
    f"105,0,0,{key},2,205\x021\x031.0\x01206\x022",  # bad_feature_item: no \x03
    "106,0,0,ffffffffffffffff,1,205\x021\x031.0",  # unknown_common_feature_index
    f"107,0,0,{key},1,205\x021\x03x",  # bad_feature_item: non-numeric value
    f"abc,0,0,{key},1,205\x021\x031.0",  # bad_sample_id
  ]
  skel = _write(tmp_path / "bad_skeleton.csv", good[:3] + bad + [""] + good[3:])
  cf_lines = cf.read_text().splitlines()
  common = _write(
    tmp_path / "bad_common.csv", cf_lines + ["deadbeef,1", cf_lines[0]]
  )  # column_count, duplicate
  m = aliccp.convert(str(skel), str(common), str(tmp_path / "out"), workers=1)
  err = capsys.readouterr().err
  b = ds_lib.open_dataset(str(tmp_path / "out")).read_all()
  assert b["sample_id"].tolist() == [r[0] for r in rows]  # every good row, in order
  sk_bad = m["conversion"]["bad_lines"]["skeleton"]
  assert sk_bad["counts"] == {
    "column_count": 1,
    "bad_label": 1,
    "buy_without_click": 1,
    "bad_feature_item": 3,
    "unknown_common_feature_index": 1,
    "bad_sample_id": 1,
  }
  lines = {(l, k) for l, k, _ in sk_bad["examples"]}
  assert {
    (4, "column_count"),
    (5, "bad_label"),
    (6, "buy_without_click"),
    (7, "bad_feature_item"),
    (8, "bad_feature_item"),
    (9, "unknown_common_feature_index"),
    (10, "bad_feature_item"),
    (11, "bad_sample_id"),
  } == lines
  cf_bad = m["conversion"]["bad_lines"]["common_features"]
  assert cf_bad["counts"] == {"column_count": 1, "duplicate_common_feature_index": 1}
  assert [l for l, _, _ in cf_bad["examples"]] == [len(cf_lines) + 1, len(cf_lines) + 2]
  assert f"{skel}:4: column_count" in err and f"{skel}:9: unknown_common_feature_index" in err
  assert f"{common}:{len(cf_lines) + 2}: duplicate_common_feature_index" in err

  with pytest.raises(aliccp.ConversionError, match=rf"{skel}:4: column_count"):
    aliccp.convert(
      str(skel), str(cf), str(tmp_path / "out_fail"), workers=1, bad_lines="fail", progress=False
    )
  assert not (tmp_path / "out_fail" / "manifest.json").exists()
  with pytest.raises(aliccp.ConversionError, match=rf"{common}:{len(cf_lines) + 1}: column_count"):
    aliccp.convert(
      str(sk), str(common), str(tmp_path / "out_fail2"), workers=1, bad_lines="fail", progress=False
    )
  # The common-features file is read first: its first bad line stops a fail run.
  with pytest.raises(aliccp.ConversionError, match=rf"{common}:{len(cf_lines) + 1}: column_count"):
    aliccp.convert(
      str(skel), str(common), str(tmp_path / "out"), workers=1, bad_lines="fail", progress=False
    )
  # A directory converted with skip, rerun (resumed) with fail: the recorded first bad line stops
  # it.
  aliccp.convert(str(skel), str(cf), str(tmp_path / "out3"), workers=1, progress=False)
  with pytest.raises(aliccp.ConversionError, match=rf"{skel}:4: column_count"):
    aliccp.convert(
      str(skel), str(cf), str(tmp_path / "out3"), workers=1, bad_lines="fail", progress=False
    )


def test_empty_files(tmp_path):
  sk, cf, rows = build_raw(tmp_path)
  empty = _write(tmp_path / "empty.csv", [])
  # No row converted is an error naming why, and no manifest claims a (0-row) dataset.
  with pytest.raises(
    aliccp.ConversionError,
    match=r"no rows converted from --skeleton=.*empty.csv \(bad lines: "
    r"empty_file=1\); no dataset was written",
  ):
    aliccp.convert(str(empty), str(cf), str(tmp_path / "a"), workers=1, progress=False)
  assert not (tmp_path / "a" / "manifest.json").exists()
  with pytest.raises(
    aliccp.ConversionError, match=rf"\(bad lines: unknown_common_feature_index={len(rows)}\)"
  ):
    aliccp.convert(str(sk), str(empty), str(tmp_path / "b"), workers=1, progress=False)
  assert not (tmp_path / "b" / "manifest.json").exists()
  with pytest.raises(aliccp.ConversionError, match=rf"{empty}: empty_file"):
    aliccp.convert(
      str(empty), str(cf), str(tmp_path / "c"), workers=1, bad_lines="fail", progress=False
    )


def test_errors_name_the_key_or_path(tmp_path):
  sk, cf, _ = build_raw(tmp_path)
  with pytest.raises(aliccp.ConversionError, match=r"--skeleton: no such file: .*nope.csv"):
    aliccp.convert(str(tmp_path / "nope.csv"), str(cf), str(tmp_path / "o"), progress=False)
  with pytest.raises(
    aliccp.ConversionError, match=r"bad_lines='maybe'; allowed: \['skip', 'fail'\]"
  ):
    aliccp.convert(str(sk), str(cf), str(tmp_path / "o"), bad_lines="maybe", progress=False)
  cfg = aliccp.default_config()
  cfg.fields["210"].kind = "bag"
  with pytest.raises(
    aliccp.ConversionError,
    match=r"config.fields\['210'\].kind='bag'; allowed: \['sparse', 'multi'\]",
  ):
    aliccp.compile_config(cfg)


def test_cli_and_pipeline_read_back(tmp_path):
  sk, cf, rows = build_raw(tmp_path, reps=3)
  out = tmp_path / "cli"
  res = subprocess.run(
    [
      sys.executable,
      "-m",
      "esmjax.data.aliccp",
      f"--skeleton={sk}",
      f"--common_features={cf}",
      f"--out_dir={out}",
      "--workers=1",
      "--block_rows=8",
      f"--config={REPO / 'configs/data/aliccp_raw.py'}",
      '--config.fields["110_14"].max_len=8',
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert res.returncode == 0, res.stderr
  assert "rows/s" in res.stderr
  d = ds_lib.open_dataset(str(out))
  assert d.num_rows == 30 and d.manifest["block_rows"] == 8
  assert next(f for f in d.schema.multi if f.name == "110_14").max_len == 8
  from esmjax.data.pipeline import batches as pipeline

  it = iter(pipeline.train_iter_dataset(d, pipeline.PipelineConfig(batch_size=16, prefetch=0)))
  batch = next(it)
  assert batch["mv_ids"].shape == (16, d.schema.mv_total_len) and batch["labels"].shape == (16, 2)
  res = subprocess.run(
    [
      sys.executable,
      "-m",
      "esmjax.data.aliccp",
      f"--skeleton={tmp_path / 'missing.csv'}",
      f"--common_features={cf}",
      f"--out_dir={out}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert res.returncode == 2 and f"no such file: {tmp_path / 'missing.csv'}" in res.stderr


def _reference_parse(line: str, n_cols: int, skeleton: bool):
  """A slow, obvious parser of one line: (reason, items) with the converter's rules."""
  import re

  if line.endswith("\r"):
    line = line[:-1]
  if not line:
    return "blank", []
  cols = line.split(",")
  if len(cols) != n_cols:
    return "column_count", []
  if any(c in h for h in cols[:-1] for c in "\x01\x02\x03"):
    return "bad_feature_item", []
  if skeleton:
    if cols[1] not in ("0", "1") or cols[2] not in ("0", "1"):
      return "bad_label", []
    if cols[1] == "0" and cols[2] == "1":
      return "buy_without_click", []
    if not re.fullmatch(r"\d{1,18}", cols[0]):
      return "bad_sample_id", []
  items = []
  if cols[-1]:
    for it in cols[-1].split("\x01"):
      m = re.fullmatch(
        r"([^\x02\x03]+)\x02([^\x02\x03]+)\x03(-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)", it
      )
      if not m:
        return "bad_feature_item", []
      items.append((m.group(1), m.group(2), float(m.group(3))))
  return "ok", items


def test_vectorised_parser_matches_a_reference_on_random_lines():
  rng = np.random.default_rng(0)
  spec = aliccp.compile_config(aliccp.default_config())
  fields = ["205", "210", "853", "101", "109_14", "999"]
  alphabet = ["1", "0", ",", "\x01", "\x02", "\x03", "x", ".", "-", "e", ""]
  lines = []
  for _ in range(400):
    items = [
      f"{rng.choice(fields)}\x02{rng.integers(0, 10**6)}\x03"
      f"{rng.choice(['1.0', '0.5', '2', '1e-3', '.5'])}"
      for _ in range(rng.integers(0, 5))
    ]
    line = (
      f"{rng.integers(0, 10**9)},{rng.integers(0, 2)},{rng.integers(0, 2)},"
      f"k{rng.integers(0, 9)},{len(items)},"
    )
    line += "\x01".join(items)
    if rng.random() < 0.5:  # corrupt: replace, insert or delete one character
      k = int(rng.integers(0, len(line) + 1))
      c = str(rng.choice(alphabet))
      line = line[:k] + c + line[k + int(rng.integers(0, 2)) :]
    if rng.random() < 0.1:
      line += "\r"
    lines.append(line)
  p = aliccp_parse.parse_chunk(("\n".join(lines) + "\n").encode(), 6, spec, skeleton=True)
  kinds = {v: k for k, v in aliccp_spec.KIND_CODES.items()}
  row_items = {}
  for r, f, k, v in zip(p.item_row, p.item_field, p.item_key, p.item_val, strict=True):
    row_items.setdefault(int(r), []).append((int(f), int(k), float(v)))
  row = 0
  for i, line in enumerate(lines):
    reason, items = _reference_parse(line, 6, True)
    got = {0: "ok", -1: "blank"}.get(int(p.reason[i])) or kinds[int(p.reason[i])]
    assert got == reason, (i, repr(line))
    if reason == "ok":
      want = [
        (spec.names.index(f) if f in spec.names else -1, int(i_) if i_.isdigit() else None, v)
        for f, i_, v in items
      ]
      have = row_items.get(row, [])
      assert [
        (f, k if w is not None else None, pytest.approx(v))
        for (f, k, v), (_, w, _) in zip(have, want, strict=True)
      ] == want
      row += 1
