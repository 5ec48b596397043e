"""Timing: warm-up, N windows of S seconds, the median; variants alternated window by window in
one process (`alternate`) or run after run across processes (`interleave`).

A rate is examples per second of one window; a result quotes the median of its windows and the
noise around it (`spread`). On a shared machine neighbours can only slow a window down, so the
best window bounds the rate with the machine to itself from below, and the ratio of two variants
timed in alternating windows cancels most of the load.

`clock` and `cpu_clock` are parameters so that the tests can time a fake step on a fake clock.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

Step = Callable[[int], Any]


def spread(values: Sequence[float]) -> dict[str, float]:
  """Median and the noise around it: min, max and the relative half-range (max−min)/2/median."""
  v = [float(x) for x in values if x == x]
  if not v:
    nan = float("nan")
    return {"median": nan, "min": nan, "max": nan, "rel_half_range": nan, "n": 0}
  med = statistics.median(v)
  return {
    "median": med,
    "min": min(v),
    "max": max(v),
    "rel_half_range": (max(v) - min(v)) / 2 / med if med else float("nan"),
    "n": len(v),
  }


def rate(r: dict[str, Any]) -> float:
  """One measurement's rate: a number as it is, windows by their median, NaN for an error."""
  if "error" in r:
    return float("nan")
  x = r["ex_per_s"]
  return spread(x)["median"] if isinstance(x, list) else float(x)


def pool(runs: Sequence[dict[str, Any]], keys: Sequence[str] = ("ex_per_s",)) -> dict[str, Any]:
  """The runs of one variant pooled: for each of `keys`, the spread of all their windows; the peak
  RSS (max), the first step (min, the compile), and the errors of the runs that failed (left out
  of the numbers)."""
  ok = [r for r in runs if "error" not in r]
  nan = float("nan")
  out: dict[str, Any] = {k: spread([x for r in ok for x in r.get(k, [])]) for k in keys}
  out["peak_rss_mb"] = max([r["peak_rss_mb"] for r in ok if "peak_rss_mb" in r] or [nan])
  out["first_step_s"] = min([r["first_step_s"] for r in ok if "first_step_s" in r] or [nan])
  out["errors"] = [r["error"] for r in runs if "error" in r]
  return out


def ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
  """a[k] / b[k] for each window pair k (a variant against its reference, timed alternately)."""
  return [x / y for x, y in zip(a, b, strict=False) if y]  # runs may log unequal windows


def _warm(step: Step, sync, warmup_s: float, window_s: float, clock, min_steps: int = 1):
  """First step (compile) timed apart, then `warmup_s` of steps: (first-step seconds, steps run,
  chunk = steps per sync, sized to ~1/4 of a window so that dispatch still overlaps host and
  device as in training)."""
  t0 = clock()
  step(0)
  sync()
  first = clock() - t0
  t0, n = clock(), 0
  while n < min_steps or clock() - t0 < warmup_s:
    step(n + 1)
    sync()
    n += 1
  chunk = int(max(1, min(16, window_s / 4 / max((clock() - t0) / n, 1e-6))))
  return first, n + 1, chunk


def _window(step, sync, start: int, chunk: int, window_s: float, min_steps: int, clock):
  """One timed window of ≥ window_s seconds and ≥ min_steps steps: (steps, seconds)."""
  n, t0 = 0, clock()
  while n < min_steps or clock() - t0 < window_s:
    for _ in range(chunk):
      step(start + n)
      n += 1
    sync()
  return n, clock() - t0


def timed_windows(
  step: Step,
  sync: Callable[[], Any],
  batch_size: int,
  *,
  warmup_s: float,
  windows: int,
  window_s: float,
  min_steps: int = 2,
  cpu_rates: list[float] | None = None,
  clock: Callable[[], float] = time.perf_counter,
  cpu_clock: Callable[[], float] = time.process_time,
) -> tuple[float, list[float], int]:
  """Runs `step(i)`; returns (first-step seconds incl. compile, examples/s per window, steps).

  `cpu_rates`, if given, receives examples per CPU-second of this process (all its threads) per
  window: on a shared, oversubscribed machine that measures the work a step costs, whatever share
  of the cores the scheduler gave it (spin-waiting still counts as work).
  """
  first, i, chunk = _warm(step, sync, warmup_s, window_s, clock)
  rates = []
  for _ in range(windows):
    c0 = cpu_clock()
    n, s = _window(step, sync, i, chunk, window_s, min_steps, clock)
    i += n
    rates.append(n * batch_size / s)
    if cpu_rates is not None:
      cpu_rates.append(n * batch_size / max(cpu_clock() - c0, 1e-9))
  return first, rates, i


def spec_windows(spec: dict, step, sync, cpu_rates: list[float] | None = None):
  """`timed_windows` at a worker spec's batch, warmup_s (default 2), windows (3) and window_s (3):
  one reading of these keys, so every framework's worker is timed alike."""
  return timed_windows(
    step,
    sync,
    spec["batch"],
    warmup_s=spec.get("warmup_s", 2.0),
    windows=spec.get("windows", 3),
    window_s=spec.get("window_s", 3.0),
    cpu_rates=cpu_rates,
  )


def alternate(
  fns: dict[str, tuple[Step, Callable[[], Any]]],
  batch_size: int,
  *,
  warmup_s: float,
  windows: int,
  window_s: float,
  clock: Callable[[], float] = time.perf_counter,
  cpu_clock: Callable[[], float] = time.process_time,
) -> dict[str, dict[str, Any]]:
  """Times each `fns[name] = (step(i), sync())` in alternating windows of ≥ window_s seconds.

  Returns {name: {"ex_per_s": [...], "ex_per_cpu_s": [...], "first_step_s": s, ...}}: window k
  of every name ran back to back, so their ratio sees (nearly) the same machine load.
  """
  out = {}
  for name, (step, sync) in fns.items():  # compile + warm up each
    first, _, chunk = _warm(step, sync, warmup_s, window_s, clock, min_steps=2)
    # "steps": the first step and the timed ones (the warm-up's are not counted).
    out[name] = {"first_step_s": first, "ex_per_s": [], "ex_per_cpu_s": [], "steps": 1}
    out[name]["chunk"] = chunk
  for _ in range(windows):
    for name, (step, sync) in fns.items():
      o = out[name]
      c0 = cpu_clock()
      n, s = _window(step, sync, o["steps"], o["chunk"], window_s, 2, clock)
      o["steps"] += n
      o["ex_per_s"].append(n * batch_size / s)
      o["ex_per_cpu_s"].append(n * batch_size / max(cpu_clock() - c0, 1e-9))
  return out


def interleave(*groups: Sequence[Any]) -> list[Any]:
  """One item of each group in turn (jax, torch, jax, torch, ...), the longer groups' rest last:
  the order variants run in within a round, so that the load falls on all alike."""
  out = []
  for i in range(max((len(g) for g in groups), default=0)):
    out += [g[i] for g in groups if i < len(g)]
  return out
