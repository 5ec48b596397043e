"""What the shipped configs (`configs/*.py`) share: their argument and the papers' schedule.

A config file's `get_config(arg)` receives what follows the colon of `--config=FILE:ARG`
(ml_collections), e.g. `configs/baselines/aman.py:rate=0.1,world=paper`. `parse_arg` reads it as
comma-separated `key=value` pairs (big_vision's `parse_arg`), each value cast to the type of the
key's default; a bare value (`configs/esmm.py:paper`) sets the first key. `model_config` is the
default config of a world with the papers' schedule, which every shipped config trains with.
"""

from __future__ import annotations

import ml_collections

from esmjax.config import defaults as config_lib

# The ESMM paper's mini-batch (1,000), one epoch: 977 steps over the 1 M synthetic impressions.
# Batches of 4,096 for 2 epochs (489 steps) leave every model less trained (ESMM's CVR AUC 0.725
# against 0.751 at 1,024); the throughput benchmarks keep 4,096, where the step is most efficient.
SCHEDULE = {"train.batch_size": 1024, "train.num_epochs": 1.0}


def _cast(key: str, value: str, default):
  if isinstance(default, bool):
    if value.lower() not in ("true", "false", "1", "0"):
      raise ValueError(f"config argument {key}={value!r}: give true or false")
    return value.lower() in ("true", "1")
  try:
    return type(default)(value)
  except ValueError:
    raise ValueError(f"config argument {key}={value!r}: not a {type(default).__name__}") from None


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """'rate=0.2,world=paper' -> {rate: 0.2, world: 'paper', ...the other defaults}; a bare value
  sets the first key. An unknown key or a value of the wrong type raises ValueError naming it."""
  out = dict(defaults)
  first = next(iter(defaults), None)
  for item in filter(None, (s.strip() for s in (arg or "").split(","))):
    key, sep, value = item.partition("=")
    if not sep:
      key, value = first, item
    if key not in defaults:
      raise ValueError(
        f"config argument {key!r} in {arg!r}: unknown; allowed: {', '.join(defaults)}"
      )
    out[key] = _cast(key, value, defaults[key])
  return ml_collections.ConfigDict(out)


def model_config(model: str, world: str = "default") -> ml_collections.ConfigDict:
  """The default config of `world` training `model` with the papers' schedule (`SCHEDULE`)."""
  config = config_lib.default_config(world)  # every key, with its one-line comment: defaults.py
  config.model.name = model
  for key, value in SCHEDULE.items():
    config_lib.set_path(config, key, value)
  return config
