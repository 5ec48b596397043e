"""The environment and load record every result carries: when, which machine (the CPU model and
its bf16 matmul flags, the usable cores, the memory available, the GPUs if any), which code (the
commit and the library files that differed from it), which command, and the load average before
and after (the machine may be shared: the load says how much of it the run had).

Light on purpose: it imports no JAX (a benchmark's parent process never does, so it never holds an
accelerator or fixes the CPU device count).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# Provenance: when, where, what code, which command.


def now() -> str:
  """Local time with its zone, as results files print it."""
  return time.strftime("%Y-%m-%d %H:%M:%S %Z")


def utc_now() -> str:
  return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def usable_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def _lines(path: str) -> list[str]:
  try:
    with open(path) as f:
      return f.readlines()
  except OSError:  # not Linux
    return []


def cpu_model() -> str:
  for line in _lines("/proc/cpuinfo"):
    if line.startswith("model name"):
      return line.split(":", 1)[1].strip()
  return platform.processor() or platform.machine()


def mem_available_gb() -> float:
  for line in _lines("/proc/meminfo"):
    if line.startswith("MemAvailable:"):
      return int(line.split()[1]) / 2**20
  return float("nan")


def load_average() -> list[float]:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return []


def cpu_bf16_flags() -> list[str]:
  """Which of the CPU's bf16 matmul flags (avx512_bf16, amx_bf16) it has: they decide whether
  bf16 towers run faster than f32 (esmjax.models.model.auto_dtype)."""
  for line in _lines("/proc/cpuinfo"):
    if line.startswith("flags"):
      have = set(line.split(":", 1)[1].split())
      return [f for f in ("avx512_bf16", "amx_bf16") if f in have]
  return []


def gpus() -> list[str]:
  """The GPUs nvidia-smi lists (name and memory), [] without one; read without importing JAX."""
  if not shutil.which("nvidia-smi"):
    return []
  try:
    p = subprocess.run(
      ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
      capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
  except (OSError, subprocess.SubprocessError):
    return []
  return [line.strip() for line in p.stdout.splitlines() if line.strip()]


def machine() -> dict[str, Any]:
  return {
    "cpu": cpu_model(),
    "cpu_bf16_flags": cpu_bf16_flags(),
    "cores": usable_cores(),
    "mem_available_gb": mem_available_gb(),
    "gpus": gpus(),
  }


def git(root: Path | str, *args: str) -> str:
  """stdout of a read-only git command in `root` ('' when git or the repository is missing)."""
  try:
    return subprocess.run(
      ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=False
    ).stdout.rstrip()
  except (OSError, subprocess.SubprocessError):
    return ""


@contextlib.contextmanager
def worktree(repo: Path | str, commit: str):
  """Yields the path of a temporary detached `git worktree` of `repo` at `commit` (another
  checkout to measure against); removes it after."""
  tmp = Path(tempfile.mkdtemp(prefix="esmjax-baseline-"))
  path = tmp / "tree"
  add = ["git", "-C", str(repo), "worktree", "add", "--detach", str(path), commit]
  p = subprocess.run(add, capture_output=True, text=True, check=False)
  if p.returncode:
    shutil.rmtree(tmp, ignore_errors=True)
    raise RuntimeError(f"git worktree add --detach {path} {commit} failed: {p.stderr.strip()}")
  try:
    yield path
  finally:
    remove = ["git", "-C", str(repo), "worktree", "remove", "--force", str(path)]
    subprocess.run(remove, capture_output=True, check=False)
    shutil.rmtree(tmp, ignore_errors=True)


def code_version(root: Path | str = REPO) -> dict[str, Any]:
  """The commit measured, and which library files differed from it."""
  dirty = [line[3:] for line in git(root, "status", "--porcelain", "--", "esmjax").splitlines()]
  return {
    "commit": git(root, "rev-parse", "--short", "HEAD").strip() or "unknown",
    "esmjax_uncommitted": dirty,
  }


def command_line(argv: Sequence[str] | None = None, script: str | None = None) -> str:
  """The command that reruns this process, relative to the repository: `python -m experiments.x
  ...` for an experiment (they run as modules), `python benchmarks/x.py ...` for a script."""
  args = list(sys.argv[1:] if argv is None else argv)
  path = Path(os.path.abspath(script or sys.argv[0]))
  try:
    rel = path.relative_to(REPO)
  except ValueError:  # not a file of this checkout (pytest, a notebook): as it was started
    return " ".join(["python", str(script or sys.argv[0]), *args])
  if rel.parts[0] == "experiments":
    head = ["python", "-m", ".".join(rel.with_suffix("").parts)]
  else:
    head = ["python", rel.as_posix()]
  return " ".join(head + args)


def provenance(command: str | None = None, root: Path | str = REPO) -> dict[str, Any]:
  """What every results file records about how it was made (the load average before the run:
  `finish` adds the one after)."""
  return {
    "when": now(),
    "written_utc": utc_now(),
    "command": command or command_line(),
    "machine": machine(),
    "code": code_version(root),
    "load_before": load_average(),
  }


def finish(record: dict[str, Any], started: float) -> dict[str, Any]:
  """Adds the load average after the run and the elapsed seconds since `started` (time.time())."""
  record["load_after"] = load_average()
  record["elapsed_s"] = time.time() - started
  return record
