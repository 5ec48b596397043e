"""Test set-up: 8 fake CPU devices (before jax is imported anywhere), parsed absl flags, and the
`data` fixture (a module may define its own)."""

import os
import sys

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# No test writes to the user's compilation cache (tests/test_host_sync.py turns one on itself).
os.environ.setdefault("ESMJAX_COMPILE_CACHE", "")

from esmjax.common import absl_flags

absl_flags.ensure_parsed("pytest")  # grain's mp_prefetch reads absl flags

sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402
import tiny  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """A directory with the tiny train and eval datasets (`tiny.train_eval_datasets`)."""
  return tiny.train_eval_datasets(tmp_path_factory.mktemp("data"))
