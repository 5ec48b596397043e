"""Training curves of a run as one PNG, from its `metrics.jsonl`.

  python -m esmjax.plot WORKDIR [--out FILE.png]     # default: WORKDIR/curves.png

Four panels over steps: train losses (total and per task), evaluation AUC per task (with the
entire-space CVR AUC of synthetic data, dashed), evaluation log-loss per task, and examples/s.
A run evaluated only at the end shows its evaluation as single points.
"""

from __future__ import annotations

import argparse
import os
import sys

from esmjax.evaluation import metrics_io

TASKS = ("ctr", "cvr", "ctcvr", "ctavr")
COLORS = {
  "ctr": "tab:blue",
  "cvr": "tab:orange",
  "ctcvr": "tab:green",
  "ctavr": "tab:red",
  "total": "black",
}


def _series(records, split: str, key: str) -> tuple[list[int], list[float]]:
  """(steps, values) of `key` in `split`; where a resumed run logged a step twice, the last wins."""
  by_step = {}
  for r in records:
    if r.get("split") == split and key in r:
      try:
        by_step[int(r["step"])] = float(r[key])  # "nan" strings come back as NaN
      except (TypeError, ValueError):
        continue
  steps = sorted(by_step)
  return steps, [by_step[s] for s in steps]


def _line(ax, steps, values, label, color, style="-", marker="o"):
  if steps:
    ax.plot(
      steps,
      values,
      style,
      label=label,
      color=color,
      marker=marker if len(steps) < 12 else None,
      markersize=5,
    )


def plot(workdir: str, out: str | None = None) -> str:
  """Draws the curves of `workdir` into `out` (default WORKDIR/curves.png); returns the path."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  records = metrics_io.read_metrics(workdir)
  if not records:
    raise FileNotFoundError(
      f"no metrics in {os.path.join(workdir, metrics_io.METRICS_FILE)}: "
      "not a workdir, or the run has not logged yet"
    )
  out = out or os.path.join(workdir, "curves.png")
  fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
  ax_loss, ax_auc, ax_ll, ax_tp = axes.ravel()

  _line(ax_loss, *_series(records, "train", "loss"), "total", COLORS["total"])
  for t in TASKS:
    _line(ax_loss, *_series(records, "train", f"loss/{t}"), t, COLORS[t])
  ax_loss.set_title("train loss")

  for t in TASKS:
    label = t + (" (clicked rows)" if t == "cvr" else "")
    _line(ax_auc, *_series(records, "eval", f"{t}/auc"), label, COLORS[t])
  _line(
    ax_auc,
    *_series(records, "eval", "cvr/entire_space_auc"),
    "cvr (entire space)",
    COLORS["cvr"],
    "--",
    "s",
  )
  ax_auc.set_title("eval AUC")

  for t in TASKS:
    _line(ax_ll, *_series(records, "eval", f"{t}/logloss"), t, COLORS[t])
  ax_ll.set_title("eval log-loss")

  _line(ax_tp, *_series(records, "train", "examples_per_sec"), "examples/s", COLORS["total"])
  ax_tp.set_title("throughput (examples/s)")

  last = max(int(r["step"]) for r in records)
  for ax in axes.ravel():
    ax.set_xlim(0, last * 1.04 + 1)  # a final-only evaluation sits at the end of the train axis
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
    else:
      ax.text(
        0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray"
      )
  fig.suptitle(f"{os.path.basename(os.path.abspath(workdir))}", fontsize=11)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out, dpi=90)
  plt.close(fig)
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m esmjax.plot", description=__doc__.splitlines()[0])
  p.add_argument("workdir", help="run directory (holds metrics.jsonl)")
  p.add_argument("--out", default=None, help="PNG to write (default: WORKDIR/curves.png)")
  args = p.parse_args(argv)
  try:
    path = plot(args.workdir, args.out)
  except FileNotFoundError as e:
    print(f"esmjax.plot: error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
