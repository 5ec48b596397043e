r"""Preprocessed logs (CSV or Parquet with a declared schema) -> an esmjax blocked dataset.

    python -m esmjax.data.csv_ingest --config=configs/data/rechub_aliccp.py \
        --input=train.csv[,more.csv] --out_dir=data/rechub_train [--stats_from=<train dataset>] \
        [--config.bad_lines=fail] [--config.id_mapping=hash]

    ingest(config, input_paths, out_dir, stats_from=None) -> manifest

Exit codes of the command (`esmjax.exits`): 0 ingested; 2 a user error (flags, --config and its
overrides, a missing input, an unusable --out_dir), one line on stderr; 3 the ingestion cannot go
on (an OS error writing the output), one line on stderr.

The config (an ml_collections ConfigDict; see `base_config` and configs/data/*.py) says which
columns are single-valued ids (`sparse`), multi-valued ids (`multi`: cell split on `sep`, optional
`id<weight_sep>weight` items, first `max_len` kept, the rest counted), dense numbers (`dense`),
labels (`labels`: dataset label -> column), the user key (`user`) and the sample id (`sample_id`).

Two streaming passes in bounded memory (CSV in 4 MB blocks, Parquet in batches of `read_rows`),
pyarrow doing the parsing (`csv_read`):
1. validate every row (bad lines counted per kind with their file:line, or the first one raised
   with `bad_lines='fail'`), count id values (vocabularies) and dense statistics (mean/std, and
   quantile `boundaries` from a bounded seeded sample);
2. map and write the good rows (`csv_columns`): `id_mapping='vocab'` (frequency-thresholded
   vocabulary, most frequent first, PAD 0, OOV 1; saved to `<out_dir>/vocabs.json`) or `'hash'`
   (`ids.hash_ids` into `hash_buckets`), per column overridable in `field_overrides`.

A feature column that gives a label away (declared as a label too, or predicting one perfectly on
the ingested rows: `leakage`) is reported and recorded in the manifest (`label_leakage`); with
`label_leakage='fail'` the ingestion stops instead, before a manifest is written.

Safety: `out_dir` must not be, hold or lie inside `stats_from` (by real path), checked before
anything is read or written; `out_dir` is held (`ingestion.out_dir_lock`, the lock the Ali-CCP
converter takes too) for the whole ingestion, so a second one into it is refused naming the first;
inputs without a single good row are an error and write nothing. A header, wherever a file has
one, names the columns (read by name in any order; a name given twice is refused); `columns` is the
order of a file without a header. A cell over `max_cell_bytes` stops the ingestion naming its
file, line and column. Id cells are whitespace-trimmed like labels and dense values; the manifest
records per id column how many values were mapped and how many became OOV (`ingest.oov`), with a
warning above `oov_warn_share` when the vocabularies come from `stats_from`. Boolean Parquet
columns read as 1 / 0.

The test split must reuse the train split's vocabularies and dense statistics: `stats_from=`.
Cells equal to one of `pad_values` (default: empty) are absent -> PAD. The user key is the user
column's integer value, or a 64-bit hash of its text when it is not an integer (-1 without a user
column); `sample_id` is that column, or the running row number over all inputs.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from esmjax import exits
from esmjax.common import digest
from esmjax.data.format import dataset as ds_lib
from esmjax.data.format import ids as ids_lib
from esmjax.data.format.blocks import auto_block_rows
from esmjax.data.ingest import leakage
from esmjax.data.ingest import shared as ingestion
from esmjax.data.ingest.csv import read as csv_read
from esmjax.data.ingest.csv.columns import Mapper, dense_values, make_block
from esmjax.data.ingest.csv.config import Cfg, base_config, validate  # noqa: F401  (public: base_config)
from esmjax.data.ingest.csv.read import BAD_KINDS  # public: the kinds of bad lines
from esmjax.data.ingest.shared import IngestError  # public: what ingest raises

DENSE_SAMPLE = 100_000  # rows kept for the dense quantile boundaries


def ingest(
  config,
  input_paths: Sequence[str] | str,
  out_dir: str,
  *,
  stats_from: str | None = None,
  progress: bool = True,
) -> dict:
  """Ingests CSV/Parquet files into `out_dir` (see the module doc); returns the manifest."""
  t0 = time.time()
  cfg = validate(config)
  paths = _input_paths(input_paths, out_dir)
  ingestion.check_out_dir(out_dir, stats_from)  # before anything is read or written
  leaks = _declared_leaks(cfg, cfg.raw["label_leakage"] == "fail")
  # out_dir is held from here on: a second ingestion into it is refused, naming this one.
  with ingestion.out_dir_lock(out_dir):
    manifest = _ingest(cfg, paths, out_dir, stats_from, leaks, progress)
  if progress:
    ingestion.print_report(BAD_KINDS, manifest["ingest"]["bad_lines"], "bad rows skipped")
    ingestion.console(
      f"{out_dir}: {manifest['num_rows']:,} rows, {manifest['num_blocks']} "
      f"block(s) in {time.time() - t0:.1f} s"
    )
  return manifest


def _ingest(cfg: Cfg, paths, out_dir: str, stats_from, leaks, progress) -> dict:
  mappers = [Mapper(c, cfg.raw["pad_values"]) for c in (*cfg.sparse, *(m.ids for m in cfg.multi))]
  dense_fields = _load_stats(stats_from, cfg, mappers) if stats_from else None

  # Pass 1: validation, vocabularies, dense statistics.
  bad, n_good, dense_stats = _validate_and_count(cfg, paths, mappers, dense_fields is None)
  if n_good == 0:  # an empty dataset is never what was asked for: nothing is written
    counts = ", ".join(f"{k}={v:,}" for k, v in sorted(bad.report.counts.items()))
    raise IngestError(
      f"no rows to write: the input(s) {paths} hold no good row"
      + (f" (bad lines: {counts}; see config.bad_lines)" if counts else "")
    )
  for mapper in mappers:
    mapper.finish()
  if dense_fields is None:
    dense_fields = dense_stats.fields(cfg.dense, int(cfg.raw["dense_buckets"]))
  schema = _schema(cfg, mappers, dense_fields)

  return _write(cfg, paths, out_dir, stats_from, mappers, schema, bad, n_good, leaks, progress)


def _write(cfg, paths, out_dir, stats_from, mappers, schema, bad, n_good, leaks, progress) -> dict:
  """Pass 2: replaces `out_dir`'s dataset with the mapped good rows; returns the manifest."""
  fail_on_leakage = cfg.raw["label_leakage"] == "fail"
  _clear_dataset(out_dir)
  trunc = {m.ids.column: {"values": 0, "rows": 0} for m in cfg.multi}  # filled while writing
  missing_dense: collections.Counter = collections.Counter()
  oov: dict = {}
  vocabs = {
    mapper.col.column: mapper.vocab.to_json() for mapper in mappers if mapper.vocab is not None
  }
  record = {
    "config": cfg.raw,
    "inputs": [os.path.abspath(p) for p in paths],
    "rows_written": n_good,
    "id_mapping": _id_mappings(mappers),
    "vocab_file": "vocabs.json" if vocabs else None,
    "stats_from": stats_from,
    "bad_lines": {"mode": cfg.raw["bad_lines"], **bad.report.to_json()},
    "truncated": trunc,
    "missing_dense": missing_dense,
    "user_key": cfg.user or None,
    "sample_id": cfg.sample_id or "row number",
    "label_leakage": leaks,  # filled when the last block is written
    "oov": oov,  # per id column, filled when the last block is written
  }
  if vocabs:  # sealed, and its digest in the (sealed) manifest: --stats_from verifies both
    record["vocab_digest"] = digest.write_json(os.path.join(out_dir, "vocabs.json"), vocabs)
  source = {
    "format": cfg.raw["format"],
    "name": cfg.raw.get("name", ""),
    "made_by": "esmjax.data.csv_ingest",
  }
  blocks = _blocks(paths, cfg, schema, mappers, trunc, missing_dense, leaks, fail_on_leakage)
  manifest = ds_lib.write_dataset(
    out_dir,
    schema,
    _then(blocks, lambda: oov.update(_oov_shares(cfg, mappers, stats_from, progress))),
    block_rows=int(cfg.raw["block_rows"]) or auto_block_rows(schema),
    blocks_per_shard=int(cfg.raw["blocks_per_shard"]),
    source=source,
    extra={"ingest": record},
  )
  if progress:
    for f in leaks:
      ingestion.console(f"warning: {leakage.describe(f)}")
  return manifest


