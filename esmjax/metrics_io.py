"""Where metrics go: JSON lines in the workdir (one object per line: step, split, values)."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping


def _plain(v: Any):
  try:
    f = float(v)
  except (TypeError, ValueError):
    return v
  return f if math.isfinite(f) else str(f)  # JSON has no NaN/Inf; keep them readable


class MetricWriter:
  """Appends `{"step", "split", "time", **values}` to `<workdir>/metrics.jsonl` (process 0 only)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = enabled
    if enabled:
      os.makedirs(workdir, exist_ok=True)

  def write(self, step: int, split: str, values: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    rec = {"step": int(step), "split": split, "time": time.time(), **{k: _plain(v) for k, v in values.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(rec) + "\n")

  def close(self) -> None:
    pass


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
