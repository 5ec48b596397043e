"""benchmarks/data_throughput.py's converter part: a raw Ali-CCP-format generator (skeleton and
common-features files) and a run of the converter CLI in a subprocess, timed, with the peak RSS of
its process tree sampled every 20 ms."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import reporting
from common import ROOT

# ---------------------------------------------------------------------------------------------
# A raw Ali-CCP-format generator.


def _items(field: str, ids, vals) -> list[str]:
  return [f"{field}\x02{i}\x03{v}" for i, v in zip(ids, vals, strict=True)]


def generate_raw(directory: Path, skeleton_mb: float, seed: int = 0) -> tuple[Path, Path, int]:
  """Writes skeleton.csv (≈ skeleton_mb MB) and common.csv; returns their paths and the row
  count."""
  rng = np.random.default_rng(seed)
  sk_path, cf_path = directory / "skeleton.csv", directory / "common.csv"
  target = int(skeleton_mb * 1e6)
  rows_per_user = 58
  n_users = max(1, int(target / 260 / rows_per_user))
  keys = [f"{k:016x}" for k in rng.integers(0, 2**63, n_users)]
  logv = lambda n: [f"{x:.5g}" for x in np.log1p(rng.integers(1, 50, n))]
  with open(cf_path, "w") as f:
    for u in range(n_users):
      it = [f"101\x02{rng.integers(1, 400_000)}\x031.0"]
      for fld, card in (
        ("121", 98),
        ("122", 14),
        ("124", 3),
        ("125", 8),
        ("126", 4),
        ("127", 4),
        ("128", 3),
        ("129", 5),
      ):
        it.append(f"{fld}\x02{rng.integers(1, card + 1) + 1000 * len(it)}\x031.0")
      for fld, mean, card in (
        ("109_14", 40, 10_000),
        ("110_14", 150, 400_000),
        ("127_14", 100, 100_000),
        ("150_14", 120, 100_000),
      ):
        n = int(rng.geometric(1 / mean))
        it += _items(fld, rng.integers(1, card, n), logv(n))
      f.write(f"{keys[u]},{len(it)},{chr(1).join(it)}\n")
  written, sid = 0, 0
  with open(sk_path, "w") as f:
    while written < target:  # one user's impressions at a time, drawn as arrays
      u = int(rng.integers(0, n_users))
      n = int(rng.poisson(rows_per_user)) + 1
      click = rng.random(n) < 0.04
      buy = click & (rng.random(n) < 0.055)
      base = np.stack(
        [
          rng.integers(1, 4_000_000, n),
          rng.integers(1, 10_000, n),
          rng.integers(1, 400_000, n),
          rng.integers(1, 200_000, n),
          rng.integers(1, 4, n),
        ],
        1,
      )
      n210, n853 = rng.integers(1, 6, n), rng.integers(0, 4, n)
      ids210, ids853 = (
        rng.integers(1, 100_000, int(n210.sum())),
        rng.integers(1, 1_000_000, int(n853.sum())),
      )
      v853 = np.log1p(rng.integers(1, 50, int(n853.sum())))
      combo = [
        (fld, rng.random(n) < p, rng.integers(1, 1_000_000, n), np.log1p(rng.integers(1, 30, n)))
        for fld, p in (("508", 0.6), ("509", 0.3), ("702", 0.3))
      ]
      o210 = np.concatenate([[0], np.cumsum(n210)])
      o853 = np.concatenate([[0], np.cumsum(n853)])
      lines = []
      for j in range(n):
        it = [
          f"{fld}\x02{v}\x031.0"
          for fld, v in zip(("205", "206", "207", "216", "301"), base[j], strict=True)
        ]
        it += [f"210\x02{v}\x031.0" for v in ids210[o210[j] : o210[j + 1]]]
        it += [f"{fld}\x02{ids[j]}\x03{vals[j]:.5g}" for fld, has, ids, vals in combo if has[j]]
        it += [
          f"853\x02{v}\x03{w:.5g}"
          for v, w in zip(ids853[o853[j] : o853[j + 1]], v853[o853[j] : o853[j + 1]], strict=True)
        ]
        sid += 1
        lines.append(f"{sid},{int(click[j])},{int(buy[j])},{keys[u]},{len(it)},{chr(1).join(it)}\n")
      s = "".join(lines)
      f.write(s)
      written += len(s)
  return sk_path, cf_path, sid


def head_lines(src: Path, dst: Path, nbytes: int) -> None:
  """The first lines of src covering nbytes (cut at a line end)."""
  with open(src, "rb") as f, open(dst, "wb") as g:
    g.write(f.read(nbytes))
    g.write(f.readline())


# ---------------------------------------------------------------------------------------------
# The converter, measured.


LEAN_OVERRIDES = [
  f'--config.fields["{f}"].max_len=1'
  for f in ("109_14", "110_14", "127_14", "150_14", "210", "853")
]


def run_converter(
  skeleton: Path,
  common: Path,
  out_dir: Path,
  workers: int,
  extra: list[str] = (),
  range_mb: float = 0,
) -> dict:
  """Runs the converter CLI in a subprocess; wall time and peak RSS (whole tree and largest
  process)."""
  import resource

  import psutil

  cmd = [
    sys.executable,
    "-m",
    "esmjax.data.aliccp",
    f"--skeleton={skeleton}",
    f"--common_features={common}",
    f"--out_dir={out_dir}",
    f"--workers={workers}",
  ] + ([f"--range_mb={range_mb}"] if range_mb else [])
  if extra:  # config overrides follow --config
    cmd += [f"--config={ROOT / 'configs/data/aliccp_raw.py'}"] + list(extra)
  ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
  t0 = time.time()
  p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  ps = psutil.Process(p.pid)
  peak_tree, peak_one = 0, 0
  while p.poll() is None:
    peak_tree = max(peak_tree, reporting.tree_rss(ps))
    try:
      for c in [ps] + ps.children(recursive=True):
        peak_one = max(peak_one, c.memory_info().rss)
    except psutil.Error:
      pass
    time.sleep(0.02)
  out, err = p.communicate()
  wall = time.time() - t0
  ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the converter and its (waited-for) workers
  cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
  if p.returncode:
    raise RuntimeError(f"converter failed ({p.returncode}):\n{err[-3000:]}")
  man = json.loads((out_dir / "manifest.json").read_text())
  nbytes = skeleton.stat().st_size + common.stat().st_size
  return {
    "skeleton_bytes": skeleton.stat().st_size,
    "common_bytes": common.stat().st_size,
    "rows": man["num_rows"],
    "wall_s": round(wall, 2),
    "internal_s": man["conversion"]["seconds"],
    "mb_per_s": round(nbytes / 1e6 / wall, 2),
    "rows_per_s": round(man["num_rows"] / wall),
    "peak_rss_tree_mb": round(peak_tree / 2**20, 1),
    "peak_rss_largest_process_mb": round(peak_one / 2**20, 1),
    "cpu_s": round(cpu, 2),
    "mb_per_cpu_s": round(nbytes / 1e6 / cpu, 2),
    "rows_per_cpu_s": round(man["num_rows"] / cpu),
    "workers": workers,
    "console_tail": err.strip().splitlines()[-1:],
  }
