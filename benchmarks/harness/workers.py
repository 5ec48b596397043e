"""Worker processes: every measured configuration runs in a fresh child process.

Its peak RSS is then its own, a crash or an out-of-memory kill costs one row instead of the run,
and each JAX process can get its own fake device count. The parent runs
`python <script> --worker JSON` (`run_worker`) with this process's environment, PYTHONPATH
included (the repository and benchmarks/ first), and a timeout; the script's
`worker_main(handlers)` runs handlers[spec['kind']] and prints one `@@RESULT@@ {json}` line. The
parent samples the resident memory of the worker's whole process tree while it runs (a grain
reader's or the CLI's own children included) and adds it as `peak_tree_rss_mb`.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .env import REPO

BENCH = REPO / "benchmarks"
RESULT_TAG = "@@RESULT@@"


def rss_mb() -> float:
  """Current resident set of this process (MB)."""
  try:
    for line in open("/proc/self/status"):
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  except OSError:
    pass
  return float("nan")


def peak_rss_mb() -> float:
  """Peak resident set of this process so far (MB; ru_maxrss is KiB on Linux)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tree_rss(proc) -> int:
  """The resident memory of a psutil.Process and all its children (bytes; 0 once it is gone),
  for peak-RSS sampling of a command that starts workers."""
  import psutil

  total = 0
  try:
    procs = [proc] + proc.children(recursive=True)
  except psutil.Error:
    return 0
  for p in procs:
    try:
      total += p.memory_info().rss
    except psutil.Error:
      pass
  return total


def worker_env(devices: int | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
  """The parent's environment as `python -m esmjax.main` runs in it (malloc on huge pages where
  supported: `host_memory.cli_malloc_env`), with N fake CPU devices (replacing any given count) if
  asked, then `extra` (GLIBC_TUNABLES="" there: malloc as the OS gives it). PYTHONPATH keeps what
  it had, after the repository and benchmarks/."""
  from esmjax.core import host_memory  # light: no JAX import in the parent

  env = host_memory.cli_malloc_env(os.environ)
  env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # accelerators: measured peaks, not 75 %
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if devices is not None:
    flags = re.sub(
      r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", "")
    ).strip()
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={int(devices)}".strip()
  env["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(REPO), str(BENCH), env.get("PYTHONPATH", "")) if p
  )
  env.update(extra or {})
  return env


def _wait(p: subprocess.Popen, timeout: float, sample_s: float) -> tuple[bool, int]:
  """Waits for `p`, sampling its process tree's RSS: (timed out, peak bytes). On a timeout the
  whole process group is killed (a worker's own children too)."""
  try:
    import psutil

    proc = psutil.Process(p.pid)
  except (ImportError, OSError):
    proc = None
  peak, deadline = 0, time.monotonic() + timeout
  while p.poll() is None:
    if proc is not None:
      peak = max(peak, tree_rss(proc))
    if time.monotonic() > deadline:
      os.killpg(p.pid, signal.SIGKILL)
      p.wait()
      return True, peak
    time.sleep(min(sample_s, max(deadline - time.monotonic(), 0.01)))
  return False, peak


def run_worker(
  script: Path | str,
  spec: dict[str, Any],
  *,
  env: dict[str, str] | None = None,
  timeout: float = 600.0,
  sample_s: float = 0.2,
) -> dict[str, Any]:
  """Runs `python script --worker JSON`; returns its result dict (with `wall_s` and
  `peak_tree_rss_mb`), or {'error': ..., 'spec': spec} (a timeout, a crash, no result line)."""
  cmd = [sys.executable, str(script), "--worker", json.dumps(spec)]
  t = time.perf_counter()
  with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
    p = subprocess.Popen(
      cmd, env=env or worker_env(), stdout=out, stderr=err, text=True, start_new_session=True
    )
    timed_out, peak = _wait(p, timeout, sample_s)
    out.seek(0)
    err.seek(0)
    stdout, stderr = out.read(), err.read()
  wall = time.perf_counter() - t
  extra = {"wall_s": wall, "peak_tree_rss_mb": peak / 2**20}
  if timed_out:
    return {"error": f"timed out after {timeout:.0f}s", "spec": spec, **extra}
  for line in reversed(stdout.splitlines()):
    if line.startswith(RESULT_TAG):
      return {**json.loads(line[len(RESULT_TAG) :]), **extra}
  tail = (stderr or stdout)[-1500:]
  return {
    "error": f"exit {p.returncode}"
    + (" (killed: out of memory?)" if p.returncode in (-9, 137) else "")
    + f": {tail}",
    "spec": spec,
    **extra,
  }


def worker_main(handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]) -> bool:
  """If argv is `--worker JSON`, runs handlers[spec['kind']] and prints the result line."""
  if len(sys.argv) < 3 or sys.argv[1] != "--worker":
    return False
  spec = json.loads(sys.argv[2])
  out = handlers[spec["kind"]](spec)
  print(RESULT_TAG + json.dumps(out, default=float), flush=True)
  return True
