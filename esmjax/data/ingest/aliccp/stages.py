"""The Ali-CCP converter's two stages, run by `aliccp.convert`: the common-features table
(`build_common`) and the skeleton's shards (`convert_skeleton`), with the pool runner, and what the
manifest gathers from the ranges' sidecars (dense statistics, label leakage).
"""

from __future__ import annotations

import collections
import dataclasses
import multiprocessing as mp
import os
import time

import numpy as np

from esmjax.common import digest
from esmjax.data.format import dataset as ds_lib
from esmjax.data.format.files import read_json
from esmjax.data.ingest import leakage
from esmjax.data.ingest import shared as ingestion
from esmjax.data.ingest.aliccp import work
from esmjax.data.ingest.aliccp.spec import ALL_KINDS, BAD_KINDS, ConversionError, Spec
from esmjax.data.ingest.shared import MAX_EXAMPLES


def json_or_none(path: str):
  """A file this converter wrote, or None when it is absent or unreadable (then it is redone).
  Only for files that are never trusted: a resume decides with `state_or_none`."""
  try:
    return read_json(path)
  except (OSError, ValueError):
    return None


def state_or_none(path: str, fix: str, legacy: str = "refuse") -> dict | None:
  """A resume-state file this converter wrote (a range's sidecar, the common table's meta),
  verified against its digest (`digest.IntegrityError` naming it and `fix` otherwise), or None
  when it is absent (a crash before its atomic rename: the work it records is redone).
  `legacy="accept"`: one without a digest (an older esmjax's, whose fingerprint differs: redone)."""
  if not os.path.exists(path):
    return None
  return digest.read_json(path, fix, legacy=legacy)


def common_fix(cdir: str) -> str:
  return f"delete {cdir} (the common-feature index is built again) and rerun"


def sidecar_fix(path: str) -> str:
  return f"delete {path} (its range is converted again) and rerun"


@dataclasses.dataclass
class Job:
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
  codecs: dict = dataclasses.field(default_factory=dict)  # input path -> pyarrow codec (or absent)
  block_codec: str | None = None  # the shards' block compression (blocks.CODECS)

  @property
  def fail(self) -> bool:
    return self.bad_lines == "fail"

  @property
  def common_dir(self) -> str:
    return os.path.join(self.out_dir, "_common")


def _fail(path: str, line, kind: str, text: str) -> ConversionError:
  return ConversionError(
    "--bad_lines=fail: " + ingestion.describe(ALL_KINDS, f"{path}:{line}", kind, text)
  )


def _empty_file(report: dict, path: str, fail: bool) -> None:
  report["counts"]["empty_file"] = 1
  report["examples"].append([0, "empty_file", ""])
  if fail:
    raise ConversionError(f"--bad_lines=fail: {path}: empty_file ({BAD_KINDS['empty_file']})")


