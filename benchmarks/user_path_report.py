"""benchmarks/user_path.py's numbers: medians over rounds, ratios, targets and the Markdown report.

Measurements arrive as runs[kind][point][system] = [one result dict per round], kind in e2e, step,
pipeline; point '<model>@<batch>' (pipeline: 'pipeline@<batch>'); system 'new', 'baseline',
'torch-<variant>' (pipeline: 'pipeline'). A result holds ex_per_s (e2e: one rate; step and
pipeline: the rates of timed windows) or an error.
"""

from __future__ import annotations

import math

import common
import reporting

TARGET_BATCH = 1024  # the shipped configs' batch: the end-to-end targets are judged there
VS_TORCH = 1.5  # e2e at TARGET_BATCH, new / best PyTorch, every model
VS_BASELINE = {"esm2": 2.0, "esmm": 1.5}  # e2e at TARGET_BATCH, new / baseline
PIPELINE_OVER_STEP = 5.0  # pipeline alone / the faster model's step, every batch size
NAN = float("nan")


def error_line(error: str) -> str:
  """A failed measurement in one line: its exit status and the last line of its traceback."""
  lines = [line.strip() for line in error.splitlines() if line.strip()]
  if len(lines) < 2:
    return error[:300]
  return f"{error.split(':', 1)[0]}: {lines[-1]}"[:300]


def run_rate(r: dict) -> float:
  """One measurement's rate: e2e reports one; step and pipeline, the median of their windows."""
  if "error" in r:
    return NAN
  x = r["ex_per_s"]
  return common.spread(x)["median"] if isinstance(x, list) else float(x)


def summarise(runs: dict) -> dict:
  """The same keys as `runs`, each with the median over rounds, the range and the errors."""
  out: dict = {}
  for kind, points in runs.items():
    for point, systems in points.items():
      for system, rs in systems.items():
        s = common.spread([run_rate(r) for r in rs])
        s["first_step_s"] = min([r["first_step_s"] for r in rs if "first_step_s" in r] or [NAN])
        s["errors"] = [error_line(r["error"]) for r in rs if "error" in r]
        out.setdefault(kind, {}).setdefault(point, {})[system] = s
  return out


def best_torch(systems: dict) -> tuple[str | None, float]:
  """(the fastest PyTorch variant by median, its median)."""
  tor = {s: v["median"] for s, v in systems.items() if s.startswith("torch-") and v["n"]}
  if not tor:
    return None, NAN
  best = max(tor, key=tor.get)
  return best, tor[best]


def ratios(summary: dict) -> dict:
  """Per kind and point: new / best PyTorch, new / baseline; e2e also new e2e / new step."""
  out: dict = {}
  for kind in ("e2e", "step"):
    for point, systems in summary.get(kind, {}).items():
      new = systems.get("new", {}).get("median", NAN)
      bt, bt_rate = best_torch(systems)
      base = systems.get("baseline", {}).get("median", NAN)
      out.setdefault(kind, {})[point] = {
        "new": new,
        "best_torch": bt,
        "best_torch_ex_per_s": bt_rate,
        "baseline": base,
        "vs_torch": new / bt_rate,
        "vs_baseline": new / base,
      }
  for point, r in out.get("e2e", {}).items():
    r["e2e_over_step"] = r["new"] / out.get("step", {}).get(point, {}).get("new", NAN)
  return out


def fastest_step(rat: dict, models, batch: int) -> tuple[str, float]:
  """(model, rate) of this checkout's faster step at `batch`: what the pipeline must feed."""
  steps = {m: rat.get("step", {}).get(f"{m}@{batch}", {}).get("new", NAN) for m in models}
  m = max(steps, key=lambda k: -1 if math.isnan(steps[k]) else steps[k])
  return m, steps[m]


def targets(summary: dict, rat: dict, models, batches) -> list[dict]:
  """The run's targets, judged on the medians (a missing number fails its target)."""

  def ok(x, bound):
    return not math.isnan(x) and x >= bound

  fr = reporting.fmt_rate
  out = []
  for m in models:
    r = rat.get("e2e", {}).get(f"{m}@{TARGET_BATCH}")
    if r is None:
      continue
    at = f"{m.upper()} end to end at batch {TARGET_BATCH:,}"
    out.append(
      reporting.check(
        f"{at} ≥ {VS_TORCH:g}× the best PyTorch",
        ok(r["vs_torch"], VS_TORCH),
        f"{r['vs_torch']:.2f}× ({fr(r['new'])} vs {fr(r['best_torch_ex_per_s'])} ex/s, "
        f"{r['best_torch']})",
      )
    )
    if m in VS_BASELINE and not math.isnan(r["baseline"]):
      out.append(
        reporting.check(
          f"{at} ≥ {VS_BASELINE[m]:g}× the baseline",
          ok(r["vs_baseline"], VS_BASELINE[m]),
          f"{r['vs_baseline']:.2f}× ({fr(r['new'])} vs {fr(r['baseline'])} ex/s)",
        )
      )
  for b in batches:
    pipe = summary.get("pipeline", {}).get(f"pipeline@{b}", {}).get("pipeline", {})
    pipe = pipe.get("median", NAN)
    m, need = fastest_step(rat, models, b)
    out.append(
      reporting.check(
        f"pipeline ≥ {PIPELINE_OVER_STEP:g}× the step at batch {b:,}",
        ok(pipe / need, PIPELINE_OVER_STEP),
        f"{pipe / need:.1f}× ({fr(pipe)} vs {fr(need)} ex/s, {m.upper()}'s step)",
      )
    )
  return out


