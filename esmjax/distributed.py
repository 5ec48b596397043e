"""Process set-up: host memory (allocator, huge pages) and JAX's distributed runtime (never at
import time).

A job of N processes runs the same command in every process, which differs only in its process
id, given by flags or, for launchers that set the environment, by env variables:

  --config.distributed.coordinator=HOST:PORT   or  JAX_COORDINATOR_ADDRESS=HOST:PORT
  --config.distributed.num_processes=N         or  JAX_NUM_PROCESSES=N
  --config.distributed.process_id=I            or  JAX_PROCESS_ID=I

Flags win over the environment. Devices per process come from the platform; on CPU, set
JAX_NUM_CPU_DEVICES=K (or XLA_FLAGS=--xla_force_host_platform_device_count=K) in every process.
Each process then reads its own share of the data blocks, and the mesh spans all N·K devices.
"""

import ctypes
import ctypes.util
import os
import sys
from typing import Mapping

from absl import logging

# JAX and the config module are imported where used: the CLI calls `use_huge_page_malloc` first
# thing, and a restart should not pay for a JAX import.

ENV = {"coordinator": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
       "process_id": "JAX_PROCESS_ID"}


def settings(config) -> tuple[str, int, int]:
  """(coordinator, num_processes, process_id): the config's, else the environment's."""
  from esmjax.config import ConfigError  # noqa: PLC0415

  d = config.distributed
  coordinator = d.coordinator or os.environ.get(ENV["coordinator"], "")
  num = int(d.num_processes) if d.num_processes > 1 else int(os.environ.get(ENV["num_processes"], "1"))
  pid = int(d.process_id) if d.num_processes > 1 else int(os.environ.get(ENV["process_id"], "0"))
  if num > 1 and not coordinator:
    raise ConfigError(f"distributed.num_processes={num} needs distributed.coordinator=HOST:PORT "
                     f"(or {ENV['coordinator']})")
  if num > 1 and not 0 <= pid < num:
    raise ConfigError(f"distributed.process_id={pid} must be in [0, {num}) (distributed.num_processes={num})")
  return coordinator, num, pid


# glibc mallopt parameter -> (value, its environment variable, its GLIBC_TUNABLES name).
_MALLOPT = {-3: (32 << 20, "MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold"),  # M_MMAP_THRESHOLD
            -1: (1 << 30, "MALLOC_TRIM_THRESHOLD_", "glibc.malloc.trim_threshold"),  # M_TRIM_THRESHOLD
            -2: (64 << 20, "MALLOC_TOP_PAD_", "glibc.malloc.top_pad")}  # M_TOP_PAD
_tuned: bool | None = None  # None: not tried yet


def tune_host_allocator() -> bool:
  """Keeps freed host memory for reuse instead of handing it back to the OS after every step.

  XLA:CPU allocates a step's temporaries afresh each step (the [B·C, D] rows, gradients and merge
  buffers are ~7 MB each at batch 4096 × 23 fields). glibc serves blocks that size with mmap and
  unmaps them on free, so every step page-faults and zeroes them again: measured 22 % of the CPU
  time of an ESMM step in the kernel, and the step 100 → 76 ms of CPU (1 core) with this tuning —
  the embedding engine's overhead over the towers alone went from ~35 to ~10 ms. Blocks up to
  32 MB (glibc's maximum) now come from the heap, which keeps up to 1 GB free before trimming.

  glibc only (a no-op elsewhere); a parameter the environment sets (MALLOC_*_ or GLIBC_TUNABLES)
  is left to it. Huge pages for malloc can only be asked for before the process starts
  (`use_huge_page_malloc`, which the CLI calls).
  Affects allocations made after the call; `sharding.make_mesh` calls it. Returns whether it applied.
  """
  global _tuned
  if _tuned is not None:
    return _tuned
  _tuned = False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    mallopt = libc.mallopt
    libc.gnu_get_libc_version  # noqa: B018 (glibc's; musl and macOS lack it)
  except (OSError, AttributeError, TypeError):
    return False
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  applied = [bool(mallopt(param, value)) for param, (value, env, tunable) in _MALLOPT.items()
             if env not in os.environ and tunable not in tunables]
  _tuned = bool(applied) and all(applied)
  return _tuned


HUGETLB_TUNABLE = "glibc.malloc.hugetlb=1"  # glibc >= 2.35: malloc'd memory on transparent huge pages
OPT_OUT_ENV = "ESMJAX_HUGE_PAGE_MALLOC"  # set to 0 to keep the process's malloc as it is


def _glibc_version() -> tuple[int, ...]:
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.gnu_get_libc_version.restype = ctypes.c_char_p
    return tuple(int(x) for x in libc.gnu_get_libc_version().decode().split(".")[:2])
  except (OSError, AttributeError, TypeError, ValueError):
    return ()


def huge_page_malloc_supported() -> bool:
  """Linux, glibc >= 2.35 (the `glibc.malloc.hugetlb` tunable) and transparent huge pages not off."""
  if not sys.platform.startswith("linux") or _glibc_version() < (2, 35):
    return False
  try:
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
      return "[never]" not in f.read()
  except OSError:
    return False