def build_common(job: Job, fp: str, pool, counters) -> dict:
  """The common-features file -> sorted numeric table in job.common_dir (reused when up to date)."""
  path, cdir = job.common_features, job.common_dir
  meta_path = os.path.join(cdir, "meta.json")
  # An older esmjax's meta (no digest, no "files") is rebuilt; a changed one is refused.
  meta = state_or_none(meta_path, common_fix(cdir), "accept")
  if meta is not None and meta.get("fingerprint") == fp and "files" in meta:
    for k, want in meta["files"].items():  # the table the workers map: the one written
      digest.check_file(os.path.join(cdir, k), want, common_fix(cdir))
    if job.fail and meta["bad"]["counts"]:
      raise _fail(path, *min(meta["bad"]["examples"]))
    if job.progress:
      ingestion.console(f"{path}: reusing the common-feature index in {cdir}")
    return meta
  os.makedirs(cdir, exist_ok=True)
  base = dict(path=path, chunk_bytes=job.chunk_bytes, fail=job.fail)
  tasks = (
    dict(base, index=i, start=s, end=e, **extra)
    for i, (s, e, extra) in enumerate(_ranges(job, path))
  )
  results: list[dict] = []

  def on_result(res):
    if "error" in res:
      line, kind, text = res["error"]
      raise _fail(path, 1 + sum(r["n_lines"] for r in results) + line, kind, text)
    results.append(res)

  _run_tasks(
    work.common_task,
    tasks,
    pool,
    counters,
    on_result,
    job.progress,
    os.path.getsize(path),
    f"common features {os.path.basename(path)}",
    window=2 * job.workers,
  )
  line0s = np.cumsum([1] + [r["n_lines"] for r in results])[:-1]
  bad = ingestion.BadLines.merged(
    [(int(l0), r["report"]) for l0, r in zip(line0s, results, strict=True)]
  )
  warnings = ingestion.BadLines.merged(
    [(int(l0), r["warnings"]) for l0, r in zip(line0s, results, strict=True)]
  )
  n_lines = int(sum(r["n_lines"] for r in results))
  have = [r for r in results if "keys" in r]
  if have:
    lines = np.concatenate(
      [r.pop("lines") + l0 for l0, r in zip(line0s, results, strict=True) if "keys" in r]
    )
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
    bad["examples"] = sorted(
      bad["examples"]
      + [[line, "duplicate_common_feature_index", ""] for line in first_lines[:MAX_EXAMPLES]]
    )
  if n_lines == 0 or (len(keys) == 0 and not bad["counts"]):
    _empty_file(bad, path, job.fail)
  keep = order[~dup]
  for k in work.COMMON_COLUMNS:
    _save_npy(os.path.join(cdir, f"{k}.npy"), table.pop(k)[keep])
  _save_npy(os.path.join(cdir, "keys.npy"), keys[~dup])
  if job.progress:
    ingestion.print_report(ALL_KINDS, bad, f"{path}: bad lines skipped", path)
  meta = {
    "fingerprint": fp,
    "n_rows": int((~dup).sum()),
    "n_lines": n_lines,
    "bad": bad,
    "warnings": warnings,
    "files": {
      f"{k}.npy": digest.file_digest(os.path.join(cdir, f"{k}.npy"))
      for k in ("keys", *work.COMMON_COLUMNS)
    },
  }
  digest.write_json(meta_path, meta)
  return meta


def _save_npy(path: str, arr: np.ndarray) -> None:
  tmp = path + ".tmp.npy"
  np.save(tmp, np.ascontiguousarray(arr))
  os.replace(tmp, path)


