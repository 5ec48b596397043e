"""The on-disk dataset: a directory with `manifest.json` and shards of blocks.

`manifest.json` holds the schema, the row and block counts, the shards with their block sizes, how
the data was made and its bad-line report; it is written last and atomically, so a directory with a
manifest is complete. Blocks and their encoding: `blocks`; shard files and checksums: `shards`.

What is checked when a dataset is read: the manifest's structure (a clear error naming it, never a
traceback) and its digest (`esmjax.common.digest`: the manifest is sealed when written); every
shard path
it lists: relative, inside the directory (no '..', no symlink out), a regular file (never a FIFO
or a device), whose size and last 4 KB (its footer and block index, which hold the checksum of
every block) match the manifest's record, so no shard can stand in for another; every shard's
footer, index and block count, and every block read against its checksum,
so the bytes a model sees are the bytes that were written — and written blocks were validated
(`blocks.check_block`: ids inside their vocabularies, labels 0/1, finite values). Datasets written
before checksums (format version 1) are read with one warning; their blocks are checked for ids
inside the vocabularies and finite values instead, when read. A manifest without a digest
(written by an older esmjax) is refused, naming the fix: convert the data again, or seal it after
checking it (`python -m esmjax.seal DIR`: `seal_manifest` verifies every block's checksum first).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from esmjax.common import digest
from esmjax.common.schema import (  # noqa: F401  (re-exported: the dataset's schema types)
  LABELS,
  OOV,
  PAD,
  DatasetError,
  DenseField,
  MultiField,
  Schema,
  SparseField,
)
from esmjax.data.format.blocks import (  # noqa: F401  (re-exported: the dataset's block helpers)
  check_block,
  concat_blocks,
  empty_block,
  fixed_size_blocks,
  slice_block,
)
from esmjax.data.format.shards import SHARD_SUFFIX, ShardReader, ShardWriter

FORMAT = "esmjax-blocks"
VERSION = 2  # 2: blocks carry checksums; 1: none (still read)
MANIFEST = "manifest.json"
_log = logging.getLogger(__name__)
_warned: set[str] = set()  # directories already warned about (one warning per process)
_FIX = "convert the data again"


def write_manifest(
  directory: str,
  schema: Schema,
  shards: Sequence[dict[str, Any]],
  block_rows: int,
  source: dict[str, Any] | None = None,
  extra: dict[str, Any] | None = None,
) -> dict:
  """Writes manifest.json last and atomically: a directory with a manifest is complete."""
  for f in schema.dense:
    if not (math.isfinite(f.mean) and math.isfinite(f.std)):
      raise DatasetError(
        f"{directory}: dense field {f.name!r} has mean={f.mean}, std={f.std}; "
        "the statistics must be finite"
      )
  manifest = {
    "format": FORMAT,
    "version": VERSION,
    "schema": schema.to_json(),
    "num_rows": int(sum(s["num_rows"] for s in shards)),
    "num_blocks": int(sum(s["num_blocks"] for s in shards)),
    "block_rows": int(block_rows),
    "shards": [_identified(directory, s) for s in shards],
    "source": source or {},
  }
  manifest.update(extra or {})
  digest.write_json(os.path.join(directory, MANIFEST), manifest, indent=1)
  return manifest


def _identified(directory: str, entry: dict[str, Any]) -> dict[str, Any]:
  """A shard's manifest entry with its size and tail digest (`digest.tail_digest`)."""
  where = os.path.join(directory, MANIFEST)
  return {**entry, **digest.tail_digest(digest.confined_file(directory, entry["path"], where))}


def seal_manifest(directory: str) -> dict:
  """Seals the manifest of a dataset written without digests (by an older esmjax), after checking
  its structure and every block of every shard against its checksum (format 2); returns it. A
  CSV ingestion's vocabulary file is sealed too, and its digest recorded in the manifest."""
  mpath = os.path.join(directory, MANIFEST)
  manifest = _read_manifest(mpath)
  _schema(manifest, mpath)
  for s in manifest["shards"]:
    reader = ShardReader(digest.confined_file(directory, s["path"], mpath), int(s["num_blocks"]))
    for j in range(len(reader)):
      reader.verify(j)
  manifest = {k: v for k, v in manifest.items() if k != digest.KEY}
  manifest["shards"] = [_identified(directory, s) for s in manifest["shards"]]
  ingest = manifest.get("ingest")
  if isinstance(ingest, dict) and ingest.get("vocab_file"):
    vpath = digest.confined_file(directory, ingest["vocab_file"], mpath)
    vocabs = digest.read_json(vpath, _FIX, legacy="accept")
    ingest["vocab_digest"] = digest.write_json(vpath, vocabs)
  digest.write_json(mpath, manifest, indent=1)
  return manifest


