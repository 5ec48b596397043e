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

import dataclasses
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


def tree_rss(proc, anonymous: bool = False) -> int:
  """The resident memory of a psutil.Process and all its children (bytes; 0 once it is gone),
  for peak-RSS sampling of a command that starts workers. `anonymous`: without the pages of
  mapped files (RSS less psutil's `shared`: an mmap'd dataset's pages are reclaimable page cache,
  not memory the process needs)."""
  import psutil

  total = 0
  try:
    procs = [proc] + proc.children(recursive=True)
  except psutil.Error:
    return 0
  for p in procs:
    try:
      m = p.memory_info()
      total += m.rss - (getattr(m, "shared", 0) if anonymous else 0)
    except psutil.Error:
      pass
  return total


def tree_cpu_s(proc=None) -> float:
  """CPU seconds (user + system) of a psutil.Process (default: this one) and all its children."""
  import psutil

  proc = proc or psutil.Process()
  total = 0.0
  for p in [proc] + proc.children(recursive=True):
    try:
      total += sum(p.cpu_times()[:2])
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


# The allocator of every worker of a run (--malloc), both frameworks alike.
MALLOC = {
  "huge": "both frameworks start as `python -m esmjax.main` does (malloc on transparent huge "
  "pages: GLIBC_TUNABLES=glibc.malloc.hugetlb=1 where glibc and the kernel support it)",
  "os": "both frameworks run with malloc as the OS gives it (4 KB pages)",
}
# PyTorch workers wait passively in OpenMP: on a shared, oversubscribed machine spin-waiting made
# 2 threads up to 5× slower than 1 thread (measured); passive waiting was PyTorch's best.
TORCH_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def malloc_env(kind: str) -> dict[str, str]:
  """The environment of `MALLOC[kind]`: esmjax's CLI turns huge-page malloc on by itself
  (`worker_env` starts workers that way); 'os' turns it off (glibc reads an empty value as no
  tunables)."""
  return {} if kind == "huge" else {"GLIBC_TUNABLES": ""}


@dataclasses.dataclass
class Finished:
  """A finished (or killed) command: its exit code, output, wall and CPU seconds, and the peak
  resident memory of its process tree and of its largest process."""

  returncode: int
  stdout: str
  stderr: str
  wall_s: float
  cpu_s: float
  timed_out: bool
  peak_tree_bytes: int
  peak_one_bytes: int


def tree_pythonpath(tree: Path | str, inherited: str = "") -> str:
  """PYTHONPATH of a measurement of `tree`'s esmjax (this checkout or another's): the tree and
  benchmarks/ first, then every inherited entry (where the dependencies may come from, e.g. a
  `pip --target` folder) except this checkout and its benchmarks/, so that the tree's esmjax is
  the one imported."""
  own = {os.path.realpath(p) for p in (REPO, BENCH, tree)}
  rest = [p for p in inherited.split(os.pathsep) if p and os.path.realpath(p) not in own]
  return os.pathsep.join((str(tree), str(BENCH), *rest))


def tree_env(tree: Path | str, torch: bool = False) -> dict[str, str]:
  """The environment of a measurement of `tree`'s esmjax: the CLI's (`worker_env`, which inherits
  this process's), PYTHONPATH by `tree_pythonpath`; PyTorch's `TORCH_ENV` if asked."""
  extra = {"PYTHONPATH": tree_pythonpath(tree, os.environ.get("PYTHONPATH", ""))}
  return worker_env(extra=extra | (TORCH_ENV if torch else {}))


def _peaks(proc, peaks: list[int]) -> None:
  import psutil

  peaks[0] = max(peaks[0], tree_rss(proc))
  try:
    for c in [proc] + proc.children(recursive=True):
      peaks[1] = max(peaks[1], c.memory_info().rss)
  except psutil.Error:
    pass


def run_command(
  cmd: list[str],
  *,
  env: dict[str, str] | None = None,
  cwd: Path | str | None = None,
  timeout: float | None = None,
  sample_s: float = 0.2,
) -> Finished:
  """Runs `cmd`, sampling the resident memory of its process tree every `sample_s` seconds. After
  `timeout` seconds the whole process group is killed (the command's own children too) and the
  result says `timed_out`; so is it when this process is interrupted (Ctrl-C), the command running
  in a session of its own. CPU seconds are of the command and the children it waited for."""
  import psutil

  ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
  t = time.perf_counter()
  with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
    p = subprocess.Popen(
      cmd, env=env, cwd=cwd, stdout=out, stderr=err, text=True, start_new_session=True
    )
    peaks, timed_out = [0, 0], False
    deadline = time.monotonic() + (timeout if timeout is not None else float("inf"))
    try:
      proc = psutil.Process(p.pid)
      while p.poll() is None:
        _peaks(proc, peaks)
        if time.monotonic() > deadline:
          timed_out = True
          break
        time.sleep(max(min(sample_s, deadline - time.monotonic()), 0.005))
    except psutil.NoSuchProcess:  # it ended before the first sample
      pass
    finally:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
      p.wait()
    out.seek(0)
    err.seek(0)
    stdout, stderr = out.read(), err.read()
  ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
  wall = time.perf_counter() - t
  return Finished(p.returncode, stdout, stderr, wall, cpu, timed_out, *peaks)


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
  f = run_command(cmd, env=env or worker_env(), timeout=timeout, sample_s=sample_s)
  extra = {"wall_s": f.wall_s, "peak_tree_rss_mb": f.peak_tree_bytes / 2**20}
  if f.timed_out:
    return {"error": f"timed out after {timeout:.0f}s", "spec": spec, **extra}
  for line in reversed(f.stdout.splitlines()):
    if line.startswith(RESULT_TAG):
      return {**json.loads(line[len(RESULT_TAG) :]), **extra}
  killed = " (killed: out of memory?)" if f.returncode in (-9, 137) else ""
  tail = (f.stderr or f.stdout)[-1500:]
  return {"error": f"exit {f.returncode}{killed}: {tail}", "spec": spec, **extra}


def worker_main(handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]) -> bool:
  """If argv is `--worker JSON`, runs handlers[spec['kind']] and prints the result line."""
  if len(sys.argv) < 3 or sys.argv[1] != "--worker":
    return False
  spec = json.loads(sys.argv[2])
  out = handlers[spec["kind"]](spec)
  print(RESULT_TAG + json.dumps(out, default=float), flush=True)
  return True