def convert_skeleton(job: Job, fp: str, pool, counters) -> dict:
  """Skeleton byte ranges -> shards + sidecars (skipping ranges a previous run completed)."""
  path, out_dir = job.skeleton, job.out_dir
  codec = job.codecs.get(path)
  starts: list[int] = []  # each range's first byte (of the decompressed text)
  done: dict[int, dict] = {}

  def tasks():
    for i, (s, e, extra) in enumerate(_ranges(job, path)):
      starts.append(s)
      shard, sidecar = f"shard-{i:05d}{ds_lib.SHARD_SUFFIX}", f"shard-{i:05d}.done.json"
      spath = os.path.join(out_dir, sidecar)
      side = state_or_none(spath, sidecar_fix(spath))
      if (
        side is not None
        and side.get("fingerprint") == fp
        and side.get("range") == [s, e]
        and (side["shard"]["num_rows"] == 0 or os.path.exists(os.path.join(out_dir, shard)))
      ):
        if side["shard"]["num_rows"] and digest.tail_digest(
          digest.confined_file(out_dir, shard, spath)
        ) != side.get("shard_tail"):
          raise digest.IntegrityError(
            f"{os.path.join(out_dir, shard)} is not the shard {spath} recorded (its size or "
            f"last bytes differ): {sidecar_fix(spath)}"
          )
        done[i] = side
        continue
      yield dict(
        index=i,
        path=path,
        start=s,
        end=e,
        chunk_bytes=job.chunk_bytes,
        fail=job.fail,
        out_dir=out_dir,
        shard=shard,
        sidecar=sidecar,
        block_rows=job.block_rows,
        fingerprint=fp,
        block_codec=job.block_codec,
        **extra,
      )

  if codec is None:  # plain text: the ranges are known up front, and so is what is left to do
    pending = list(tasks())
    total = sum(t["end"] - t["start"] for t in pending)
  else:
    pending, total = tasks(), os.path.getsize(path)
  if done and job.progress and codec is None:
    ingestion.console(
      f"{out_dir}: resuming: {len(done)} of {len(starts)} range(s) already converted"
    )
  if job.fail and codec is None:
    _fail_on_done(path, done, starts, codec)

  def on_result(res):
    if "error" in res:
      i = res["index"]
      prev = [done[j]["n_lines"] for j in range(i) if j in done]
      line0 = 1 + sum(prev) if len(prev) == i else work.first_line_number(path, starts[i], codec)
      line, kind, text = res["error"]
      raise _fail(path, line0 + line, kind, text)
    done[res["index"]] = res

  _run_tasks(
    work.skeleton_task,
    pending,
    pool,
    counters,
    on_result,
    job.progress,
    total,
    f"skeleton {os.path.basename(path)}",
    window=2 * job.workers,
  )
  if job.fail and codec is not None:
    _fail_on_done(path, done, starts, codec)
  if done and job.progress and codec is not None:
    ingestion.console(f"{out_dir}: {len(starts)} range(s) converted or reused")
  sides = [done[i] for i in range(len(starts))]
  line0s = np.cumsum([1] + [s["n_lines"] for s in sides])[:-1]
  bad = ingestion.BadLines.merged(
    [(int(l0), s["bad"]) for l0, s in zip(line0s, sides, strict=True)]
  )
  n_lines = int(sum(s["n_lines"] for s in sides))
  if n_lines == 0:
    _empty_file(bad, path, job.fail)
  warnings = ingestion.BadLines.merged(
    [(int(l0), s["warnings"]) for l0, s in zip(line0s, sides, strict=True)]
  )
  unknown: collections.Counter = collections.Counter()
  for s in sides:
    unknown.update(s["unknown_fields"])
  if job.progress:
    ingestion.print_report(ALL_KINDS, bad, f"{path}: bad lines skipped", path)
    ingestion.print_report(ALL_KINDS, warnings, f"{path}: warnings (rows kept)", path)
    if unknown:
      ingestion.console(
        f"{path}: fields not in the config (ignored): {dict(unknown.most_common(10))}"
      )
  return {
    "sidecars": sides,
    "bad": bad,
    "warnings": warnings,
    "n_lines": n_lines,
    "unknown_fields": dict(unknown),
    "clicks": int(sum(s["clicks"] for s in sides)),
    "buys": int(sum(s["buys"] for s in sides)),
    "truncated_values": np.sum([s["truncated_values"] for s in sides], 0).tolist(),
    "truncated_rows": np.sum([s["truncated_rows"] for s in sides], 0).tolist(),
  }


def _ranges(job: Job, path: str):
  """(start, end, task extras) of the input's ranges: byte ranges of a plain file (read by the
  workers), or segments of a compressed one's decompressed text, their bytes in the task."""
  codec = job.codecs.get(path)
  if codec is None:
    for s, e in work.ranges(path, job.range_bytes):
      yield s, e, {}
  else:
    for s, e, data, raw in work.segments(path, codec, job.range_bytes):
      yield s, e, {"data": data, "raw_bytes": raw}


def _fail_on_done(path: str, done: dict, starts: list[int], codec) -> None:
  """--bad_lines=fail: ranges converted earlier with --bad_lines=skip may hold bad lines."""
  for i in sorted(done):
    if done[i]["bad"]["counts"]:
      line, kind, text = min(done[i]["bad"]["examples"])
      raise _fail(path, work.first_line_number(path, starts[i], codec) + line, kind, text)


def _run_tasks(
  fn, tasks, pool, counters, on_result, progress: bool, total: int, desc: str, window: int = 4
) -> None:
  """Runs tasks (in the pool, or here), results in task order, with a progress bar of bytes read.

  `tasks` may be a generator: at most `window` tasks are submitted and not yet finished, so tasks
  that carry their input's bytes (compressed inputs) hold a bounded amount of memory.
  """
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
    inflight: collections.deque = collections.deque()
    it = iter(tasks)
    more = True
    while more or inflight:
      while more and len(inflight) < window:
        t = next(it, None)
        if t is None:
          more = False
        else:
          inflight.append(pool.apply_async(fn, (t,)))
      if not inflight:
        break
      try:
        res = inflight[0].get(timeout=0.25)
      except mp.TimeoutError:
        tick()
        continue
      inflight.popleft()
      tick()
      on_result(res)
  finally:
    if bar is not None:
      bar.close()


def label_leakage(sides, job: Job) -> list[dict]:
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


def dense_fields(spec: Spec, sides, stats_from: str | None) -> list[ds_lib.DenseField]:
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
