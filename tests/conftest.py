"""Test set-up: 8 fake CPU devices (before jax is imported anywhere) and parsed absl flags."""

import os
import sys

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags  # noqa: E402

if not flags.FLAGS.is_parsed():
  # grain's mp_prefetch reads absl flags; outside an absl app they must be parsed first.
  flags.FLAGS(["pytest"], known_only=True)

sys.path.insert(0, os.path.dirname(__file__))
