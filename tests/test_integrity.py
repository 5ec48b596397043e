"""Nothing wrong passes silently: block checksums, values checked when written, malformed manifests,
and datasets written before checksums."""

import json
import logging
import os
import re
import shutil
import struct

import numpy as np
import pytest
import tiny

from esmjax.common import digest
from esmjax.data.format import blocks, shards
from esmjax.data.format import dataset as D
from esmjax.data.pipeline import batches as pipeline


@pytest.fixture
def ds(tmp_path):
  # 2000 rows in blocks of 256 (8 blocks), 3 blocks per shard: shards of 3, 3 and 2 blocks.
  return tiny.tiny_dataset(str(tmp_path / "d"), n=2000, block_rows=256)


def _flip(path, offset, nbytes=64):
  """Inverts `nbytes` bytes at `offset`: same file size, different content."""
  with open(path, "r+b") as f:
    f.seek(offset)
    data = f.read(nbytes)
    f.seek(offset)
    f.write(bytes(b ^ 0xFF for b in data))


def _record_offset(path, j):
  r = shards.ShardReader(path)
  r._open()
  return r._index[j][0]


def _column_offset(path, j, column):
  """File offset of column `column` of block j."""
  rec = shards.ShardReader(path).record(j)
  (hlen,) = struct.unpack("<I", rec[4:8])
  off = next(o for k, _, _, _, o in blocks._parse_header(bytes(rec[8 : 8 + hlen])) if k == column)
  return _record_offset(path, j) + 8 + hlen + off


def _mismatch(path, j):
  return rf"shard {re.escape(path)}, block {j}: checksum mismatch"


def test_flipped_bytes_raise_naming_the_shard_and_block_everywhere_a_block_is_read(ds):
  path = ds.shard_paths[1]
  size = os.path.getsize(path)
  _flip(path, _column_offset(path, 2, "sparse") + 100)  # ids: this would train on garbage ids
  assert os.path.getsize(path) == size
  src = ds.block_source()
  for i in (0, 1, 2, 3, 4, 6, 7):
    src[i]  # the other blocks are intact
  with pytest.raises(D.DatasetError, match=_mismatch(path, 2)):
    src[5]  # block 5 of the dataset is block 2 of shard 1
  with pytest.raises(D.DatasetError, match=_mismatch(path, 2)):
    ds.read_all()
  with pytest.raises(D.DatasetError, match=_mismatch(path, 2)):
    list(pipeline.eval_batches(ds, 300))
  bad_ids = set(range(5 * 256, 6 * 256))
  for threads, prefetch in ((1, 0), (2, 2)):
    cfg = pipeline.PipelineConfig(
      batch_size=100, seed=3, window_blocks=2, num_epochs=1, prefetch=prefetch, threads=threads
    )
    it = iter(pipeline.train_iter_dataset(ds, cfg))
    seen = []
    with pytest.raises(D.DatasetError, match=_mismatch(path, 2)):
      for b in it:
        seen.append(set(b["sample_id"].tolist()))
    assert not any(s & bad_ids for s in seen)  # no row of the corrupt block came out
    it.close()
  # Without verification (what the benchmarks compare against) the garbage would pass.
  cfg = pipeline.PipelineConfig(batch_size=100, num_epochs=1, prefetch=0, verify=False)
  it = iter(pipeline.train_iter_dataset(ds, cfg))
  assert sum(len(b["user"]) for b in it) == 2000


def test_damaged_index_footer_or_size_raise_naming_the_shard(ds):
  path = ds.shard_paths[0]
  size = os.path.getsize(path)
  saved = open(path, "rb").read()
  _flip(path, size - 32 - 40, 8)  # inside the block index (40 bytes per block)
  shard = re.escape(path)
  with pytest.raises(D.DatasetError, match=rf"shard {shard} is corrupt: the checksum of its block"):
    ds.read_all()
  open(path, "wb").write(saved[:-8] + b"NOTASHRD")
  with pytest.raises(D.DatasetError, match=rf"shard {shard} is corrupt or not an esmjax shard"):
    ds.read_all()
  open(path, "wb").write(saved[:1000] + saved[-32:])  # truncated
  with pytest.raises(D.DatasetError, match=rf"shard {shard} is corrupt: its footer does not match"):
    ds.read_all()
  # Opened afresh, the manifest's record of the shard's size and tail refuses it before any read.
  with pytest.raises(digest.IntegrityError, match=rf"{shard} is not the shard .* lists"):
    D.open_dataset(ds.directory)
  open(path, "wb").write(saved)
  D.open_dataset(ds.directory).read_all()


def test_the_manifest_must_agree_with_the_shards(ds, tmp_path):
  mpath = os.path.join(ds.directory, "manifest.json")
  m = json.loads(open(mpath).read())
  m["shards"][0]["block_sizes"][1] = 255
  m["shards"][0]["block_sizes"][2] = 257
  with open(mpath, "w") as f:
    json.dump(m, f)
  with pytest.raises(digest.IntegrityError, match="changed after esmjax wrote it"):
    D.open_dataset(ds.directory)
  # Sealed as written (a writer's bug, not a change on disk), the shards still disagree.
  digest.write_json(mpath, m)
  with pytest.raises(
    D.DatasetError, match=r"shard-00000.esb, block 1 has 256 rows; the manifest lists 255"
  ):
    D.open_dataset(ds.directory).read_all()


