r"""Ali-CCP raw dump -> an esmjax blocked dataset: each file read once, bounded memory, all cores.

    python -m esmjax.data.aliccp \
        --skeleton=sample_skeleton_train.csv --common_features=common_features_train.csv \
        --out_dir=data/aliccp_train [--bad_lines=skip|fail] [--block_rows=0 (auto)] [--workers=2] \
        [--config=configs/data/aliccp_raw.py] [--stats_from=data/aliccp_train] [--range_mb=64] \
        [--label_leakage=warn|fail]

(`--range_mb` caps the byte range per task and shard; smaller files are cut into 16 ranges of at
least 4 MB each, so both workers stay busy.)

Input: skeleton rows `sample_id,click,buy,common_feature_index,feature_num,feature_list`, common
rows `common_feature_index,feature_num,feature_list`, a feature list being `field\x02id\x03value`
items joined by `\x01`.

How it runs (`aliccp_work` holds the tasks, `aliccp_parse` the vectorised parser):
1. The common-features file is cut into byte ranges parsed in parallel into a compact numeric
   table — int64 keys (a 64-bit hash of the `common_feature_index` string) sorted, and per common
   row the mapped single-valued ids, dense values and the padded multi-valued ids + weights. Saved
   as `.npy` in `<out_dir>/_common/` and memory-mapped by the workers (one copy in the page cache,
   not one per process; no Python string per row anywhere).
2. The skeleton is cut into byte ranges aligned to line starts; each range is converted by a pool
   worker into its own shard (`shards.ShardWriter`: `.tmp` then rename) followed by a sidecar
   `shard-NNNNN.done.json` (written atomically after the rename) with its counts and statistics.
3. `manifest.json` is written last. A directory without it is not a dataset.

Resume: a rerun with the same inputs (path, size, mtime), config, block rows and range size skips
every range whose sidecar exists and reuses the common table (deleted once the manifest is
written). A rerun with anything different first deletes what this converter wrote in `out_dir`
(shards, sidecars, `.tmp` files, the common table, the manifest) and starts over: never a mix of two
configurations. Workers die with the converter (Linux PR_SET_PDEATHSIG) and an flock keeps a second
conversion out of the same directory.

Ids: every field is hashed (`ids.hash_ids`: splitmix64 of the integer id salted per field) into
its configured bucket count, shifted to [2, buckets + 2): PAD = 0 is an absent field or an empty
slot, OOV = 1 is never produced. Hashing needs no vocabulary pass and no state shared between
workers or between the train and the test conversion, which is what keeps this single-pass,
parallel and bounded in memory.

Fields: `aliccp_spec` (defaults in `default_config`, overridable by `--config`). Multi-valued
fields keep their values in file order; a list longer than `max_len` keeps its `max_len` largest
weights (ties: first seen), and the dropped values are counted in the manifest. `user` is the raw
id of field 101 (-1 where absent), `sample_id` the skeleton's first column.

Bad lines (counted per kind, first examples with file and line number in the manifest and on the
console; `--bad_lines=fail` stops at the first, in file order): see `BAD_KINDS`. Rows are only
ever dropped for one of those reasons. Inputs must be plain text: compressed files and archives are
refused with one line naming the file and the command that unpacks it (ranges of a compressed
file cannot be read independently). A feature column that gives a label away (`leakage`) is
reported and recorded in the manifest; `--label_leakage=fail` stops the conversion instead.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
import sys
import time
from typing import Any, Sequence

import numpy as np

from esmjax.data import aliccp_work as work
from esmjax.data import dataset as ds_lib
from esmjax.data import files
from esmjax.data import ingestion
from esmjax.data import leakage
from esmjax.data.aliccp_spec import (  # noqa: F401  (the converter's public names)
    ALL_KINDS, BAD_KINDS, WARN_KINDS, ConversionError, Spec, compile_config, default_config)
from esmjax.data.blocks import auto_block_rows
from esmjax.data.files import read_json, write_json_atomic
from esmjax.data.ingestion import BAD_LINES_MODES, MAX_EXAMPLES

_FORMAT_OF_SIDECARS = 2  # part of the fingerprint: sidecars or shards of another layout are redone


@dataclasses.dataclass
class _Job:
  """One conversion's settings, resolved and validated."""

  skeleton: str
  common_features: str
  out_dir: str
  spec: Spec
  bad_lines: str
  block_rows: int
  workers: int
  range_bytes: int
  chunk_bytes: int
  stats_from: str | None
  label_leakage: str
  progress: bool
  keep_common_index: bool
  t_start: float

  @property
  def fail(self) -> bool:
    return self.bad_lines == "fail"

  @property
  def common_dir(self) -> str:
    return os.path.join(self.out_dir, "_common")


