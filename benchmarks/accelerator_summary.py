r"""The one summary of an accelerator check: what ran, the headline numbers against the targets of
issue 24, and every stage's own results after them.

    python benchmarks/accelerator_summary.py OUT_DIR   # run by accelerator_check.sh at its end

Reads OUT_DIR/stages.tsv (name, status, seconds, log: one line per stage, written by the check),
tests.log, and the JSON results the stages wrote (input_modes, resident_feed, sweep, eval_metrics,
user_path, compare_torch, roofline); writes OUT_DIR/accelerator_check.md. A number a stage did
not produce reads 'not measured' and its target 'not judged', never met.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

NAN = float("nan")
BF16_STEP_TARGET = 50e6  # the sweep's step at its best batch in bf16, ex/s
E2E_OVER_STEP_TARGET = 0.80  # ESMM end to end at batch 1,024 / the step alone
MAIN_JOB_LARGE_TARGET = 10e6  # ESMM main job end to end at batch 16,384, ex/s
FEED_TARGET = 100e6  # the device-resident feed alone, rows/s
STAGE_RESULTS = (
  "input_modes",
  "resident_feed",
  "sweep",
  "eval_metrics",
  "user_path",
  "compare_torch",
  "startup",
  "roofline",
)


def _json(out: Path, name: str) -> dict:
  try:
    return json.loads((out / f"{name}.json").read_text())
  except (OSError, ValueError):
    return {}


def _rate(x: float) -> str:
  return "not measured" if x != x else f"{x / 1e6:,.2f} M ex/s"


def stages(out: Path) -> list[list[str]]:
  try:
    lines = (out / "stages.tsv").read_text().splitlines()
  except OSError:
    return []
  return [line.split("\t") for line in lines if line.strip()]


def tests_line(out: Path) -> str:
  """pytest's last summary line ('41 passed in 80.1s'), or why there is none."""
  try:
    text = (out / "tests.log").read_text()
  except OSError:
    return "not run"
  found = re.findall(r"^=*\s*(\d+ (?:passed|failed|error).*?)\s*=*$", text, re.M)
  return found[-1] if found else "no pytest summary (timed out or crashed: see tests.log)"


def sweep_best(sweep: dict) -> dict[str, tuple[float, int]]:
  """{dtype: (best ex/s, its batch)} over the sweep's one-device ESMM points."""
  best: dict[str, tuple[float, int]] = {}
  for p in sweep.get("points", []):
    if "rate" not in p or p.get("model") != "esmm" or p.get("devices") != 1:
      continue
    r = p["rate"]["median"]
    if r > best.get(p["dtype"], (-1.0, 0))[0]:
      best[p["dtype"]] = (r, p["batch"])
  return best


