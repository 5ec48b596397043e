"""What both converters (`aliccp`, `csv_ingest`) share: the bad-line report, dense statistics,
progress bars and console lines. Block writing is `blocks.fixed_size_blocks` + `shards.ShardWriter`;
atomic JSON is `files.write_json_atomic`; the label-leakage guard is `leakage`.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from esmjax.common.schema import DenseField

MAX_EXAMPLES = 5  # example lines kept per kind of bad line
BAD_LINES_MODES = ("skip", "fail")
FLOAT32_MAX = float(np.finfo(np.float32).max)


class IngestError(RuntimeError):
  """Stops an ingestion; the message names the file and line, the config key, or the path."""


# ---------------------------------------------------------------------------------------------
# The output directory.


def check_out_dir(out_dir: str, stats_from: str | None, error=IngestError) -> None:
  """Raises `error` when `out_dir` is `stats_from`, lies inside it, or holds it (compared by real
  path, so a symlink to either is caught): writing the output there would replace or delete the
  dataset whose vocabularies and statistics this ingestion reads. Called before anything is
  written."""
  if not out_dir or not stats_from:
    return
  out, ref = os.path.realpath(out_dir), os.path.realpath(stats_from)
  if out == ref:
    relation = "is"
  elif out.startswith(ref.rstrip(os.sep) + os.sep):
    relation = "is inside"
  elif ref.startswith(out.rstrip(os.sep) + os.sep):
    relation = "holds"
  else:
    return
  raise error(
    f"--out_dir={out_dir} {relation} --stats_from={stats_from} ({out} vs {ref}): writing there "
    "would replace the dataset whose vocabularies and statistics are read; give another --out_dir"
  )


LOCK_FILE = ".converting.lock"


@contextlib.contextmanager
def out_dir_lock(out_dir: str, error=IngestError):
  """Holds `<out_dir>/.converting.lock` (an exclusive flock, released when the block ends or the
  process dies) with this process's name in it; raises `error` naming the holder when another
  ingestion or conversion writes to `out_dir`. Creates `out_dir`; when the block fails, an
  `out_dir` it created is removed again if only the lock file is in it."""
  created = not os.path.isdir(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, LOCK_FILE)
  f = open(path, "a+")
  ok = False
  try:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      f.seek(0)
      owner = f.read().strip() or "another process (it has not written its name yet)"
      raise error(
        f"another ingestion is writing to {out_dir}: {owner} holds {path}; wait for it to "
        "finish, stop it, or give another --out_dir"
      ) from None
    f.seek(0)
    f.truncate()
    f.write(
      f"pid {os.getpid()} on host {socket.gethostname()}, since "
      f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n"
    )
    f.flush()
    yield
    ok = True
  finally:
    if not ok and created and os.listdir(out_dir) == [LOCK_FILE]:
      os.remove(path)
      os.rmdir(out_dir)
    f.close()


# ---------------------------------------------------------------------------------------------
# Bad lines.


def describe(kinds: Mapping[str, str], where, kind: str, text: str) -> str:
  """One console / error line: `where: kind (what it means): 'text'`."""
  return f"{where}: {kind} ({kinds.get(kind, '')}): {text!r}"


class BadLines:
  """Bad lines per kind: how many, and the first `MAX_EXAMPLES` of each kind with where they are.

  `where` is a line number (numbered per input range, made absolute by `merged`) or a `file:line`
  string. Skipping or failing is the caller's: a converter in fail mode raises at the first bad line
  in file order, with `describe`.
  """

  def __init__(self):
    self.counts: collections.Counter = collections.Counter()
    self.examples: list[list] = []  # [where, kind, text]
    self._per_kind: collections.Counter = collections.Counter()

  def add(self, where, kind: str, text: str, count: int = 1) -> None:
    """Counts `count` lines of `kind`; the first of them is an example while the kind has fewer
    than MAX_EXAMPLES."""
    self.counts[kind] += count
    if self._per_kind[kind] < MAX_EXAMPLES:
      self._per_kind[kind] += 1
      self.examples.append([where, kind, text])

  def count(self, kind: str, n: int) -> None:
    """Counts `n` more lines of `kind` without examples."""
    if n:
      self.counts[kind] += n

  def wants_example(self, kind: str) -> bool:
    return self._per_kind[kind] < MAX_EXAMPLES

  def to_json(self) -> dict[str, Any]:
    return {"counts": dict(self.counts), "examples": list(self.examples)}

  @staticmethod
  def merged(parts: Sequence[tuple[int, dict]]) -> dict[str, Any]:
    """Reports of consecutive input ranges (each with its first absolute line number) -> one report
    with absolute line numbers, examples in line order, the first MAX_EXAMPLES of each kind."""
    counts: collections.Counter = collections.Counter()
    examples = []
    for line0, rep in parts:
      counts.update(rep.get("counts", {}))
      examples += [[line0 + line, kind, text] for line, kind, text in rep.get("examples", [])]
    examples.sort()
    per: collections.Counter = collections.Counter()
    kept = []
    for e in examples:
      if per[e[1]] < MAX_EXAMPLES:
        per[e[1]] += 1
        kept.append(e)
    return {"counts": dict(counts), "examples": kept}


def print_report(
  kinds: Mapping[str, str], report: dict, heading: str, file: str | None = None
) -> None:
  """`heading: kind=count, ...` and one line per example (`file:line: kind (...): 'text'`)."""
  if not report["counts"]:
    return
  console(f"{heading}: " + ", ".join(f"{k}={v:,}" for k, v in sorted(report["counts"].items())))
  for where, kind, text in report["examples"]:
    console("  " + describe(kinds, f"{file}:{where}" if file else where, kind, text))


# ---------------------------------------------------------------------------------------------
# Dense statistics.


class DenseStats:
  """Per dense column: count, mean and M2 merged batch by batch (Chan et al.: no cancellation), and
  one uniform sample of rows for the quantile boundaries: the `sample` rows with the smallest
  random keys, so parts (batches, or workers with their own seeds) merge into exactly the sample
  of the whole."""

  def __init__(self, num_columns: int, *, seed: int = 0, sample: int = 4096):
    self.n = 0
    self.mean, self.m2 = np.zeros(num_columns), np.zeros(num_columns)
    self.cap = int(sample)
    self._rng = np.random.default_rng(seed)
    self._keys = np.zeros(0, np.float64)
    self._sample = np.zeros((0, num_columns), np.float32)
    self._threshold = np.inf  # keys at or above it cannot enter the sample

  def add(self, x: np.ndarray) -> None:
    """x: float32 [n, columns], finite."""
    if not len(x) or not x.shape[1]:
      return
    cols = np.asarray(x, np.float64).T.copy()  # per column contiguous: pairwise sums
    mb = cols.mean(1)
    self._merge_moments(len(x), mb, np.square(cols - mb[:, None]).sum(1))
    keys = self._rng.random(len(x))
    take = keys < self._threshold
    self._keys = np.concatenate([self._keys, keys[take]])
    self._sample = np.concatenate([self._sample, np.asarray(x, np.float32)[take]])
    if len(self._keys) > 2 * self.cap:
      self._trim()

  def merge(self, other: DenseStats) -> None:
    if other.n:
      self._merge_moments(other.n, other.mean, other.m2)
    self._keys = np.concatenate([self._keys, other._keys])
    self._sample = np.concatenate([self._sample, other._sample])
    self._trim()

  def _merge_moments(self, nb: int, mb: np.ndarray, m2b: np.ndarray) -> None:
    na, n = self.n, self.n + nb
    delta = np.asarray(mb) - self.mean
    self.mean = self.mean + delta * nb / n
    self.m2 = self.m2 + (np.asarray(m2b) + delta * delta * na * nb / n)
    self.n = n

  def _trim(self) -> None:
    if len(self._keys) > self.cap:
      keep = np.sort(np.argpartition(self._keys, self.cap - 1)[: self.cap])
      self._keys, self._sample = self._keys[keep], self._sample[keep]
      self._threshold = float(self._keys.max())

  def fields(self, names: Sequence[str], buckets: int) -> list[DenseField]:
    """DenseFields with mean, std (1 for an empty or constant column) and `buckets - 1` quantile
    edges (fewer where values repeat)."""
    self._trim()
    q = np.arange(1, buckets) / buckets
    out = []
    for j, name in enumerate(names):
      mean = float(self.mean[j]) if self.n else 0.0
      std = float(np.sqrt(self.m2[j] / self.n)) if self.n else 1.0
      std = std if std > 1e-12 * max(1.0, abs(mean)) else 1.0  # constant: 1, not 0, to divide by
      sample = np.ascontiguousarray(self._sample[:, j])
      edges = np.unique(np.quantile(sample, q)) if len(sample) else np.zeros(0)
      out.append(DenseField(name, mean, std, tuple(float(e) for e in edges)))
    return out

  def to_json(self) -> dict[str, Any]:
    self._trim()
    return {
      "n": int(self.n),
      "mean": self.mean.tolist(),
      "m2": self.m2.tolist(),
      "cap": self.cap,
      "keys": self._keys.tolist(),
      "sample": self._sample.T.tolist(),
    }

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> DenseStats:
    out = cls(len(d["mean"]), sample=d["cap"])
    out.n, out.mean, out.m2 = int(d["n"]), np.asarray(d["mean"]), np.asarray(d["m2"])
    out._keys = np.asarray(d["keys"], np.float64)
    out._sample = np.asarray(d["sample"], np.float32).T.reshape(len(out._keys), len(d["mean"]))
    return out


# ---------------------------------------------------------------------------------------------
# Console.


def console(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def progress_bar(total: int | None, desc: str, *, enabled: bool = True, unit: str = "B"):
  """A tqdm bar on stderr, or None when disabled."""
  if not enabled:
    return None
  from tqdm import tqdm

  return tqdm(
    total=total,
    desc=desc,
    unit=unit,
    unit_scale=True,
    file=sys.stderr,
    dynamic_ncols=True,
    mininterval=0.5,
  )
