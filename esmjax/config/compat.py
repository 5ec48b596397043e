"""Compatibility keys: every config key that configs saved by earlier versions of esmjax (in a
workdir's `summary.json` or checkpoint) may lack, and what its absence means.

A key added to the default config after runs were saved is read through `get`, so a saved config
without it behaves as every run before the key existed did; docs/checkpoints.md lists them. The
models sit below the config package: `models.model` reads an absent `model.fuse_towers` as
`ABSENT_MEANS` says, and `tests/test_configs.py` checks the two agree.
"""

from __future__ import annotations

import ml_collections

from esmjax.common.config_keys import ConfigError, get_path

# key -> the value every run had before the key existed
ABSENT_MEANS = {
  "embedding.sharding": "auto",
  "model.fuse_towers": True,
  "checkpoint.best_metric": "",
  # Runs saved before the key existed trained in f32; the default `auto` would score or resume
  # them in bf16 on a CPU with bf16 units.
  "model.dtype": "float32",
  "checkpoint.max_time_share": 0.0,  # a save at every checkpoint.every_steps
}
# Test hooks that configs saved in older workdirs carry; they never changed a result, so a resume
# ignores them (checkpoints.checkpoint.RESUME_FREE_KEYS).
OLD_TEST_HOOKS = ("train.inject_nan_at_step", "train.step_delay_s")


def get(config: ml_collections.ConfigDict, key: str):
  """`config`'s value of the compatibility key `key`, or what its absence means."""
  try:
    return get_path(config, key)
  except ConfigError:
    return ABSENT_MEANS[key]