def _then(blocks, done):
  """The blocks, then `done()` (before the manifest that records what it fills is written)."""
  yield from blocks
  done()


def _oov_shares(cfg: Cfg, mappers, stats_from: str | None, progress: bool) -> dict:
  """Per id column: the mapped values and how many of them are OOV. Through `stats_from` a share
  above config.oov_warn_share is warned about: the split's ids mostly miss the reused
  vocabulary (another spelling, other columns, another dataset)."""
  out = {mapper.col.column: mapper.oov_report() for mapper in mappers}
  limit = float(cfg.raw["oov_warn_share"])
  if stats_from and progress:
    for column, r in out.items():
      if r["values"] and r["share"] > limit:
        ingestion.console(
          f"warning: column {column!r}: {r['share']:.1%} of its {r['values']:,} ids are not in "
          f"the vocabulary of --stats_from={stats_from} (OOV; config.oov_warn_share={limit})"
        )
  return out


def _input_paths(input_paths: Sequence[str] | str, out_dir: str) -> list[str]:
  """The input files (empty names dropped), each checked to exist; `out_dir` checked to be set."""
  paths = [p for p in ([input_paths] if isinstance(input_paths, str) else list(input_paths)) if p]
  if not paths:
    raise IngestError("no input files given (--input)")
  for p in paths:
    if not os.path.isfile(p):
      raise IngestError(f"input file does not exist: {p}")
  if not out_dir:
    raise IngestError("--out_dir is required")
  return paths


