"""The raw Ali-CCP converter on gzip- and zstd-compressed inputs: the same dataset as from the plain
files (in one process and on a pool, in several segments), resumed after an interruption, and bad
lines numbered as in the plain file."""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from esmjax.data.format import dataset as ds_lib
from esmjax.data.ingest.aliccp import convert as aliccp
from tests.test_aliccp import build_raw


def _compress(src: Path, kind: str) -> Path:
  if kind == "gzip":
    dst = src.with_name(src.name + ".gz")
    dst.write_bytes(gzip.compress(src.read_bytes()))
  else:
    dst = src.with_name(src.name + ".zst")
    with pa.output_stream(str(dst), compression="zstd") as f:
      f.write(src.read_bytes())
  return dst


def _same(a: str, b: str) -> None:
  x, y = ds_lib.open_dataset(a).read_all(), ds_lib.open_dataset(b).read_all()
  assert set(x) == set(y)
  for k in x:
    np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_compressed_inputs_convert_like_plain_ones_and_resume(tmp_path, kind):
  sk, cf, _ = build_raw(tmp_path, reps=30)  # 300 rows
  plain = tmp_path / "plain"
  aliccp.convert(str(sk), str(cf), str(plain), workers=1, progress=False)
  skz, cfz = _compress(sk, kind), _compress(cf, kind)
  one = tmp_path / "one"
  aliccp.convert(str(skz), str(cfz), str(one), workers=1, range_mb=4 / 1024, progress=False)
  _same(str(plain), str(one))
  two = tmp_path / "two"
  m = aliccp.convert(str(skz), str(cfz), str(two), workers=2, range_mb=4 / 1024, progress=False)
  assert len(m["shards"]) > 2 and m["num_rows"] == 300
  _same(str(plain), str(two))

  # Interrupted: one segment's shard and sidecar gone, no manifest. The rerun redoes that segment
  # only (the others' sidecars are untouched) and gives the same dataset.
  os.remove(two / "manifest.json")
  os.remove(two / "shard-00001.done.json")
  os.remove(two / "shard-00001.esb")
  before = {p.name: p.stat().st_mtime_ns for p in two.glob("shard-*.done.json")}
  aliccp.convert(str(skz), str(cfz), str(two), workers=2, range_mb=4 / 1024, progress=False)
  after = {p.name: p.stat().st_mtime_ns for p in two.glob("shard-*.done.json")}
  assert {k: after[k] for k in before} == before and "shard-00001.done.json" in after
  _same(str(plain), str(two))


def test_bad_line_in_a_compressed_file_is_numbered_as_in_the_plain_file(tmp_path):
  sk, cf, _ = build_raw(tmp_path, reps=30)
  lines = sk.read_text().splitlines(keepends=True)
  lines[250] = "not,a,line\n"
  sk.write_text("".join(lines))
  skz = _compress(sk, "gzip")
  want = re.escape(f"{skz}:251: column_count")
  for workers in (1, 2):
    with pytest.raises(aliccp.ConversionError, match=want):
      aliccp.convert(
        str(skz),
        str(cf),
        str(tmp_path / f"o{workers}"),
        workers=workers,
        range_mb=4 / 1024,
        bad_lines="fail",
        progress=False,
      )


def test_block_compression_keeps_the_rows_and_is_recorded(tmp_path):
  sk, cf, _ = build_raw(tmp_path, reps=30)
  sizes = {}
  for c in ("none", "lz4", "zstd"):
    out = str(tmp_path / c)
    m = aliccp.convert(str(sk), str(cf), out, workers=1, compression=c, progress=False)
    assert m["conversion"]["block_compression"] == (None if c == "none" else c)
    sizes[c] = sum(os.path.getsize(tmp_path / c / s["path"]) for s in m["shards"])
    _same(str(tmp_path / "none"), str(tmp_path / c))
  assert sizes["lz4"] < sizes["none"] and sizes["zstd"] < sizes["none"]
  with pytest.raises(aliccp.ConversionError, match=r"compression='gzip'; allowed: \['none'"):
    aliccp.convert(str(sk), str(cf), str(tmp_path / "x"), compression="gzip", progress=False)