@pytest.mark.parametrize(
  "column,value,message",
  [
    ("sparse", (3, 1, 9), r"field 'item' has id 9 at row 3, outside its vocabulary \[0, 9\)"),
    ("sparse", (0, 0, -1), r"field 'user' has id -1 at row 0, outside its vocabulary \[0, 12\)"),
    ("mv_ids", (5, 4, 6), r"field 'tags' has id 6 at row 5, outside its vocabulary \[0, 6\)"),
    ("labels", (7, 1, 2), r"label 'buy' is 2 at row 7; labels are 0 or 1"),
    ("dense", (2, 0, np.nan), r"'dense': field 'price' is nan at row 2; values must be finite"),
    ("mv_w", (1, 1, np.inf), r"column 'mv_w': field 'hist' is inf at row 1; values must be finite"),
    ("truth", (4, 1, -np.inf), r"'truth': field 'pcvr' is -inf at row 4; values must be finite"),
  ],
)
def test_nothing_a_model_cannot_take_is_ever_written(tmp_path, column, value, message):
  schema = tiny.tiny_schema()
  b = tiny.random_block(schema, 10)
  row, col, v = value
  b[column][row, col] = v
  with pytest.raises(D.DatasetError, match=message):
    D.write_dataset(str(tmp_path / "d"), schema, [b], block_rows=16)
  assert not os.path.exists(tmp_path / "d" / "manifest.json")
  w = shards.ShardWriter(str(tmp_path), "x.esb", schema)
  with pytest.raises(D.DatasetError, match=message):
    w.write(b)
  w.abort()


def _write_format_1(directory):
  """Rewrites a dataset as esmjax wrote it before checksums: index (offset, length), footer
  (index offset, count, 'ESBSHRD1'), manifest version 1. The block records are the same bytes."""
  for path in D.open_dataset(directory).shard_paths:
    data = open(path, "rb").read()
    idx_off, count, _, _ = struct.unpack("<QQI4x8s", data[-32:])
    index = np.frombuffer(data[idx_off : idx_off + 40 * count], np.uint64).reshape(-1, 5)[:, :2]
    footer = struct.pack("<QQ8s", idx_off, count, b"ESBSHRD1")
    open(path, "wb").write(data[:idx_off] + index.tobytes() + footer)
  mpath = os.path.join(directory, "manifest.json")
  m = json.loads(open(mpath).read())
  m["version"] = 1
  open(mpath, "w").write(json.dumps({k: v for k, v in m.items() if k != digest.KEY}))
  D.seal_manifest(directory)  # what `python -m esmjax.seal DIR` does for an old dataset


def test_datasets_written_before_checksums_are_read_with_one_warning(ds, tmp_path, caplog):
  want = ds.read_all()
  old = str(tmp_path / "old")
  shutil.copytree(ds.directory, old)
  _write_format_1(old)
  with caplog.at_level(logging.WARNING):
    d = D.open_dataset(old)
    D.open_dataset(old)
  warnings = [r.getMessage() for r in caplog.records if "without block checksums" in r.getMessage()]
  assert len(warnings) == 1 and old in warnings[0] and "format version 1" in warnings[0]
  got = d.read_all()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  cfg = pipeline.PipelineConfig(batch_size=100, seed=1, window_blocks=2, num_epochs=1, prefetch=0)
  assert sum(len(b["user"]) for b in pipeline.train_iter_dataset(d, cfg)) == 2000
  # Without a checksum, a flipped id is caught by the range check on read.
  path = d.shard_paths[2]
  with open(path, "r+b") as f:
    f.seek(_column_offset(path, 1, "sparse") + 12 * 7 + 4)  # row 7, field 'item'
    f.write(np.int32(-5).tobytes())
  with pytest.raises(
    D.DatasetError, match=rf"shard {re.escape(path)}, block 1: .*field 'item' has id -5 at row 7"
  ):
    D.open_dataset(old).read_all()


@pytest.mark.parametrize(
  "content,message",
  [
    (b'{"format": "esmjax-blocks", "vers', r"is not readable JSON \(JSONDecodeError"),
    (b"\xff\xfe\x00garbage", r"is not readable JSON \(UnicodeDecodeError"),
    (b"[1, 2, 3]", r"expected a JSON object, found list"),
    (b'{"format": "esmjax-blocks", "version": 2}', r"malformed \(TypeError: 'shards' is not a"),
    (b'{"format": "esmjax-blocks", "version": 99}', r"format version 99; this esmjax reads"),
    (b'{"format": "parquet"}', r"format 'parquet', expected 'esmjax-blocks'"),
  ],
)
def test_a_garbage_manifest_raises_naming_its_path(ds, content, message):
  mpath = os.path.join(ds.directory, "manifest.json")
  open(mpath, "wb").write(content)
  with pytest.raises(D.DatasetError, match=re.escape(mpath) + ".*" + message):
    D.open_dataset(ds.directory)