def convert(skeleton: str, common_features: str, out_dir: str, *, config=None,
            bad_lines: str = "skip", block_rows: int = 0, workers: int | None = None,
            range_mb: float = 64.0,
            chunk_mb: float = 8.0, stats_from: str | None = None, label_leakage: str = "warn",
            progress: bool = True, keep_common_index: bool = False) -> dict:
  """Converts raw Ali-CCP files into a dataset directory; returns its manifest (see module doc)."""
  t_start = time.time()
  if bad_lines not in BAD_LINES_MODES:
    raise ConversionError(f"bad_lines={bad_lines!r}; allowed: {list(BAD_LINES_MODES)}")
  if label_leakage not in leakage.LEAKAGE_MODES:
    raise ConversionError(f"label_leakage={label_leakage!r}; allowed: "
                          f"{list(leakage.LEAKAGE_MODES)}")
  if block_rows < 0:
    raise ConversionError(f"block_rows={block_rows}; must be >= 1, or 0 for automatic")
  for flag, path in (("skeleton", skeleton), ("common_features", common_features)):
    if not path:
      raise ConversionError(f"--{flag} is required")
    if not os.path.isfile(path):
      raise ConversionError(f"--{flag}: no such file: {path}")
    kind = files.sniff(path)
    if kind == "binary":
      raise ConversionError(f"--{flag}: {path} does not look like text (it holds NUL bytes at its "
                            "start); the Ali-CCP files are text")
    if kind:
      raise ConversionError(
          f"--{flag}: {path} is {files.describe_kind(kind)}: the Ali-CCP converter reads byte "
          f"ranges of its inputs in parallel, so they must be plain text: unpack it first "
          f"(`{files.UNPACK_HINT.get(kind, '').format(path)}`) and pass the extracted file")
  if not out_dir:
    raise ConversionError("--out_dir is required")
  if stats_from and not os.path.isdir(stats_from):
    raise ConversionError(f"--stats_from: no such dataset directory: {stats_from}")
  spec = compile_config(config if config is not None else default_config())
  job = _Job(skeleton=skeleton, common_features=common_features, out_dir=out_dir, spec=spec,
             bad_lines=bad_lines, block_rows=block_rows or auto_block_rows(spec.schema),
             workers=max(1, int(workers or os.cpu_count() or 1)),
             range_bytes=max(1 << 12, int(range_mb * (1 << 20))),
             chunk_bytes=max(1 << 12, int(chunk_mb * (1 << 20))),
             stats_from=stats_from, label_leakage=label_leakage, progress=progress,
             keep_common_index=keep_common_index, t_start=t_start)
  os.makedirs(out_dir, exist_ok=True)
  lock = _lock(out_dir)
  try:
    return _convert(job)
  finally:
    lock.close()


def _lock(out_dir: str):
  """One conversion per output directory at a time (an exclusive flock, released on exit or
  crash)."""
  import fcntl

  f = open(os.path.join(out_dir, ".converting.lock"), "w")
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    f.close()
    raise ConversionError(f"another conversion is writing to {out_dir} (it holds {f.name})") \
        from None
  return f


def _file_id(path: str) -> dict:
  st = os.stat(path)
  return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _fingerprint(*parts: Any) -> str:
  return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _json_or_none(path: str):
  """A file this converter wrote, or None when it is absent or unreadable (then it is redone)."""
  try:
    return read_json(path)
  except (OSError, ValueError):
    return None


def _ours(name: str) -> bool:
  if name in (ds_lib.MANIFEST, ds_lib.MANIFEST + ".tmp"):
    return True
  return name.startswith("shard-") and name.endswith((ds_lib.SHARD_SUFFIX, ".done.json", ".tmp"))


def _remove_dir(d: str) -> None:
  if os.path.isdir(d):
    for name in os.listdir(d):
      os.remove(os.path.join(d, name))
    os.rmdir(d)


def _clear(out_dir: str) -> None:
  for name in os.listdir(out_dir):
    if _ours(name):
      os.remove(os.path.join(out_dir, name))
  _remove_dir(os.path.join(out_dir, "_common"))


