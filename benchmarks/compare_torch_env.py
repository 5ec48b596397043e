"""How benchmarks/compare_torch.py's workers start: the script they run, the allocator and
environment both frameworks get, and PyTorch's device and threads inside a worker."""

from __future__ import annotations

from pathlib import Path

import common

# Every worker runs `python compare_torch.py --worker JSON` (common.run_worker), which dispatches
# to the speed and quality workers.
SCRIPT = Path(__file__).resolve().parent / "compare_torch.py"

MALLOC = {
  "huge": "both frameworks start as `python -m esmjax.main` does (malloc on transparent huge "
  "pages: "
  "GLIBC_TUNABLES=glibc.malloc.hugetlb=1 where glibc and the kernel support it)",
  "os": "both frameworks run with malloc as the OS gives it (4 KB pages)",
}


def malloc_env(kind: str) -> dict[str, str]:
  """The allocator every worker of this run starts with, JAX and PyTorch alike: esmjax's CLI turns
  huge-page malloc on by itself (`common.worker_env` starts workers that way), and PyTorch gets the
  same so the comparison stays fair."""
  return (
    {} if kind == "huge" else {"GLIBC_TUNABLES": ""}
  )  # glibc reads an empty value as no tunables


def worker_env(fw: str, malloc: str) -> dict[str, str]:
  """PyTorch workers wait passively in OpenMP: on this shared, oversubscribed machine spin-waiting
  made 2 threads up to 5× slower than 1 thread (measured); passive waiting was PyTorch's best."""
  extra = malloc_env(malloc)
  if fw == "torch":
    extra["OMP_WAIT_POLICY"] = "PASSIVE"
  return common.worker_env(devices=1, extra=extra)


def torch_setup(threads: int):
  """(torch, device, sync) in a PyTorch worker: CUDA where available, `threads` CPU threads."""
  import torch

  dev = "cuda" if torch.cuda.is_available() else "cpu"
  torch.set_num_threads(threads)
  sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
  return torch, dev, sync
