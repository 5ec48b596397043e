"""JAX's persistent compilation cache for esmjax's runs: compiled programs are kept on disk, so a
second run of the same config (same shapes, jax and devices) loads them instead of compiling.

On by default under `default_dir()`: $ESMJAX_COMPILE_CACHE when set (a directory, or "" / "off"
for no cache), else ~/.cache/esmjax/jax-compile. `train.compile_cache_dir` overrides it ("" = off).
A cache directory JAX already has (the user's `JAX_COMPILATION_CACHE_DIR`, or an earlier run in
this process) is left as it is.
`enable` runs at the command line's and the Python API's start-up, before anything compiles.
"""

from __future__ import annotations

import os

from absl import logging

ENV = "ESMJAX_COMPILE_CACHE"
OFF = ("", "off")
# Programs that compile faster than this are not worth a disk write (JAX's default: 1 s); the train
# dispatch, the evaluation and the state check each take longer on the shipped configs.
MIN_COMPILE_SECONDS = 0.5


def default_dir() -> str:
  """$ESMJAX_COMPILE_CACHE ("" when it says off), else ~/.cache/esmjax/jax-compile."""
  env = os.environ.get(ENV)
  if env is not None:
    return "" if env.strip().lower() in OFF else env
  return os.path.join(os.path.expanduser("~"), ".cache", "esmjax", "jax-compile")


def enable(config) -> str | None:
  """Points JAX's persistent cache at the config's directory; returns it (None: off, or a
  directory JAX already had is kept). An unusable directory is a warning, never an error: the
  run compiles as without a cache."""
  import jax

  path = str(config.train.get("compile_cache_dir", ""))
  if path.strip().lower() in OFF:
    logging.info("compilation cache: off (train.compile_cache_dir='')")
    return None
  own = jax.config.jax_compilation_cache_dir
  if own:  # JAX reads its cache directory once: one set before (JAX_COMPILATION_CACHE_DIR) stays
    logging.info("compilation cache: %s (set for JAX before esmjax started)", own)
    return None
  path = os.path.abspath(os.path.expanduser(path))
  try:
    os.makedirs(path, exist_ok=True)
    if not os.access(path, os.W_OK):
      raise PermissionError(f"{path} is not writable")
  except OSError as e:
    logging.warning("compilation cache off: %s (set train.compile_cache_dir)", e)
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  logging.info("compilation cache: %s (train.compile_cache_dir; '' turns it off)", path)
  return path
