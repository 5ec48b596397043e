"""Multi-process start-up through JAX's own distributed runtime (never at import time)."""

import jax
from absl import logging


def maybe_initialize(config) -> None:
  """Calls `jax.distributed.initialize` when the config asks for more than one process.

  Only `main` calls this: grain worker processes import the package and must not join the job.
  On CPU, collectives across processes use gloo over the coordinator's address.
  """
  d = config.distributed
  if d.num_processes <= 1:
    return
  # Affects only CPU devices; must be set before the backend starts (so no jax.devices() here).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=d.coordinator, num_processes=d.num_processes,
                             process_id=d.process_id)
  logging.info("process %d/%d initialised (coordinator %s), %d local / %d global devices",
               jax.process_index(), jax.process_count(), d.coordinator, jax.local_device_count(),
               jax.device_count())