def main_job(modes: dict, batch: int) -> tuple[float, float, str]:
  """(end to end ex/s in the mode 'auto' picks, the step alone, that mode) for ESMM at `batch`,
  medians over input_modes' rounds; NaN where it did not run."""
  rates = modes.get("rates", {})
  mode = modes.get("auto", {}).get(f"esmm/{batch}", "")

  def med(kind: str) -> float:
    v = sorted(rates.get(f"esmm/{batch}/{kind}", []))
    return v[len(v) // 2] if v else NAN

  return med(mode) if mode else NAN, med("step"), mode or "?"


def feed_best(feed: dict) -> tuple[float, int]:
  """(best rows/s, its batch) of the resident feed alone."""
  best = (NAN, 0)
  for batch, r in feed.get("results", {}).items():
    if not best[0] >= r.get("rows_per_s", NAN):
      best = (r["rows_per_s"], int(batch))
  return best


def verdict(value: float, bound: float) -> str:
  if value != value:
    return "not judged (not measured)"
  return "**met**" if value >= bound else "**not met**"


def markdown(out: Path) -> str:
  sweep, evalm, up = _json(out, "sweep"), _json(out, "eval_metrics"), _json(out, "user_path")
  best = sweep_best(sweep)
  f32, f32_b = best.get("float32", (NAN, 0))
  bf16, bf16_b = best.get("bfloat16", (NAN, 0))
  e2e = up.get("ratios", {}).get("e2e", {}).get("esmm@1024", {})
  ratio = e2e.get("e2e_over_step", NAN)
  probe = sweep.get("probe", {})
  modes = _json(out, "input_modes")
  small, small_step, small_mode = main_job(modes, 1024)
  large, _, large_mode = main_job(modes, 16384)
  small_ratio = small / small_step
  feed, feed_b = feed_best(_json(out, "resident_feed"))
  L = [
    "# esmjax accelerator check",
    "",
    f"Backend **{probe.get('backend', evalm.get('backend', '?'))}** "
    f"({probe.get('device_count', '?')} × {probe.get('device_kind', evalm.get('device', '?'))}); "
    f"jax {probe.get('jax', '?')}. Output folder: `{out}`.",
    "",
    "## Headline",
    "",
    f"- GPU tests (engine, model math, device metrics, PyTorch reference): {tests_line(out)}",
    f"- Train step alone (sweep, ESMM, one device): f32 best {_rate(f32)}"
    + (f" at batch {f32_b:,}" if f32 == f32 else "")
    + f"; bf16 best {_rate(bf16)}"
    + (f" at batch {bf16_b:,}" if bf16 == bf16 else ""),
    f"- ESMM main job end to end (input_modes, 'auto' mode): batch 1,024 {_rate(small)} "
    f"({small_mode}; "
    + (
      "step not measured"
      if small_ratio != small_ratio
      else f"{100 * small_ratio:.0f} % of the step"
    )
    + f"), batch 16,384 {_rate(large)} ({large_mode})",
    f"- Device-resident feed alone: best {feed / 1e6:,.1f} M rows/s"
    + (f" at batch {feed_b:,}" if feed == feed else "")
    if feed == feed
    else "- Device-resident feed alone: not measured",
    "- End to end / step alone, ESMM at batch 1,024 (user_path): "
    + ("not measured" if ratio != ratio else f"{100 * ratio:.0f} %")
    + (
      f" ({_rate(e2e.get('new', NAN))} end to end)" if e2e.get("new", NAN) == e2e.get("new") else ""
    ),
  ]
  if evalm.get("device_s"):
    dev = sorted(evalm["device_s"])[len(evalm["device_s"]) // 2]
    L.append(
      f"- Evaluation metrics sorted on the device: {evalm['args']['rows']:,} rows in {dev:.2f} s "
      f"(first call with compilation {evalm['device_first_s']:.1f} s); host peak RSS "
      f"{evalm.get('peak_rss_mb', NAN):,.0f} MB"
    )
  else:
    L.append("- Evaluation metrics sorted on the device: not measured")
  L += [
    "",
    "## Targets (issue 24) judged here",
    "",
    "| target | measured | verdict |",
    "|---|---|---|",
    f"| sweep step at its best batch in bf16 ≥ 50 M ex/s | {_rate(bf16)} | "
    f"{verdict(bf16, BF16_STEP_TARGET)} |",
    "| ESMM main job end to end at batch 1,024 ≥ 80 % of the step alone (input_modes) | "
    + ("not measured" if small_ratio != small_ratio else f"{100 * small_ratio:.0f} %")
    + f" | {verdict(small_ratio, E2E_OVER_STEP_TARGET)} |",
    f"| ESMM main job end to end at batch 16,384 ≥ 10 M ex/s (input_modes) | {_rate(large)} | "
    f"{verdict(large, MAIN_JOB_LARGE_TARGET)} |",
    "| device-resident feed alone ≥ 100 M rows/s (resident_feed) | "
    + ("not measured" if feed != feed else f"{feed / 1e6:,.1f} M rows/s")
    + f" | {verdict(feed, FEED_TARGET)} |",
    "| ESMM end to end at batch 1,024 ≥ 80 % of the step alone (user_path) | "
    + ("not measured" if ratio != ratio else f"{100 * ratio:.0f} %")
    + f" | {verdict(ratio, E2E_OVER_STEP_TARGET)} |",
    "",
    "## Stages",
    "",
    "| stage | status | time | log |",
    "|---|---|---|---|",
    *[f"| {' | '.join(s)} |" for s in stages(out)],
  ]
  for name in STAGE_RESULTS:
    md = out / f"{name}.md"
    if md.is_file():
      L += ["", "---", "", md.read_text().rstrip()]
  return "\n".join(L) + "\n"


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 1 or not Path(argv[0]).is_dir():
    print("usage: python benchmarks/accelerator_summary.py OUT_DIR (an existing folder)")
    return 2
  out = Path(argv[0])
  (out / "accelerator_check.md").write_text(markdown(out))
  print(f"wrote {out / 'accelerator_check.md'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
