"""Host memory: allocator tuning, malloc on huge pages for the CLI, huge pages under a state."""

import os
import subprocess
import sys

import numpy as np
import pytest


def test_host_memory_helpers_keep_values():
  import jax.numpy as jnp

  from esmjax.core import host_memory

  assert isinstance(host_memory.tune_host_allocator(), bool)
  big = jnp.arange(3 << 20, dtype=jnp.float32)  # 12 MB: eligible for huge pages
  small = jnp.arange(1000, dtype=jnp.float32)  # too small: skipped
  before = np.asarray(big).copy()
  advised = host_memory.back_with_huge_pages({"big": big, "small": small})
  assert advised % (2 << 20) == 0 and advised <= big.nbytes  # best effort: 0 where unsupported
  np.testing.assert_array_equal(np.asarray(big), before)
  assert host_memory.back_with_huge_pages({"small": small}) == 0


@pytest.mark.parametrize(
  "env, expected",
  [
    ({}, "glibc.malloc.hugetlb=1"),
    ({"GLIBC_TUNABLES": "glibc.malloc.top_pad=1"}, "glibc.malloc.top_pad=1:glibc.malloc.hugetlb=1"),
    ({"ESMJAX_HUGE_PAGE_MALLOC": "0"}, None),
  ],
)
def test_cli_restarts_once_with_huge_page_malloc(env, expected):
  from esmjax.core import host_memory

  code = (
    "import os; from esmjax.core import host_memory; host_memory.use_huge_page_malloc(); "
    "print(repr(os.environ.get('GLIBC_TUNABLES')))"
  )
  base = {
    k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "ESMJAX_HUGE_PAGE_MALLOC")
  }
  out = subprocess.run(
    [sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, timeout=120
  )
  assert out.returncode == 0, out.stderr
  want = (
    expected
    if host_memory.huge_page_malloc_supported() or expected is None
    else env.get("GLIBC_TUNABLES")
  )
  assert out.stdout.strip().splitlines() == [repr(want)]  # printed once: one restart, then no more