def _declared_leaks(cfg: Cfg, fail_on_leakage: bool) -> list:
  """Feature columns the config itself also declares as labels (raised with `fail`)."""
  features = {
    **{f.column: "sparse" for f in cfg.sparse},
    **{m.ids.column: "multi-valued" for m in cfg.multi},
    **{c: "dense" for c in cfg.dense},
  }
  leaks = leakage.config_findings(dict(cfg.labels), features)
  if leaks and fail_on_leakage:
    raise IngestError(f"{leakage.describe(leaks[0])} (config.label_leakage='fail')")
  return leaks


def _validate_and_count(cfg: Cfg, paths: Sequence[str], mappers, want_dense: bool):
  """Pass 1 over every input: (bad lines, good rows, dense statistics when `want_dense`); the
  mappers count their values."""
  bad = csv_read.OrderedBadLines(cfg.raw["bad_lines"] == "fail")
  stats = ingestion.DenseStats(len(cfg.dense), sample=DENSE_SAMPLE)
  n_good = 0
  for path in paths:
    rows_here = 0
    for batch, lines, where in csv_read.batches(path, cfg, bad):
      ok = csv_read.good_rows(batch, lines, where, path, cfg, bad)
      rows_here += batch.num_rows
      if not ok.any():
        continue
      good = batch.filter(pa.array(ok))
      cols = {name: good.column(i) for i, name in enumerate(good.schema.names)}
      _count_values(cfg, mappers, cols)
      if want_dense and cfg.dense:
        stats.add(np.stack([dense_values(cols[c])[0] for c in cfg.dense], 1))
      n_good += good.num_rows
    bad.flush()  # column-count rows after the last batch
    if rows_here == 0:
      bad.note(0, path, "empty_file", "(no data rows)")
      bad.flush()
  return bad, n_good, stats


def _schema(cfg: Cfg, mappers: Sequence[Mapper], dense_fields) -> ds_lib.Schema:
  return ds_lib.Schema(
    sparse=tuple(
      ds_lib.SparseField(f.column, mapper.vocab_size)
      for f, mapper in zip(cfg.sparse, mappers[: len(cfg.sparse)], strict=True)
    ),
    multi=tuple(
      ds_lib.MultiField(m.ids.column, mapper.vocab_size, m.max_len, m.pooling)
      for m, mapper in zip(cfg.multi, mappers[len(cfg.sparse) :], strict=True)
    ),
    dense=tuple(dense_fields),
    labels=tuple(name for name, _ in cfg.labels),
  )


def _clear_dataset(out_dir: str) -> None:
  """Creates `out_dir`; a previous dataset there is removed (replaced, never mixed)."""
  os.makedirs(out_dir, exist_ok=True)
  for name in os.listdir(out_dir):
    if name in (ds_lib.MANIFEST, "vocabs.json") or (
      name.startswith("shard-") and ds_lib.SHARD_SUFFIX in name
    ):
      os.remove(os.path.join(out_dir, name))


def _id_mappings(mappers: Sequence[Mapper]) -> dict[str, str]:
  return {
    mapper.col.column: ("vocab" if mapper.col.mapping == "vocab" else f"hash/{mapper.col.buckets}")
    for mapper in mappers
  }