def _convert(job: _Job) -> dict:
  spec, out_dir = job.spec, job.out_dir
  sk_id, cf_id = _file_id(job.skeleton), _file_id(job.common_features)
  fp_common = _fingerprint(cf_id, spec.config_json, job.range_bytes)
  fp = _fingerprint(sk_id, fp_common, job.block_rows, ds_lib.VERSION, _FORMAT_OF_SIDECARS)
  # Resume or restart: everything we wrote under another fingerprint goes.
  stale = any((_json_or_none(os.path.join(out_dir, n)) or {}).get("fingerprint") != fp
              for n in os.listdir(out_dir) if n.startswith("shard-") and n.endswith(".done.json"))
  cmeta = _json_or_none(os.path.join(job.common_dir, "meta.json"))
  stale |= cmeta is not None and cmeta.get("fingerprint") != fp_common
  mpath = os.path.join(out_dir, ds_lib.MANIFEST)
  old = _json_or_none(mpath) if os.path.exists(mpath) else None
  stale |= os.path.exists(mpath) and (not isinstance(old, dict) or
                                       old.get("conversion", {}).get("fingerprint") != fp)
  if stale:
    ingestion.console(f"{out_dir}: holds a conversion with other inputs or settings: restarting "
                      "from scratch")
    _clear(out_dir)
  elif old is not None:
    os.remove(mpath)  # rewritten at the end; until then the directory is not a dataset

  ctx = mp.get_context("spawn")  # no fork: the caller may hold threads (tqdm, grain, JAX)
  counters = (ctx.Value("q", 0), ctx.Value("q", 0))
  init_args = (spec.config_json, counters[0], counters[1], job.common_dir)
  pool = (ctx.Pool(job.workers, initializer=work.init_worker, initargs=init_args + (True,))
          if job.workers > 1 else None)
  if pool is None:
    work.init_worker(*init_args)
  try:
    common_meta = _build_common(job, fp_common, pool, counters)
    t_common = time.time() - job.t_start
    sk_meta = _convert_skeleton(job, fp, pool, counters)
  finally:
    if pool is not None:
      pool.terminate()
      pool.join()
    work.clear_worker()

  dense = _dense_fields(spec, sk_meta["sidecars"], job.stats_from)
  leaks = _leakage(sk_meta["sidecars"], job)
  schema = dataclasses.replace(spec.schema, dense=tuple(dense))
  shards = [s["shard"] for s in sk_meta["sidecars"] if s["shard"]["num_rows"] > 0]
  n_rows = sum(s["num_rows"] for s in shards)
  seconds = time.time() - job.t_start
  nbytes = sk_id["size"] + cf_id["size"]
  user = spec.names[spec.user_field] if spec.user_field >= 0 else None
  conversion = {
      "fingerprint": fp,
      "id_mapping": {
          "kind": "hash",
          "function": ("2 + splitmix64(raw_id XOR blake2b8(field name)) % buckets  "
                       "(esmjax.data.ids.hash_ids)"),
          "why": ("single streaming pass, bounded memory, no vocabulary shared between workers or "
                  "splits"),
          "buckets": {n: int(b) for n, b in zip(spec.names, spec.buckets)},
          "pad": ds_lib.PAD, "oov": ds_lib.OOV,
      },
      "user_key": f"raw id of field {user} (-1 where absent)",
      "dense_from": "values of fields with value_dense (0 where absent)",
      "multi_valued_truncation": "largest weights kept, ties in file order",
      "rows_written": n_rows, "clicks": sk_meta["clicks"], "buys": sk_meta["buys"],
      "lines": {"skeleton": sk_meta["n_lines"], "common_features": common_meta["n_lines"]},
      "common_rows": common_meta["n_rows"],
      "bad_lines": {"mode": job.bad_lines, "skeleton": sk_meta["bad"],
                    "common_features": common_meta["bad"]},
      "warnings": {"skeleton": sk_meta["warnings"], "common_features": common_meta["warnings"]},
      "unknown_fields": sk_meta["unknown_fields"], "label_leakage": leaks,
      "truncated": {f.name: {"values": int(v), "rows": int(r), "max_len": f.max_len}
                    for f, v, r in zip(spec.schema.multi, sk_meta["truncated_values"],
                                       sk_meta["truncated_rows"])},
      "config": json.loads(spec.config_json),
      "input_bytes": nbytes, "seconds": round(seconds, 3),
      "seconds_common_features": round(t_common, 3),
      "workers": job.workers, "range_bytes": job.range_bytes, "stats_from": job.stats_from,
  }
  source = {"format": "aliccp-raw", "skeleton": sk_id, "common_features": cf_id,
            "made_by": "python -m esmjax.data.aliccp"}
  manifest = ds_lib.write_manifest(out_dir, schema, shards, job.block_rows, source,
                                   {"conversion": conversion})
  if not job.keep_common_index:
    _remove_dir(job.common_dir)
  if job.progress:
    ingestion.console(f"{out_dir}: {n_rows:,} rows in {len(shards)} shard(s), {seconds:.1f} s "
                      f"({nbytes / 1e6 / max(seconds, 1e-9):.1f} MB/s, "
                      f"{n_rows / max(seconds, 1e-9):,.0f} rows/s)")
  return manifest


