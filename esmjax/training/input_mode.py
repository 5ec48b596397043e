"""Which input path a run trains from (`data.input_mode`): the grain stream, or the rows resident on
the devices (`esmjax.training.resident`).

'stream' always works; 'device' needs the used rows to fit the devices' memory with room for the
train state (tables, their slots, the towers) and the step's own buffers; 'auto' takes 'device'
where it fits and measured faster, else 'stream'. Measured (benchmarks/input_modes.py, results in
benchmarks/results/input_modes.md): on CPU the resident gather (2.4-2.7 M rows/s,
benchmarks/results/resident_feed.md) runs in series with the step on the same cores while the
stream's gather overlaps it on a thread, so 'auto' keeps the stream on CPU (`CPU_PREFERS_DEVICE`);
on GPU and TPU the rows sit in device memory, next to the step, and 'auto' takes them there.
"""

from __future__ import annotations

import os

import jax
from absl import logging

from esmjax.config import defaults as config_lib
from esmjax.training import resident

MODES = config_lib.INPUT_MODES
# What benchmarks/input_modes.py measured faster end to end on CPU where the rows fit: the stream
# (device / stream 0.81, 1.08, 0.80, 0.92 for ESMM and ESM2 at batch 1 024 and 4 096 on 2 cores;
# benchmarks/results/input_modes.md).
CPU_PREFERS_DEVICE = False
# Share of a device's memory the resident rows and the state may take together (the rest: the
# step's activations, gradients and XLA's buffers).
MEMORY_SHARE = 0.6


def configured(config) -> str:
  """data.input_mode (configs saved before the key existed: 'auto')."""
  return str(config.data.get("input_mode", "auto"))


def device_memory_bytes() -> tuple[int, str]:
  """(bytes one device can hold, where the figure comes from): the allocator's limit on GPU / TPU;
  on CPU, whose devices share the host's memory, the host's available memory over the devices."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if stats.get("bytes_limit"):
    return int(stats["bytes_limit"]), "device memory"
  available = _host_available_bytes()
  return available // max(1, jax.local_device_count()), "host memory available"


def _host_available_bytes() -> int:
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def state_bytes_per_device(run) -> int:
  """The train state's bytes on one device (row-sharded leaves split over the mesh)."""
  total = 0
  for leaf, sharding in zip(
    jax.tree_util.tree_leaves(run.state_shape),
    jax.tree_util.tree_leaves(run.state_sharding),
    strict=True,
  ):
    n = leaf.size * leaf.dtype.itemsize
    total += n // run.mesh.size if not sharding.is_fully_replicated else n
  return int(total)


def fits(run, dataset, fraction: float) -> tuple[bool, str]:
  """(whether the used rows fit next to the state, one line with the figures)."""
  data = resident.resident_bytes(dataset, fraction) // run.mesh.size
  state = state_bytes_per_device(run)
  limit, source = device_memory_bytes()
  ok = data + state <= MEMORY_SHARE * limit
  why = (
    f"rows {data / 2**20:.1f} MiB + state {state / 2**20:.1f} MiB per device "
    f"{'<=' if ok else '>'} {MEMORY_SHARE:.0%} of {limit / 2**20:.1f} MiB ({source})"
  )
  return ok, why


def resolve(config, run, dataset, *, custom_batches: bool = False) -> str:
  """'stream' or 'device' for this run, logged with the reason. `custom_batches`: a test hook
  rewrites the stream's batches, which only the stream can honour."""
  mode = configured(config)
  if mode == "stream":
    logging.info("input: the grain stream (data.input_mode='stream')")
    return "stream"
  if custom_batches:
    if mode == "device":
      raise ValueError("Hooks.batches rewrites the stream's batches: use data.input_mode='stream'")
    return "stream"
  ok, why = fits(run, dataset, float(config.data.train_fraction))
  if mode == "device":
    if not ok:
      raise config_lib.ConfigError(
        f"data.input_mode='device' but the training rows do not fit: {why}; use "
        "data.input_mode='stream' (or 'auto')"
      )
    logging.info("input: resident on the devices (data.input_mode='device'; %s)", why)
    return "device"
  on_cpu = jax.default_backend() == "cpu"
  rows = resident.resident_bytes(dataset, float(config.data.train_fraction)) // max(
    1, resident.row_bytes(dataset)
  )
  if rows < int(config.train.batch_size):
    choice, reason = "stream", f"{rows} rows are fewer than a batch"
  elif not ok:
    choice, reason = "stream", f"the rows do not fit: {why}"
  elif on_cpu and not CPU_PREFERS_DEVICE:
    choice, reason = "stream", f"on CPU the stream measured faster ({why})"
  else:
    choice, reason = "device", why
  logging.info(
    "input: %s (data.input_mode='auto': %s; set data.input_mode to override)",
    "resident on the devices" if choice == "device" else "the grain stream",
    reason,
  )
  return choice
