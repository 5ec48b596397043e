"""Host memory of a run: glibc's allocator tuned for per-step temporaries, malloc on transparent
huge pages (a restart of the CLI process), and the big CPU arrays of a state moved onto huge pages.

Everything here is best effort and Linux/glibc only; elsewhere each function is a no-op. JAX is
imported where used: the CLI calls `use_huge_page_malloc` first thing, and a restart should not pay
for a JAX import.
"""

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Mapping

# glibc mallopt parameter -> (value, its environment variable, its GLIBC_TUNABLES name).
# M_MMAP_THRESHOLD (-3), M_TRIM_THRESHOLD (-1), M_TOP_PAD (-2).
_MALLOPT = {
  -3: (32 << 20, "MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold"),
  -1: (1 << 30, "MALLOC_TRIM_THRESHOLD_", "glibc.malloc.trim_threshold"),
  -2: (64 << 20, "MALLOC_TOP_PAD_", "glibc.malloc.top_pad"),
}
_tuned: bool | None = None  # None: not tried yet


def tune_host_allocator() -> bool:
  """Keeps freed host memory for reuse instead of handing it back to the OS after every step.

  XLA:CPU allocates a step's temporaries afresh each step (the [B·C, D] rows, gradients and merge
  buffers are ~7 MB each at batch 4096 × 23 fields). glibc serves blocks that size with mmap and
  unmaps them on free, so every step page-faults and zeroes them again: measured 22 % of the CPU
  time of an ESMM step in the kernel, and the step takes 76 ms of CPU (1 core) with this tuning
  against 100 ms without (the embedding engine's overhead over the towers alone ~10 ms against
  ~35). Blocks up to 32 MB (glibc's maximum) come from the heap, which keeps up to 1 GB free before
  trimming.

  glibc only (a no-op elsewhere); a parameter the environment sets (MALLOC_*_ or GLIBC_TUNABLES)
  is left to it. Huge pages for malloc can only be asked for before the process starts
  (`use_huge_page_malloc`, which the CLI calls).
  Affects allocations made after the call; `esmjax.core.run.Run` calls it before it builds the
  state. Returns whether it applied.
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
  applied = [
    bool(mallopt(param, value))
    for param, (value, env, tunable) in _MALLOPT.items()
    if env not in os.environ and tunable not in tunables
  ]
  _tuned = bool(applied) and all(applied)
  return _tuned


HUGETLB_TUNABLE = "glibc.malloc.hugetlb=1"  # glibc >= 2.35: malloc on transparent huge pages
OPT_OUT_ENV = "ESMJAX_HUGE_PAGE_MALLOC"  # set to 0 to keep the process's malloc as it is


def _glibc_version() -> tuple[int, ...]:
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.gnu_get_libc_version.restype = ctypes.c_char_p
    return tuple(int(x) for x in libc.gnu_get_libc_version().decode().split(".")[:2])
  except (OSError, AttributeError, TypeError, ValueError):
    return ()


def huge_page_malloc_supported() -> bool:
  """Linux, glibc >= 2.35 (the `glibc.malloc.hugetlb` tunable), transparent huge pages not off."""
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
  if (
    "glibc.malloc.hugetlb" in tunables
    or env.get(OPT_OUT_ENV, "1") == "0"
    or not huge_page_malloc_supported()
  ):
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
  import jax

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
      except Exception:  # not every runtime exposes host pointers
        continue
      start = -(-ptr // _HUGE) * _HUGE
      end = (ptr + shard.data.nbytes) // _HUGE * _HUGE
      if end - start < _HUGE:
        continue
      if madvise(start, end - start, _MADV_HUGEPAGE) == 0:
        madvise(start, end - start, _MADV_COLLAPSE)  # may fail (no huge pages free): still advised
        done += end - start
  return done
