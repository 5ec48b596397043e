"""The on-disk dataset: a directory with `manifest.json` and shards of blocks.

`manifest.json` holds the schema, the row and block counts, the shards with their block sizes, how
the data was made and its bad-line report; it is written last and atomically, so a directory with a
manifest is complete. Blocks and their encoding: `blocks`; shard files: `shards`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable, Sequence

import numpy as np

from esmjax.data import files
from esmjax.data.blocks import (  # noqa: F401  (re-exported: the dataset's block helpers)
    check_block, concat_blocks, empty_block, fixed_size_blocks, slice_block)
from esmjax.data.shards import SHARD_SUFFIX, ShardReader, ShardWriter  # noqa: F401
from esmjax.schema import (  # noqa: F401  (re-exported: the dataset's schema types)
    LABELS, OOV, PAD, DatasetError, DenseField, MultiField, Schema, SparseField)

FORMAT = "esmjax-blocks"
VERSION = 1
MANIFEST = "manifest.json"


def write_manifest(directory: str, schema: Schema, shards: Sequence[dict[str, Any]], block_rows: int,
                   source: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> dict:
  """Writes manifest.json last and atomically: a directory with a manifest is complete."""
  manifest = {
      "format": FORMAT,
      "version": VERSION,
      "schema": schema.to_json(),
      "num_rows": int(sum(s["num_rows"] for s in shards)),
      "num_blocks": int(sum(s["num_blocks"] for s in shards)),
      "block_rows": int(block_rows),
      "shards": list(shards),
      "source": source or {},
  }
  manifest.update(extra or {})
  files.write_json_atomic(os.path.join(directory, MANIFEST), manifest, indent=1)
  return manifest


def write_dataset(directory: str, schema: Schema, blocks: Iterable[dict[str, np.ndarray]], *,
                  block_rows: int = 8192, blocks_per_shard: int = 64,
                  source: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> dict:
  """Writes an in-order stream of blocks (any sizes) as blocks of `block_rows` rows in shards."""
  os.makedirs(directory, exist_ok=True)
  shards, writer = [], None

  def checked(stream):
    for b in stream:
      check_block(schema, b)
      yield b

  for block in fixed_size_blocks(checked(blocks), block_rows):
    if writer is None:
      writer = ShardWriter(directory, f"shard-{len(shards):05d}{SHARD_SUFFIX}")
    writer.write(block)
    if writer.num_blocks >= blocks_per_shard:
      shards.append(writer.close())
      writer = None
  if writer is not None:
    shards.append(writer.close())
  return write_manifest(directory, schema, shards, block_rows, source, extra)


class BlockSource:
  """Random access to the decoded blocks of a dataset across its shards, one element per block
  (a grain random-access data source)."""

  def __init__(self, dataset: "Dataset"):
    self._dataset = dataset
    self._readers = [ShardReader(p) for p in dataset.shard_paths]
    counts = [int(s["num_blocks"]) for s in dataset.manifest["shards"]]
    # (reader, block in its shard) per block, made once: a lookup is a list read, not a search.
    self._where = [(r, j) for r, c in zip(self._readers, counts) for j in range(c)]

  def __len__(self) -> int:
    return len(self._where)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    reader, j = self._where[int(index)]
    return reader[j]

  def __repr__(self):
    return f"BlockSource({self._dataset.directory!r}, blocks={len(self)})"


@dataclasses.dataclass(frozen=True)
class Dataset:
  """An opened dataset directory: its manifest, schema and shard paths."""

  directory: str
  manifest: dict[str, Any]
  schema: Schema

  @property
  def num_rows(self) -> int:
    return int(self.manifest["num_rows"])

  @property
  def num_blocks(self) -> int:
    return int(self.manifest["num_blocks"])

  @property
  def shard_paths(self) -> list[str]:
    return [os.path.join(self.directory, s["path"]) for s in self.manifest["shards"]]

  def block_source(self) -> BlockSource:
    """Random access to the decoded blocks, one element per block."""
    return BlockSource(self)

  def read_all(self) -> dict[str, np.ndarray]:
    """All rows in file order (for evaluation / prediction of small datasets and tests)."""
    src = self.block_source()
    return concat_blocks([src[i] for i in range(len(src))]) if len(src) else empty_block(self.schema)


def open_dataset(directory: str) -> Dataset:
  """Opens a dataset directory; clear errors name the missing path."""
  if not directory:
    raise DatasetError("dataset path is empty")
  if not os.path.isdir(directory):
    raise DatasetError(f"dataset directory does not exist: {directory}")
  mpath = os.path.join(directory, MANIFEST)
  if not os.path.exists(mpath):
    raise DatasetError(f"no {MANIFEST} in {directory}: not a dataset, or its writing did not finish")
  with open(mpath) as f:
    manifest = json.load(f)
  if manifest.get("format") != FORMAT:
    raise DatasetError(f"{mpath}: format {manifest.get('format')!r}, expected {FORMAT!r}")
  for s in manifest["shards"]:
    p = os.path.join(directory, s["path"])
    if not os.path.exists(p):
      raise DatasetError(f"shard listed in {mpath} is missing: {p}")
  return Dataset(directory, manifest, Schema.from_json(manifest["schema"]))