def cli_malloc_env(environ: Mapping[str, str]) -> dict[str, str]:
  """`environ` as `python -m esmjax.main` runs in it: glibc.malloc.hugetlb=1 added to
  GLIBC_TUNABLES where `huge_page_malloc_supported()`, unless it is already there or
  ESMJAX_HUGE_PAGE_MALLOC=0 (benchmark workers start in this environment too)."""
  env = dict(environ)
  tunables = env.get("GLIBC_TUNABLES", "")
  if "glibc.malloc.hugetlb" in tunables or env.get(OPT_OUT_ENV, "1") == "0" or not huge_page_malloc_supported():
    return env
  env["GLIBC_TUNABLES"] = f"{tunables}:{HUGETLB_TUNABLE}" if tunables else HUGETLB_TUNABLE
  return env


def use_huge_page_malloc() -> None:
  """Restarts this process (same pid, same command line: execve) in `cli_malloc_env`, unless
  that is the environment it already has.

  Why: a train step's random row reads and writes, and its ~7 MB temporaries, miss the TLB on
  4 KB pages. With malloc on transparent huge pages the ESMM paper step runs at ~110 k ex/s at
  1e5 rows on 2 cores instead of ~90 k (benchmarks/results/throughput.md, the `4 KB-page malloc`
  lines against the others). glibc reads tunables only at start-up, hence the restart; only the
  CLI entry point calls this, before anything else is imported or printed (never a library
  import, never inside tests).

  A no-op where `huge_page_malloc_supported()` is false; set ESMJAX_HUGE_PAGE_MALLOC=0 to opt out.
  """
  env = cli_malloc_env(os.environ)
  if env.get("GLIBC_TUNABLES") == os.environ.get("GLIBC_TUNABLES"):
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, getattr(sys, "orig_argv", [sys.executable, *sys.argv]), env)


_MADV_HUGEPAGE, _MADV_COLLAPSE = 14, 25  # linux/mman.h; MADV_COLLAPSE since Linux 6.1
_HUGE = 2 << 20  # x86-64 / arm64 transparent huge page size


def back_with_huge_pages(tree, min_bytes: int = 4 << 20) -> int:
  """Moves the host memory of the big CPU arrays in `tree` (embedding tables and their slots) onto
  transparent huge pages; returns the bytes advised. Call it on a fresh state (after init or
  restore): donated steps then update the same buffers in place, so the pages stay huge.

  Why: a step reads and writes ~30 k random rows of each table, slot and scratch; with 4 KB pages
  nearly every one is a TLB miss once they outgrow the TLB's reach. Measured at 1e7 rows × 18
  (0.76 GB of state), alternating steps in one process: 3-4 % less step time. (The step's
  temporaries gain more: GLIBC_TUNABLES=glibc.malloc.hugetlb=1, see `tune_host_allocator`.)
  Most systems ship THP as `madvise` (only advised memory gets huge pages), and XLA allocates the
  tables itself, so esmjax advises them afterwards: MADV_HUGEPAGE, then MADV_COLLAPSE to rebuild
  the already-touched pages now rather than whenever khugepaged gets to them (hours for GBs).

  Linux only, best effort: a kernel without MADV_COLLAPSE (< 6.1), THP set to `never`, or no free
  huge pages leave the memory as it was. Accelerator arrays are skipped (not host memory).
  """
  import jax  # noqa: PLC0415

  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    madvise = libc.madvise
  except (OSError, AttributeError, TypeError):
    return 0
  madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
  madvise.restype = ctypes.c_int
  done = 0
  for leaf in jax.tree_util.tree_leaves(tree):
    if not isinstance(leaf, jax.Array) or leaf.nbytes < min_bytes:
      continue
    for shard in leaf.addressable_shards:
      if shard.device.platform != "cpu":
        continue
      try:
        ptr = shard.data.unsafe_buffer_pointer()
      except Exception:  # noqa: BLE001 (not every runtime exposes host pointers)
        continue
      start = -(-ptr // _HUGE) * _HUGE
      end = (ptr + shard.data.nbytes) // _HUGE * _HUGE
      if end - start < _HUGE:
        continue
      if madvise(start, end - start, _MADV_HUGEPAGE) == 0:
        madvise(start, end - start, _MADV_COLLAPSE)  # may fail (no huge pages free): still advised
        done += end - start
  return done


def maybe_initialize(config) -> None:
  """Calls `jax.distributed.initialize` when the config or the environment asks for more than one
  process.

  Only `main` calls this: grain worker processes import the package and must not join the job.
  On CPU, collectives across processes use gloo over the coordinator's address.
  """
  import jax  # noqa: PLC0415

  coordinator, num, pid = settings(config)
  if num <= 1:
    return
  # Affects only CPU devices; must be set before the backend starts (so no jax.devices() here).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=num, process_id=pid)
  if jax.process_count() != num:
    raise RuntimeError(f"jax.distributed.initialize joined {jax.process_count()} processes, expected {num}")
  logging.info("process %d/%d initialised (coordinator %s), %d local / %d global devices",
               jax.process_index(), jax.process_count(), coordinator, jax.local_device_count(),
               jax.device_count())
