"""The one result record every benchmark writes, and the one writer of results files.

    rec = harness.Record("throughput", opts)   # command, time, machine, code, load before, options
    rec["points"] = [...]                       # the measurements (medians, their spread)
    rec["checks"] = [harness.check(...)]        # the targets judged against them
    rec.write(markdown)                         # load after, elapsed; <out_dir>/<name>.{json,md}

A record is a dict (its JSON keys are the results file's), so a benchmark adds the sections it
measures under its own keys; `Record` fills the keys every results file shares. Markdown tables,
claim checks and config overrides (`apply_overrides`) live here too, for benchmarks and
experiments alike.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .env import REPO, finish, provenance

RESULTS = REPO / "benchmarks" / "results"


class Record(dict):
  """What every benchmark writes: its name, command, time, machine (CPU model and bf16 flags,
  cores, memory, GPUs), code version and load average before (`env.provenance`), its options
  under "args", then whatever it measured; `write` adds the load after and the elapsed seconds and
  writes <out_dir>/<name>.json and .md."""

  def __init__(self, name: str, options: Any = None, command: str | None = None, **fields):
    super().__init__(provenance(command))
    self.name = name
    self.started = time.time()
    self.out_dir = Path(getattr(options, "out_dir", RESULTS))
    if options is not None:
      self["args"] = vars(options)  # the options as the benchmark left them
    self.update(fields)

  def finish(self) -> Record:
    """The load average after the run and the elapsed seconds (before rendering the report)."""
    finish(self, self.started)
    return self

  def write(
    self,
    markdown: str | None,
    figures: Mapping[str, Callable[[Path], None]] | None = None,
    out_dir: Path | str | None = None,
  ) -> list[Path]:
    """<out_dir>/<name>.json and .md (markdown None: the JSON alone; + figures: `write_results`);
    finishes the record first unless `finish` was called."""
    if "load_after" not in self:
      self.finish()
    return write_results(out_dir or self.out_dir, self.name, self, markdown, figures=figures)


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


def error_line(error: str) -> str:
  """A failed measurement in one line: its exit status and the last line of its traceback."""
  lines = [line.strip() for line in error.splitlines() if line.strip()]
  if len(lines) < 2:
    return error[:300]
  return f"{error.split(':', 1)[0]}: {lines[-1]}"[:300]


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
  markdown: str | None,
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
  if markdown is not None:  # None: the JSON alone
    paths.append(out / f"{name}.md")
    paths[-1].write_text(header + markdown)
  js = out / f"{name}.json"
  write_json(js, record)
  return paths + [js]


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
