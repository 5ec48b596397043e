"""JAX's distributed runtime: the job's processes from flags or the environment (never at import
time; host memory is `esmjax.core.host_memory`).

A job of N processes runs the same command in every process, which differs only in its process
id, given by flags or, for launchers that set the environment, by env variables:

  --config.distributed.coordinator=HOST:PORT   or  JAX_COORDINATOR_ADDRESS=HOST:PORT
  --config.distributed.num_processes=N         or  JAX_NUM_PROCESSES=N
  --config.distributed.process_id=I            or  JAX_PROCESS_ID=I

Flags win over the environment. Devices per process come from the platform; on CPU, set
JAX_NUM_CPU_DEVICES=K (or XLA_FLAGS=--xla_force_host_platform_device_count=K) in every process.
Each process then reads its own share of the data blocks, and the mesh spans all N·K devices.
"""

import os

from absl import logging

# JAX and the config module are imported where used: grain workers import the package.

ENV = {
  "coordinator": "JAX_COORDINATOR_ADDRESS",
  "num_processes": "JAX_NUM_PROCESSES",
  "process_id": "JAX_PROCESS_ID",
}


def settings(config) -> tuple[str, int, int]:
  """(coordinator, num_processes, process_id): the config's, else the environment's."""
  from esmjax.config.defaults import ConfigError

  d = config.distributed
  coordinator = d.coordinator or os.environ.get(ENV["coordinator"], "")
  from_flags = d.num_processes > 1
  num = int(d.num_processes) if from_flags else int(os.environ.get(ENV["num_processes"], "1"))
  pid = int(d.process_id) if from_flags else int(os.environ.get(ENV["process_id"], "0"))
  if num > 1 and not coordinator:
    raise ConfigError(
      f"distributed.num_processes={num} needs distributed.coordinator=HOST:PORT "
      f"(or {ENV['coordinator']})"
    )
  if num > 1 and not 0 <= pid < num:
    raise ConfigError(
      f"distributed.process_id={pid} must be in [0, {num}) (distributed.num_processes={num})"
    )
  return coordinator, num, pid


def maybe_initialize(config) -> None:
  """Calls `jax.distributed.initialize` when the config or the environment asks for more than one
  process.

  Only `main` calls this: grain worker processes import the package and must not join the job.
  On CPU, collectives across processes use gloo over the coordinator's address.
  """
  import jax

  coordinator, num, pid = settings(config)
  if num <= 1:
    return
  # Affects only CPU devices; must be set before the backend starts (so no jax.devices() here).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=num, process_id=pid)
  if jax.process_count() != num:
    raise RuntimeError(
      f"jax.distributed.initialize joined {jax.process_count()} processes, expected {num}"
    )
  logging.info(
    "process %d/%d initialised (coordinator %s), %d local / %d global devices",
    jax.process_index(),
    jax.process_count(),
    coordinator,
    jax.local_device_count(),
    jax.device_count(),
  )