def write_dataset(
  directory: str,
  schema: Schema,
  blocks: Iterable[dict[str, np.ndarray]],
  *,
  block_rows: int = 8192,
  blocks_per_shard: int = 64,
  source: dict[str, Any] | None = None,
  extra: dict[str, Any] | None = None,
) -> dict:
  """Writes an in-order stream of blocks (any sizes) as blocks of `block_rows` rows in shards."""
  os.makedirs(directory, exist_ok=True)
  shards, writer = [], None

  def shaped(stream):  # values are checked by the writer, on the re-cut blocks
    for b in stream:
      check_block(schema, b, values=False)
      yield b

  try:
    for block in fixed_size_blocks(shaped(blocks), block_rows):
      if writer is None:
        writer = ShardWriter(directory, f"shard-{len(shards):05d}{SHARD_SUFFIX}", schema)
      writer.write(block)
      if writer.num_blocks >= blocks_per_shard:
        shards.append(writer.close())
        writer = None
  except BaseException:
    if writer is not None:
      writer.abort()
    raise
  if writer is not None:
    shards.append(writer.close())
  return write_manifest(directory, schema, shards, block_rows, source, extra)


class BlockSource:
  """Random access to the decoded blocks of a dataset across its shards, one element per block
  (a grain random-access data source). `self[i]` is verified (see the module doc); `read(i,
  verify=False)` leaves that to a caller that ran `verify(i)` itself, e.g. in another thread."""

  def __init__(self, dataset: Dataset):
    self._dataset, self._schema = dataset, dataset.schema
    entries = dataset.manifest["shards"]
    self._readers = [
      ShardReader(p, int(s["num_blocks"]))
      for p, s in zip(dataset.shard_paths, entries, strict=True)
    ]
    # (reader, block in its shard, rows) per block, made once: a lookup is a list read.
    self._where = [
      (r, j, int(n))
      for r, s in zip(self._readers, entries, strict=True)
      for j, n in enumerate(s["block_sizes"])
    ]
    self._layouts: set[tuple] = set()  # block layouts already checked against the schema

  def __len__(self) -> int:
    return len(self._where)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return self.read(index, verify=True)

  def verify(self, index: int) -> None:
    """Raises DatasetError naming the shard and block when block `index` is not as written."""
    reader, j, _ = self._where[int(index)]
    if reader.checksummed:
      reader.verify(j)
    else:  # format 1: no checksum; what a writer checks, checked when read
      try:
        check_block(self._schema, self.read(index, verify=False))
      except DatasetError as e:
        raise DatasetError(f"shard {reader.path}, block {j}: {e}") from None

  def read(self, index: int, *, verify: bool = True) -> dict[str, np.ndarray]:
    if verify:
      self.verify(index)
    reader, j, rows = self._where[int(index)]
    block = reader.decode(j)
    layout = tuple((k, v.dtype.str, v.shape[1:]) for k, v in block.items())
    if len(block["user"]) != rows or layout not in self._layouts:
      self._check_layout(reader, j, rows, block, layout)
    return block

  def _check_layout(self, reader, j, rows, block, layout) -> None:
    n = len(block["user"])
    if n != rows:
      raise DatasetError(f"shard {reader.path}, block {j} has {n} rows; the manifest lists {rows}")
    try:
      check_block(self._schema, block, values=False)
    except DatasetError as e:
      raise DatasetError(
        f"shard {reader.path}, block {j} does not match the manifest's schema: {e}"
      ) from None
    self._layouts.add(layout)

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
  def version(self) -> int:
    return int(self.manifest["version"])

  @property
  def shard_paths(self) -> list[str]:
    return [os.path.join(self.directory, s["path"]) for s in self.manifest["shards"]]

  def block_source(self) -> BlockSource:
    """Random access to the decoded, verified blocks, one element per block."""
    return BlockSource(self)

  def read_all(self) -> dict[str, np.ndarray]:
    """All rows in file order (for evaluation / prediction of small datasets and tests)."""
    src = self.block_source()
    if not len(src):
      return empty_block(self.schema)
    return concat_blocks([src[i] for i in range(len(src))])