def _fail(path: str, line, kind: str, text: str) -> ConversionError:
  return ConversionError("--bad_lines=fail: "
                         + ingestion.describe(ALL_KINDS, f"{path}:{line}", kind, text))


def _empty_file(report: dict, path: str, fail: bool) -> None:
  report["counts"]["empty_file"] = 1
  report["examples"].append([0, "empty_file", ""])
  if fail:
    raise ConversionError(f"--bad_lines=fail: {path}: empty_file ({BAD_KINDS['empty_file']})")


def _build_common(job: _Job, fp: str, pool, counters) -> dict:
  """The common-features file -> sorted numeric table in job.common_dir (reused when up to date)."""
  path, cdir = job.common_features, job.common_dir
  meta_path = os.path.join(cdir, "meta.json")
  meta = _json_or_none(meta_path)
  if meta is not None and meta.get("fingerprint") == fp:
    if job.fail and meta["bad"]["counts"]:
      raise _fail(path, *min(meta["bad"]["examples"]))
    if job.progress:
      ingestion.console(f"{path}: reusing the common-feature index in {cdir}")
    return meta
  os.makedirs(cdir, exist_ok=True)
  tasks = [dict(index=i, path=path, start=s, end=e, chunk_bytes=job.chunk_bytes, fail=job.fail)
           for i, (s, e) in enumerate(work.ranges(path, job.range_bytes))]
  results: list[dict] = []

  def on_result(res):
    if "error" in res:
      line, kind, text = res["error"]
      raise _fail(path, 1 + sum(r["n_lines"] for r in results) + line, kind, text)
    results.append(res)

  _run_tasks(work.common_task, tasks, pool, counters, on_result, job.progress,
             os.path.getsize(path), f"common features {os.path.basename(path)}")
  line0s = np.cumsum([1] + [r["n_lines"] for r in results])[:-1]
  bad = ingestion.BadLines.merged([(int(l0), r["report"]) for l0, r in zip(line0s, results)])
  warnings = ingestion.BadLines.merged([(int(l0), r["warnings"]) for l0, r in zip(line0s, results)])
  n_lines = int(sum(r["n_lines"] for r in results))
  have = [r for r in results if "keys" in r]
  if have:
    lines = np.concatenate([r.pop("lines") + l0 for l0, r in zip(line0s, results) if "keys" in r])
    keys = np.concatenate([r.pop("keys") for r in have])
    # One column's parts at a time: the peak is one column twice, not the table.
    table = {k: np.concatenate([r.pop(k) for r in have]) for k in work.COMMON_COLUMNS}
  else:
    keys, lines = np.zeros(0, np.int64), np.zeros(0, np.int64)
    table = {k: getattr(work.parse.empty_rows(job.spec, 0), k) for k in work.COMMON_COLUMNS}
  results.clear()
  order = np.argsort(keys, kind="stable")  # stable: of equal keys, the first in the file is kept
  keys, lines = keys[order], lines[order]
  dup = np.zeros(len(keys), bool)
  dup[1:] = keys[1:] == keys[:-1]
  if dup.any():
    bad["counts"]["duplicate_common_feature_index"] = int(dup.sum())
    first_lines = sorted(int(x) for x in lines[dup])
    if job.fail:
      raise _fail(path, first_lines[0], "duplicate_common_feature_index", "")
    bad["examples"] = sorted(bad["examples"] + [[line, "duplicate_common_feature_index", ""]
                                                for line in first_lines[:MAX_EXAMPLES]])
  if n_lines == 0 or (len(keys) == 0 and not bad["counts"]):
    _empty_file(bad, path, job.fail)
  keep = order[~dup]
  for k in work.COMMON_COLUMNS:
    _save_npy(os.path.join(cdir, f"{k}.npy"), table.pop(k)[keep])
  _save_npy(os.path.join(cdir, "keys.npy"), keys[~dup])
  if job.progress:
    ingestion.print_report(ALL_KINDS, bad, f"{path}: bad lines skipped", path)
  meta = {"fingerprint": fp, "n_rows": int((~dup).sum()), "n_lines": n_lines, "bad": bad,
          "warnings": warnings}
  write_json_atomic(meta_path, meta)
  return meta