def test_manifest_structure_and_statistics_are_checked(ds):
  mpath = os.path.join(ds.directory, "manifest.json")
  good = json.loads(open(mpath).read())
  cases = [
    (
      lambda m: m["shards"][1].update(num_rows=5),
      r"shard entry 1 \('shard-00001.esb'\) has inconsistent block",
    ),
    (lambda m: m.update(num_blocks=9), r"num_blocks / num_rows differ from the sum over its"),
    (
      lambda m: m["schema"]["dense"][0].update(mean=float("inf")),
      r"dense field 'price' has mean=inf",
    ),
    (
      lambda m: m["schema"]["dense"][1].update(std=None),
      r"dense field 'age' has mean=0.5, std=None",
    ),
    (lambda m: m["schema"]["sparse"][0].update(vocab_size=0), r"field 'user' has vocab_size=0"),
    (
      lambda m: m["schema"].update(labels=["click", "purchase"]),
      r"unknown label\(s\) \['purchase'\]",
    ),
    (lambda m: m["schema"]["multi"][0].pop("max_len"), r"malformed schema \(TypeError"),
  ]
  for edit, message in cases:
    m = json.loads(json.dumps(good))
    edit(m)
    with open(mpath, "w") as f:
      json.dump(m, f)  # Infinity as written by json.dump for the inf case
    with pytest.raises(D.DatasetError, match=re.escape(mpath) + ".*" + message):
      D.open_dataset(ds.directory)


def test_write_manifest_refuses_non_finite_statistics(tmp_path):
  import dataclasses

  schema = tiny.tiny_schema()
  dense = (D.DenseField("price", float("inf"), 1.0),) + schema.dense[1:]
  bad = dataclasses.replace(schema, dense=dense)
  with pytest.raises(
    D.DatasetError, match=r"dense field 'price' has mean=inf, std=1.0; the statistics must be"
  ):
    D.write_manifest(str(tmp_path), bad, [], 256)
  assert not os.path.exists(tmp_path / "manifest.json")


def test_the_cli_stops_with_one_line_and_exit_2_on_a_corrupt_block(tmp_path):

  train = tiny.tiny_dataset(str(tmp_path / "train"), 1000, block_rows=128)
  ev = tiny.tiny_dataset(str(tmp_path / "eval"), 300, seed=1)
  path = train.shard_paths[1]
  _flip(path, _column_offset(path, 0, "sparse") + 40)
  r = tiny.run_cli(
    [
      "--config=configs/esmm.py",
      f"--workdir={tmp_path / 'wd'}",
      f"--config.data.train_dir={train.directory}",
      f"--config.data.eval_dir={ev.directory}",
      "--config.train.batch_size=64",
      "--config.train.eval_batch_size=128",
      "--config.model.hidden=(8,)",
      "--config.model.embed_dim=4",
      "--config.train.num_epochs=1",
    ]
  )
  assert r.returncode == 2, r.stderr[-3000:]
  last = r.stderr.strip().splitlines()[-1]
  want = (
    rf"esmjax: error: shard {re.escape(path)}, block 0: checksum mismatch "
    r".*re-create the dataset"
  )
  assert re.fullmatch(want, last), last
  assert "Traceback" not in r.stderr


def test_block_checksum_catches_flips_swaps_zeroed_sectors_and_length():
  rng = np.random.default_rng(0)
  rec = rng.integers(0, 256, 3 * 4096 + 1000, dtype=np.uint8).tobytes()  # 3 full rows and a tail
  base = shards.block_checksum(rec)
  assert base == shards.block_checksum(memoryview(rec))  # bytes or a view of them: the same
  for pos in list(rng.integers(0, len(rec), 200)) + [0, len(rec) - 1, 3 * 4096, 4095, 4096]:
    for flip in (1, 0x80, 0xFF):
      b = bytearray(rec)
      b[pos] ^= flip
      assert shards.block_checksum(bytes(b)) != base, (pos, flip)
  words = np.frombuffer(rec[: 3 * 4096], np.uint64).copy()
  for i, j in ((0, 1), (5, 517), (3, 1024), (100, 1500)):  # same row, other row, same column
    w = words.copy()
    w[[i, j]] = w[[j, i]]
    assert shards.block_checksum(w.tobytes() + rec[3 * 4096 :]) != base, (i, j)
  rows = [rec[k * 4096 : (k + 1) * 4096] for k in range(3)]
  swapped = rows[1] + rows[0] + rows[2] + rec[3 * 4096 :]
  assert shards.block_checksum(swapped) != base  # sectors swapped
  assert shards.block_checksum(rec[:4096] + bytes(4096) + rec[8192:]) != base  # a zeroed sector
  assert shards.block_checksum(rec + b"\0") != base  # one zero byte more
  # The value is part of the on-disk format: fixed for fixed bytes.
  assert shards.block_checksum(bytes(range(256)) * 40) == (
    10126205762569202688,
    3237077605472454864,
    7238939886502624256,
  )
