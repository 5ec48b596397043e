"""Compressed block records (`blocks.encode_block(codec=...)`): the same block back, shards of
them read and verified like plain ones, damage named instead of decoded."""

from __future__ import annotations

import numpy as np
import pytest

from esmjax.common.schema import DatasetError, MultiField, Schema, SparseField
from esmjax.data.format import blocks, shards


def _schema() -> Schema:
  return Schema(
    sparse=(SparseField("a", 50, "user"), SparseField("b", 1 << 20, "item")),
    multi=(MultiField("m", 100, 4, "sum", "user"),),
    dense=(),
    labels=("click", "buy"),
  )


def _block(n: int = 300) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  b = blocks.empty_block(_schema(), n)
  b["sparse"][:] = np.stack([rng.integers(0, 50, n), rng.integers(0, 1 << 20, n)], 1)
  b["mv_ids"][:, :2] = rng.integers(0, 100, (n, 2))
  b["mv_w"][:, :2] = rng.random((n, 2))
  b["labels"][:, 0] = rng.random(n) < 0.1
  b["user"][:] = rng.integers(-1, 1 << 40, n)
  b["sample_id"][:] = np.arange(n)
  return b


@pytest.mark.parametrize("codec", blocks.CODECS)
def test_compressed_record_decodes_to_the_same_block(codec):
  b = _block()
  rec = blocks.encode_block(b, codec)
  assert rec[:4] == b"ESBZ" and len(rec) < len(blocks.encode_block(b))
  out = blocks.decode_block(rec)
  assert set(out) == set(b)
  for k in b:
    assert out[k].dtype == b[k].dtype
    np.testing.assert_array_equal(out[k], b[k], err_msg=k)


def test_unknown_codec_is_refused():
  with pytest.raises(ValueError, match="block codec 'gzip'"):
    blocks.encode_block(_block(), "gzip")


def test_shard_of_compressed_blocks_reads_back_and_catches_damage(tmp_path):
  w = shards.ShardWriter(str(tmp_path), "s.esb", _schema(), codec="zstd")
  b1, b2 = _block(300), _block(200)
  w.write(b1)
  w.write(b2)
  w.close()
  r = shards.ShardReader(str(tmp_path / "s.esb"))
  for j, b in enumerate((b1, b2)):
    np.testing.assert_array_equal(r[j]["sparse"], b["sparse"])
  # A flipped byte inside the compressed payload: the block checksum names shard and block.
  path = tmp_path / "s.esb"
  raw = bytearray(path.read_bytes())
  raw[200] ^= 0xFF
  path.write_bytes(bytes(raw))
  with pytest.raises(DatasetError, match="block 0: checksum mismatch"):
    shards.ShardReader(str(path))[0]


def test_garbage_compressed_payload_is_a_dataset_error():
  rec = bytearray(blocks.encode_block(_block(), "zstd"))
  rec[70:90] = b"\0" * 20
  with pytest.raises(DatasetError, match="compressed block record is corrupt"):
    blocks.decode_block(bytes(rec))