def open_dataset(directory: str) -> Dataset:
  """Opens a dataset directory; clear errors name the missing or malformed path."""
  if not directory:
    raise DatasetError("dataset path is empty")
  if not os.path.isdir(directory):
    raise DatasetError(f"dataset directory does not exist: {directory}")
  mpath = os.path.join(directory, MANIFEST)
  if not os.path.exists(mpath):
    raise DatasetError(
      f"no {MANIFEST} in {directory}: not a dataset, or its writing did not finish"
    )
  manifest = _read_manifest(mpath)
  schema = _schema(manifest, mpath)
  manifest = digest.verify_json(manifest, mpath, _FIX)
  for s in manifest["shards"]:
    p = os.path.join(directory, s["path"])
    if not os.path.lexists(p) and isinstance(s["path"], str) and not os.path.isabs(s["path"]):
      raise DatasetError(f"shard listed in {mpath} is missing: {p}")
    p = digest.confined_file(directory, s["path"], mpath)
    if digest.tail_digest(p) != {"bytes": s.get("bytes"), "tail": s.get("tail")}:
      raise digest.IntegrityError(
        f"{p} is not the shard {mpath} lists under that name (its size or last bytes differ: "
        f"replaced, truncated or changed after writing): {_FIX}"
      )
  ds = Dataset(directory, manifest, schema)
  if ds.version < 2 and os.path.abspath(directory) not in _warned:
    _warned.add(os.path.abspath(directory))
    _log.warning(
      "%s was written without block checksums (format version %d): its blocks are "
      "read unverified (ids and values are range-checked instead); convert it again to "
      "verify every block",
      directory,
      ds.version,
    )
  return ds


def _read_manifest(mpath: str) -> dict[str, Any]:
  """manifest.json, its structure checked: DatasetError naming the file and what is wrong."""
  try:
    with open(mpath) as f:
      manifest = json.load(f)
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise DatasetError(
      f"{mpath} is not readable JSON ({type(e).__name__}: {e}); the dataset is "
      "damaged: convert it again"
    ) from None
  if not isinstance(manifest, dict):
    raise DatasetError(f"{mpath}: expected a JSON object, found {type(manifest).__name__}")
  if manifest.get("format") != FORMAT:
    raise DatasetError(f"{mpath}: format {manifest.get('format')!r}, expected {FORMAT!r}")
  version = manifest.get("version")
  if not isinstance(version, int) or not 1 <= version <= VERSION:
    raise DatasetError(
      f"{mpath}: format version {version!r}; this esmjax reads versions 1 to {VERSION}"
    )
  shards = manifest.get("shards")
  try:
    if not isinstance(shards, list):
      raise TypeError("'shards' is not a list")
    for i, s in enumerate(shards):
      sizes = [int(n) for n in s["block_sizes"]]
      if (
        not isinstance(s["path"], str)
        or len(sizes) != int(s["num_blocks"])
        or sum(sizes) != int(s["num_rows"])
        or min(sizes, default=1) < 1
      ):
        raise ValueError(f"shard entry {i} ({s.get('path')!r}) has inconsistent block counts")
    if sum(int(s["num_blocks"]) for s in shards) != int(manifest["num_blocks"]) or sum(
      int(s["num_rows"]) for s in shards
    ) != int(manifest["num_rows"]):
      raise ValueError("num_blocks / num_rows differ from the sum over its shards")
  except (KeyError, TypeError, ValueError) as e:
    raise DatasetError(f"{mpath}: malformed ({type(e).__name__}: {e})") from None
  return manifest


def _schema(manifest: dict, mpath: str) -> Schema:
  try:
    schema = Schema.from_json(manifest["schema"])
  except DatasetError as e:
    raise DatasetError(f"{mpath}: {e}") from None
  except (KeyError, TypeError, ValueError, AttributeError) as e:
    raise DatasetError(f"{mpath}: malformed schema ({type(e).__name__}: {e})") from None
  for f in schema.dense:
    if not (
      isinstance(f.mean, (int, float))
      and isinstance(f.std, (int, float))
      and math.isfinite(f.mean)
      and math.isfinite(f.std)
    ):
      raise DatasetError(
        f"{mpath}: dense field {f.name!r} has mean={f.mean!r}, std={f.std!r}; the "
        "statistics must be finite numbers: convert the data again"
      )
  for f in (*schema.sparse, *schema.multi):
    if not isinstance(f.vocab_size, int) or f.vocab_size < 1:
      raise DatasetError(f"{mpath}: field {f.name!r} has vocab_size={f.vocab_size!r}")
  return schema
