"""Small file utilities of the data package: atomic JSON writes and JSON reads."""

from __future__ import annotations

import json
import os
from typing import Any


def write_json_atomic(path: str, obj: Any, *, indent: int | None = None) -> None:
  """Writes `path` through a `.tmp` file renamed into place: readers see the old or the new file,
  never half of one."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=indent)
  os.replace(tmp, path)


def read_json(path: str) -> Any:
  """The JSON content of `path`, or None if there is no such file."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)