def _save_npy(path: str, arr: np.ndarray) -> None:
  tmp = path + ".tmp.npy"
  np.save(tmp, np.ascontiguousarray(arr))
  os.replace(tmp, path)


def _convert_skeleton(job: _Job, fp: str, pool, counters) -> dict:
  """Skeleton byte ranges -> shards + sidecars (skipping ranges a previous run completed)."""
  path, out_dir = job.skeleton, job.out_dir
  ranges = work.ranges(path, job.range_bytes)
  done: dict[int, dict] = {}
  tasks = []
  for i, (s, e) in enumerate(ranges):
    shard, sidecar = f"shard-{i:05d}{ds_lib.SHARD_SUFFIX}", f"shard-{i:05d}.done.json"
    side = _json_or_none(os.path.join(out_dir, sidecar))
    if side is not None and side.get("fingerprint") == fp and side.get("range") == [s, e] and (
        side["shard"]["num_rows"] == 0 or os.path.exists(os.path.join(out_dir, shard))):
      done[i] = side
      continue
    tasks.append(dict(index=i, path=path, start=s, end=e, chunk_bytes=job.chunk_bytes,
                      fail=job.fail, out_dir=out_dir, shard=shard, sidecar=sidecar,
                      block_rows=job.block_rows, fingerprint=fp))
  if done and job.progress:
    ingestion.console(f"{out_dir}: resuming: {len(done)} of {len(ranges)} range(s) already "
                      "converted")
  if job.fail:  # ranges converted earlier with --bad_lines=skip may hold bad lines
    for i in sorted(done):
      if done[i]["bad"]["counts"]:
        line, kind, text = min(done[i]["bad"]["examples"])
        raise _fail(path, work.first_line_number(path, ranges[i][0]) + line, kind, text)

  def on_result(res):
    if "error" in res:
      i = res["index"]
      prev = [done[j]["n_lines"] for j in range(i) if j in done]
      line0 = 1 + sum(prev) if len(prev) == i else work.first_line_number(path, ranges[i][0])
      line, kind, text = res["error"]
      raise _fail(path, line0 + line, kind, text)
    done[res["index"]] = res

  _run_tasks(work.skeleton_task, tasks, pool, counters, on_result, job.progress,
             sum(t["end"] - t["start"] for t in tasks), f"skeleton {os.path.basename(path)}")
  sides = [done[i] for i in range(len(ranges))]
  line0s = np.cumsum([1] + [s["n_lines"] for s in sides])[:-1]
  bad = ingestion.BadLines.merged([(int(l0), s["bad"]) for l0, s in zip(line0s, sides)])
  n_lines = int(sum(s["n_lines"] for s in sides))
  if n_lines == 0:
    _empty_file(bad, path, job.fail)
  warnings = ingestion.BadLines.merged([(int(l0), s["warnings"]) for l0, s in zip(line0s, sides)])
  unknown: collections.Counter = collections.Counter()
  for s in sides:
    unknown.update(s["unknown_fields"])
  if job.progress:
    ingestion.print_report(ALL_KINDS, bad, f"{path}: bad lines skipped", path)
    ingestion.print_report(ALL_KINDS, warnings, f"{path}: warnings (rows kept)", path)
    if unknown:
      ingestion.console(f"{path}: fields not in the config (ignored): "
                        f"{dict(unknown.most_common(10))}")
  return {
      "sidecars": sides, "bad": bad, "warnings": warnings, "n_lines": n_lines,
      "unknown_fields": dict(unknown), "clicks": int(sum(s["clicks"] for s in sides)),
      "buys": int(sum(s["buys"] for s in sides)),
      "truncated_values": np.sum([s["truncated_values"] for s in sides], 0).tolist(),
      "truncated_rows": np.sum([s["truncated_rows"] for s in sides], 0).tolist(),
  }


