"""Dotted config keys ('train.batch_size'): the one walker of them, for the command lines'
override checks, the experiments' and benchmarks' overrides and the tests' configs.
`esmjax.config` re-exports all of it.
"""

from __future__ import annotations

import ml_collections


class ConfigError(ValueError):
  """A config value is invalid or contradicts another; the message names the key."""


def unknown_key(config: ml_collections.ConfigDict, dotted: str) -> str | None:
  """Why `dotted` (e.g. 'train.batch_size') is not a key of `config`, naming the keys that are;
  None when it is one."""
  node, path = config, dotted.split(".")
  for i, part in enumerate(path):
    if not hasattr(node, "keys") or part not in node:
      parent = ".".join(path[:i]) or "config"
      allowed = sorted(node.keys()) if hasattr(node, "keys") else []
      return f"unknown config key {'.'.join(path[: i + 1])!r}; keys of {parent}: {allowed}"
    node = node[part]
  return None


def get_path(config: ml_collections.ConfigDict, dotted: str):
  """config['a']['b'] for 'a.b'; ConfigError naming the key if it does not exist."""
  why = unknown_key(config, dotted)
  if why:
    raise ConfigError(why)
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def set_path(config: ml_collections.ConfigDict, dotted: str, value) -> None:
  """config['a']['b'] = value for 'a.b' (an existing key only: a typo must not add a new one)."""
  why = unknown_key(config, dotted)
  if why:
    raise ConfigError(why)
  *path, last = dotted.split(".")
  node = config
  for part in path:
    node = node[part]
  node[last] = value
