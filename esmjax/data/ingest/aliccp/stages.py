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

from esmjax.data.format import dataset as ds_lib
from esmjax.data.format.files import read_json, write_json_atomic
from esmjax.data.ingest import leakage
from esmjax.data.ingest import shared as ingestion
from esmjax.data.ingest.aliccp import work
from esmjax.data.ingest.aliccp.spec import ALL_KINDS, BAD_KINDS, ConversionError, Spec
from esmjax.data.ingest.shared import MAX_EXAMPLES


def json_or_none(path: str):
  """A file this converter wrote, or None when it is absent or unreadable (then it is redone)."""
  try:
    return read_json(path)
  except (OSError, ValueError):
    return None


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
  meta = json_or_none(meta_path)
  if meta is not None and meta.get("fingerprint") == fp:
    if job.fail and meta["bad"]["counts"]:
      raise _fail(path, *min(meta["bad"]["examples"]))
    if job.progress:
      ingestion.console(f"{path}: reusing the common-feature index in {cdir}")
    return meta
  os.makedirs(cdir, exist_ok=True)
  tasks = [
    dict(index=i, path=path, start=s, end=e, chunk_bytes=job.chunk_bytes, fail=job.fail)
    for i, (s, e) in enumerate(work.ranges(path, job.range_bytes))
  ]
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
  }
  write_json_atomic(meta_path, meta)
  return meta


def _save_npy(path: str, arr: np.ndarray) -> None:
  tmp = path + ".tmp.npy"
  np.save(tmp, np.ascontiguousarray(arr))
  os.replace(tmp, path)


def convert_skeleton(job: Job, fp: str, pool, counters) -> dict:
  """Skeleton byte ranges -> shards + sidecars (skipping ranges a previous run completed)."""
  path, out_dir = job.skeleton, job.out_dir
  ranges = work.ranges(path, job.range_bytes)
  done: dict[int, dict] = {}
  tasks = []
  for i, (s, e) in enumerate(ranges):
    shard, sidecar = f"shard-{i:05d}{ds_lib.SHARD_SUFFIX}", f"shard-{i:05d}.done.json"
    side = json_or_none(os.path.join(out_dir, sidecar))
    if (
      side is not None
      and side.get("fingerprint") == fp
      and side.get("range") == [s, e]
      and (side["shard"]["num_rows"] == 0 or os.path.exists(os.path.join(out_dir, shard)))
    ):
      done[i] = side
      continue
    tasks.append(
      dict(
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
      )
    )
  if done and job.progress:
    ingestion.console(
      f"{out_dir}: resuming: {len(done)} of {len(ranges)} range(s) already converted"
    )
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

  _run_tasks(
    work.skeleton_task,
    tasks,
    pool,
    counters,
    on_result,
    job.progress,
    sum(t["end"] - t["start"] for t in tasks),
    f"skeleton {os.path.basename(path)}",
  )
  sides = [done[i] for i in range(len(ranges))]
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
