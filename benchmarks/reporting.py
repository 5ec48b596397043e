"""How benchmarks and experiments report: provenance, Markdown tables, claim checks, results files
and config overrides. One module for `benchmarks/` and `experiments/` alike.

    import reporting
    record = {**reporting.provenance(), "rows": ...}      # command, time, machine, load, commit
    md = reporting.markdown_table(["variant", "ex/s"], [["jax", 103888.2]])
    reporting.finish(record, started)                     # load average after, elapsed seconds
    reporting.write_results(out_dir, "name", record, md)  # name.json + name.md (+ figures)

Light on purpose: importing it imports no JAX (a benchmark's parent process never does, so it never
holds an accelerator or fixes the CPU device count); `apply_overrides` imports esmjax.config when
called.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Provenance: when, where, what code, which command.


def now() -> str:
  """Local time with its zone, as results files print it."""
  return time.strftime("%Y-%m-%d %H:%M:%S %Z")


def utc_now() -> str:
  return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def usable_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def _lines(path: str) -> list[str]:
  try:
    with open(path) as f:
      return f.readlines()
  except OSError:  # not Linux
    return []


def cpu_model() -> str:
  for line in _lines("/proc/cpuinfo"):
    if line.startswith("model name"):
      return line.split(":", 1)[1].strip()
  return platform.processor() or platform.machine()


def mem_available_gb() -> float:
  for line in _lines("/proc/meminfo"):
    if line.startswith("MemAvailable:"):
      return int(line.split()[1]) / 2**20
  return float("nan")


def load_average() -> list[float]:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return []


def cpu_bf16_flags() -> list[str]:
  """Which of the CPU's bf16 matmul flags (avx512_bf16, amx_bf16) it has: they decide whether
  bf16 towers run faster than f32 (esmjax.models.model.auto_dtype)."""
  for line in _lines("/proc/cpuinfo"):
    if line.startswith("flags"):
      have = set(line.split(":", 1)[1].split())
      return [f for f in ("avx512_bf16", "amx_bf16") if f in have]
  return []


def tree_rss(proc) -> int:
  """The resident memory of a psutil.Process and all its children (bytes; 0 once it is gone),
  for peak-RSS sampling of a command that starts workers."""
  import psutil

  total = 0
  try:
    procs = [proc] + proc.children(recursive=True)
  except psutil.Error:
    return 0
  for p in procs:
    try:
      total += p.memory_info().rss
    except psutil.Error:
      pass
  return total


def machine() -> dict[str, Any]:
  return {
    "cpu": cpu_model(),
    "cpu_bf16_flags": cpu_bf16_flags(),
    "cores": usable_cores(),
    "mem_available_gb": mem_available_gb(),
  }


def git(root: Path | str, *args: str) -> str:
  """stdout of a read-only git command in `root` ('' when git or the repository is missing)."""
  try:
    return subprocess.run(
      ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=False
    ).stdout.rstrip()
  except (OSError, subprocess.SubprocessError):
    return ""


def code_version(root: Path | str = REPO) -> dict[str, Any]:
  """The commit measured, and which library files differed from it."""
  dirty = [line[3:] for line in git(root, "status", "--porcelain", "--", "esmjax").splitlines()]
  return {
    "commit": git(root, "rev-parse", "--short", "HEAD").strip() or "unknown",
    "esmjax_uncommitted": dirty,
  }


def code_line(record: Mapping[str, Any]) -> str:
  """'esmjax at commit abc1234[ with uncommitted changes to ...]. ' ('' if not recorded)."""
  c = record.get("code")
  if not c:
    return ""
  dirty = c.get("esmjax_uncommitted") or []
  return (
    f"esmjax at commit {c['commit']}"
    + (f" with uncommitted changes to {', '.join(dirty)}" if dirty else "")
    + ". "
  )


def command_line(argv: Sequence[str] | None = None, script: str | None = None) -> str:
  """The command that reruns this process, relative to the repository: `python -m experiments.x
  ...` for an experiment (they run as modules), `python benchmarks/x.py ...` for a script."""
  args = list(sys.argv[1:] if argv is None else argv)
  path = Path(os.path.abspath(script or sys.argv[0]))
  try:
    rel = path.relative_to(REPO)
  except ValueError:  # not a file of this checkout (pytest, a notebook): as it was started
    return " ".join(["python", str(script or sys.argv[0]), *args])
  if rel.parts[0] == "experiments":
    head = ["python", "-m", ".".join(rel.with_suffix("").parts)]
  else:
    head = ["python", rel.as_posix()]
  return " ".join(head + args)


def provenance(command: str | None = None, root: Path | str = REPO) -> dict[str, Any]:
  """What every results file records about how it was made (the load average before the run:
  `finish` adds the one after)."""
  return {
    "when": now(),
    "written_utc": utc_now(),
    "command": command or command_line(),
    "machine": machine(),
    "code": code_version(root),
    "load_before": load_average(),
  }


def finish(record: dict[str, Any], started: float) -> dict[str, Any]:
  """Adds the load average after the run and the elapsed seconds since `started` (time.time())."""
  record["load_after"] = load_average()
  record["elapsed_s"] = time.time() - started
  return record


# ---------------------------------------------------------------------------------------------
# Markdown.


def format_cell(x: Any) -> str:
  """A table cell: floats rounded for reading (thousands separators from 100 on, 3 significant
  digits below, '–' for NaN); everything else as str()."""
  if isinstance(x, float):
    if math.isnan(x):
      return "–"
    if abs(x) >= 100:
      return f"{x:,.0f}"
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"
  return str(x)


def _escape_pipes(text: str) -> str:
  """A '|' inside a cell ('CVR | click') would start a new column: escaped as '\\|'."""
  return re.sub(r"(?<!\\)\|", r"\\|", text)


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
  lines = [
    "| " + " | ".join(_escape_pipes(str(h)) for h in header) + " |",
    "|" + "|".join("---" for _ in header) + "|",
  ]
  lines += ["| " + " | ".join(_escape_pipes(format_cell(x)) for x in r) + " |" for r in rows]
  return "\n".join(lines)


def fmt_rate(x: float) -> str:
  """examples/s as '12.3 k' ('–' for NaN)."""
  return "–" if math.isnan(x) else f"{x / 1e3:,.1f} k"


def check(claim: str, holds: bool, detail: str) -> dict[str, Any]:
  """A claim or target checked against the numbers: {claim, holds, detail}."""
  return {"claim": claim, "holds": bool(holds), "detail": detail}


def checks_markdown(
  checks: Sequence[Mapping[str, Any]], words: tuple[str, str] = ("holds", "does NOT hold")
) -> str:
  """One bullet per check; `words` = (what a kept claim is called, what a broken one is called)."""
  return "\n".join(
    f"- **{words[0] if c['holds'] else words[1]}** — {c['claim']}: {c['detail']}" for c in checks
  )


# ---------------------------------------------------------------------------------------------
# Results files.


def _json_default(o: Any):
  """NumPy scalars and arrays as Python numbers and lists; anything else JSON lacks as str()."""
  if hasattr(o, "tolist") and hasattr(o, "dtype"):
    return o.tolist()
  if isinstance(o, (set, frozenset)):
    return sorted(o)
  return str(o)


def write_json(path: Path | str, data: Any) -> None:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(data, indent=1, default=_json_default) + "\n")
  os.replace(tmp, path)


def write_results(
  out_dir: Path | str,
  name: str,
  record: Mapping[str, Any],
  markdown: str,
  *,
  figures: Mapping[str, Callable[[Path], None]] | None = None,
  header: str = "",
) -> list[Path]:
  """<out_dir>/<name>.json and <name>.md (`header`, then `markdown`), and one PNG per figure:
  figures[''] draws <name>.png, figures['x'] draws <name>_x.png. Returns the paths written."""
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths = []
  for fig, draw in (figures or {}).items():
    p = out / (f"{name}_{fig}.png" if fig else f"{name}.png")
    draw(p)
    paths.append(p)
  md = out / f"{name}.md"
  md.write_text(header + markdown)
  js = out / f"{name}.json"
  write_json(js, record)
  return paths + [md, js]


# ---------------------------------------------------------------------------------------------
# Config overrides ({"train.batch_size": 1024, ...}).


def apply_overrides(config, overrides: Mapping[str, Any]):
  """Sets each dotted key of `overrides` in `config` (existing keys only: a typo raises
  esmjax.config.defaults.ConfigError naming the key and the keys there are). Returns `config`."""
  from esmjax.config import defaults as config_lib

  for key, value in overrides.items():
    config_lib.set_path(config, key, value)
  return config


def override_flags(overrides: Mapping[str, Any]) -> list[str]:
  """The same overrides as `python -m esmjax.main` flags: ['--config.train.batch_size=1024', ...]
  (the CLI checks the keys and exits 2 naming an unknown one)."""

  def text(v):
    if isinstance(v, (list, tuple)):
      return "(" + ",".join(text(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return str(v)

  return [f"--config.{k}={text(v)}" for k, v in overrides.items()]