def _blocks(paths, cfg: Cfg, schema, mappers, trunc, missing_dense, leaks, fail_on_leakage):
  """Pass 2: the good rows as mapped blocks (counting into `trunc` and `missing_dense`); after the
  last one, the leaks found in the data join `leaks` (raised with `fail_on_leakage`)."""
  stats = leakage.LeakageStats(
    schema.labels, [f.name for f in schema.sparse], [f.name for f in schema.dense]
  )
  sample = 0
  for path in paths:
    for batch, lines, where in csv_read.batches(path, cfg, None):
      ok = csv_read.good_rows(batch, lines, where, path, cfg, None)
      first_row = sample
      sample += int(ok.sum())
      if not ok.any():
        continue
      good = batch.filter(pa.array(ok))
      block = make_block(good, cfg, schema, mappers, trunc, missing_dense, first_row)
      stats.add(block)
      yield block
  # All rows are written and the manifest is not yet: the place to record or refuse a leak.
  leaks.extend(stats.findings())
  if leaks and fail_on_leakage:
    raise IngestError(f"{leakage.describe(leaks[0])} (config.label_leakage='fail')")


def _count_values(cfg: Cfg, mappers: Sequence[Mapper], cols: dict) -> None:
  """Pass 1: the values of vocabulary-mapped columns (each item of a multi-valued cell)."""
  for mapper in mappers:
    if mapper.col.mapping != "vocab":
      continue
    col = cols[mapper.col.column]
    mc = next((m for m in cfg.multi if m.ids.column == mapper.col.column), None)
    if mc is not None:
      col = pc.list_flatten(pc.split_pattern(col, mc.sep))
      if mc.weight_sep:
        col = pc.list_element(pc.split_pattern(col, mc.weight_sep, max_splits=1), 0)
    mapper.count(col)


def _load_stats(stats_from: str, cfg: Cfg, mappers) -> list[ds_lib.DenseField]:
  """Vocabularies and dense statistics of an earlier ingestion (the train split)."""
  ref = ds_lib.open_dataset(stats_from)  # its manifest (and dense statistics) verified
  vpath = os.path.join(stats_from, "vocabs.json")
  vocabs = {}
  if os.path.exists(vpath) or ref.manifest.get("ingest", {}).get("vocab_digest"):
    fix = f"ingest the training data into {stats_from} again"
    vocabs = digest.read_json(vpath, fix)
    if digest.json_digest(vocabs) != ref.manifest.get("ingest", {}).get("vocab_digest"):
      raise digest.IntegrityError(
        f"{vpath} is not the vocabulary file {stats_from}/manifest.json was written with "
        f"(their digests differ): {fix}"
      )
  for mapper in mappers:
    if mapper.col.mapping == "vocab":
      if mapper.col.column not in vocabs:
        raise IngestError(
          f"stats_from={stats_from}: no vocabulary for column {mapper.col.column!r} in {vpath}"
        )
      mapper.vocab = ids_lib.Vocab.from_json(vocabs[mapper.col.column])
  dense = {f.name: f for f in ref.schema.dense}
  missing = [c for c in cfg.dense if c not in dense]
  if missing:
    raise IngestError(f"stats_from={stats_from}: has no dense field(s) {missing}")
  return [dense[c] for c in cfg.dense]


# ---------------------------------------------------------------------------------------------
# Command line.


def main(argv: Sequence[str]) -> None:
  from absl import flags

  if len(argv) > 1:
    exits.fail(f"unexpected arguments: {list(argv[1:])}", exits.USER_ERROR)
  F = flags.FLAGS
  if F.config is None:
    exits.fail("--config is required (e.g. configs/data/rechub_aliccp.py)", exits.USER_ERROR)
  user_errors = (IngestError, ds_lib.DatasetError, *exits.PATH_ERRORS)
  with exits.exit_codes(user_errors, run_errors=(OSError,)):
    ingest(F.config, F.input or [], F.out_dir, stats_from=F.stats_from)


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "a configs/data/*.py ingestion config")
  flags.DEFINE_list("input", None, "input CSV/Parquet file(s), comma-separated")
  flags.DEFINE_string("out_dir", None, "output dataset directory")
  flags.DEFINE_string(
    "stats_from", None, "reuse vocabularies and dense statistics of this dataset (the train split)"
  )
  app.run(main, flags_parser=exits.parse_flags)