def _run_tasks(fn, tasks, pool, counters, on_result, progress: bool, total: int, desc: str) -> None:
  """Runs tasks (in the pool, or here), results in task order, with a progress bar of bytes read."""
  for c in counters:
    with c.get_lock():
      c.value = 0
  bar, t0 = ingestion.progress_bar(total, desc, enabled=progress), time.time()

  def tick():
    if bar is not None:
      bar.update(counters[0].value - bar.n)
      rate = counters[1].value / max(time.time() - t0, 1e-9)
      bar.set_postfix_str(f"{rate:,.0f} rows/s", refresh=False)

  try:
    if pool is None:
      for t in tasks:
        res = fn(t)
        tick()
        on_result(res)
      return
    it = pool.imap(fn, tasks)
    done = 0
    while done < len(tasks):
      try:
        res = it.next(timeout=0.25)
      except mp.TimeoutError:
        tick()
        continue
      done += 1
      tick()
      on_result(res)
  finally:
    if bar is not None:
      bar.close()


def _leakage(sides, job: _Job) -> list[dict]:
  """Feature columns that give a label away, from the ranges' merged statistics; printed, and with
  --label_leakage=fail raised before the manifest is written."""
  if not sides:
    return []
  stats = leakage.LeakageStats.from_json(sides[0]["leakage"])
  for s in sides[1:]:
    stats.merge(leakage.LeakageStats.from_json(s["leakage"]))
  found = stats.findings()
  if found and job.label_leakage == "fail":
    raise ConversionError(f"{job.skeleton}: {leakage.describe(found[0])} (--label_leakage=fail)")
  if job.progress:
    for f in found:
      ingestion.console(f"{job.skeleton}: warning: {leakage.describe(f)}")
  return found


def _dense_fields(spec: Spec, sides, stats_from: str | None) -> list[ds_lib.DenseField]:
  fields = list(spec.schema.dense)
  if not fields:
    return fields
  if stats_from:
    ref = {f.name: f for f in ds_lib.open_dataset(stats_from).schema.dense}
    missing = [f.name for f in fields if f.name not in ref]
    if missing:
      raise ConversionError(f"--stats_from={stats_from}: has no dense field(s) {missing}")
    return [ref[f.name] for f in fields]
  stats = ingestion.DenseStats(len(fields), sample=work.DENSE_SAMPLE)
  for s in sides:
    stats.merge(ingestion.DenseStats.from_json(s["dense"]))
  return stats.fields([f.name for f in fields], spec.dense_buckets)


# ---------------------------------------------------------------------------------------------
# Command line.


def main(argv: Sequence[str]) -> None:
  del argv
  from absl import flags

  F = flags.FLAGS
  config = F.config if F["config"].present or F.config is not None else None
  try:
    convert(F.skeleton, F.common_features, F.out_dir, config=config, bad_lines=F.bad_lines,
            block_rows=F.block_rows, workers=F.workers, range_mb=F.range_mb,
            stats_from=F.stats_from, label_leakage=F.label_leakage,
            keep_common_index=F.keep_common_index)
  except (ConversionError, ds_lib.DatasetError) as e:
    ingestion.console(f"error: {e}")
    sys.exit(1)


def _define_flags():
  from absl import flags
  from ml_collections import config_flags

  flags.DEFINE_string("skeleton", None, "sample_skeleton_{train,test}.csv")
  flags.DEFINE_string("common_features", None, "common_features_{train,test}.csv")
  flags.DEFINE_string("out_dir", None, "output dataset directory (resumed if interrupted)")
  flags.DEFINE_enum("bad_lines", "skip", list(BAD_LINES_MODES),
                    "skip: count and drop bad lines; fail: stop at the first")
  flags.DEFINE_integer("block_rows", 0, "rows per block; 0: about 1 MB per block")
  flags.DEFINE_integer("workers", os.cpu_count() or 1, "worker processes")
  flags.DEFINE_float("range_mb", 64.0, "skeleton MB per shard / task (also the resume granularity)")
  flags.DEFINE_string("stats_from", None,
                      "take dense mean/std/boundaries from this dataset (the train split)")
  flags.DEFINE_bool("keep_common_index", False, "keep <out_dir>/_common after success")
  flags.DEFINE_enum("label_leakage", "warn", list(leakage.LEAKAGE_MODES),
                    "a feature column that gives a label away: warn (and record it), or fail")
  config_flags.DEFINE_config_file("config", None,
                                  "field config (default: configs/data/aliccp_raw.py's)")


if __name__ == "__main__":
  from absl import app

  _define_flags()
  app.run(main)