def failures(summary: dict) -> list[str]:
  return [
    f"{kind} {point} {system}: {e}"
    for kind, pts in summary.items()
    for point, ss in pts.items()
    for system, v in ss.items()
    for e in v["errors"]
  ]


def _cell(summary: dict, kind: str, point: str, system: str | None) -> str:
  v = summary.get(kind, {}).get(point, {}).get(system or "")
  if not v or not v["n"]:
    return "–"
  rng = f" ({v['min'] / 1e3:,.1f}–{v['max'] / 1e3:,.1f})" if v["n"] > 1 else ""
  return reporting.fmt_rate(v["median"]) + rng


def _header(res: dict) -> list[str]:
  a, base = res["args"], res.get("baseline") or {}
  if base.get("skipped"):
    baseline = f"No baseline: `{base['ref']}` {base['skipped']}. "
  else:
    baseline = f"Baseline: `{base['ref']}` = commit {base['commit']}. " if base else "No baseline. "
  return [
    f"# What users run: esmjax end to end against PyTorch and its baseline ({res['when']})",
    "",
    f"Machine: {res['machine']['cpu']}, {res['machine']['cores']} usable cores; torch "
    f"{res.get('torch_version', '?')} ({a['torch_threads']} threads). Load average before/after: "
    f"{res['load_before']} / {res['load_after']} (1, 5, 15 min).",
    "",
    reporting.code_line(res) + baseline + f"{a['rounds']} round(s); end-to-end runs of "
    f"{a['examples']:,} examples (steps = examples / batch). Command: `{res['command']}`",
    "",
  ]


def markdown(res: dict) -> str:
  s, rat, models = res["summary"], res["ratios"], res["args"]["models"]
  L = _header(res)
  for kind, title in (
    ("e2e", "End to end: dataset on disk → grain → step → logging"),
    ("step", "The step alone, on pre-made batches"),
  ):
    rows = []
    for point, r in rat.get(kind, {}).items():
      m, b = point.split("@")
      variant = (r["best_torch"] or "")[len("torch-") :]
      rows.append(
        [
          m.upper(),
          f"{int(b):,}",
          _cell(s, kind, point, "new"),
          _cell(s, kind, point, "baseline"),
          f"{_cell(s, kind, point, r['best_torch'])} {variant}",
          f"{r['vs_torch']:.2f}×",
          f"{r['vs_baseline']:.2f}×",
        ]
        + ([f"{100 * r['e2e_over_step']:.0f} %"] if kind == "e2e" else [])
      )
    header = [
      "model",
      "batch",
      "esmjax (this checkout)",
      "esmjax (baseline)",
      "best PyTorch (variant)",
      "× PyTorch",
      "× baseline",
    ]
    header += ["e2e / step (esmjax)"] if kind == "e2e" else []
    L += [
      f"## {title} (examples/s: median over rounds, range)",
      "",
      reporting.markdown_table(header, rows),
      "",
    ]
  rows = []
  for point, systems in s.get("e2e", {}).items():
    m, b = point.split("@")
    for system in sorted(x for x in systems if x.startswith("torch-")):
      errors = systems[system]["errors"] + s.get("step", {}).get(point, {}).get(system, {}).get(
        "errors", []
      )
      rows.append(
        [
          m.upper(),
          f"{int(b):,}",
          system[len("torch-") :],
          _cell(s, "e2e", point, system),
          _cell(s, "step", point, system),
          systems[system]["first_step_s"],
          "; ".join(errors),
        ]
      )
  L += [
    "## Every PyTorch variant",
    "",
    reporting.markdown_table(
      ["model", "batch", "variant", "e2e ex/s", "step ex/s", "first step s (compile)", "errors"],
      rows,
    ),
    "",
  ]
  rows = []
  for point, v in s.get("pipeline", {}).items():
    b = int(point.split("@")[1])
    _, need = fastest_step(rat, models, b)
    rows.append(
      [
        f"{b:,}",
        _cell(s, "pipeline", point, "pipeline"),
        reporting.fmt_rate(need),
        f"{v['pipeline']['median'] / need:.1f}×",
      ]
    )
  L += [
    "## The input pipeline alone (this checkout)",
    "",
    reporting.markdown_table(
      ["batch", "pipeline ex/s", "esmjax step ex/s (faster model)", "pipeline / step"], rows
    ),
    "",
  ]
  L += ["## Targets", "", reporting.checks_markdown(res["targets"], ("met", "not met")), ""]
  if failures(s):
    L += ["## Failed measurements", "", *[f"- {e}" for e in failures(s)], ""]
  L += [
    "## How to read this",
    "",
    "- Every number is a median over rounds of one fresh process per measurement; ranges are "
    "the rounds' min–max. Ratios divide medians measured in this same run, interleaved, so the "
    "machine's load fell on all.",
    "- End to end = examples over the training wall time without the compiling first step "
    "(esmjax: examples over training time, compilation left out, from summary.json; "
    "PyTorch: the same), evaluation and checkpointing excluded. PyTorch reads the same batches "
    "through esmjax's grain pipeline and logs through esmjax's metric writer.",
    "- The step alone cycles the first pre-made batches on the device; e2e / step is what the "
    "pipeline and logging leave of it.",
    f"- Regenerate: `{res['command']}`; re-render: `python benchmarks/user_path.py --render_only`.",
  ]
  return "\n".join(L) + "\n"
