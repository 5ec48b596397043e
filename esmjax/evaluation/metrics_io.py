"""Where metrics go: JSON lines and TensorBoard event files in the workdir (process 0 only).

  <workdir>/metrics.jsonl                 one object per line: {"step", "split", "time", **values}
  <workdir>/tensorboard/<split>/events.*  the same scalars, one TensorBoard run per split

`tensorboard --logdir <workdir>/tensorboard` overlays the splits (train, eval) as runs. Tags are
task-first (`ctr/auc`, `ctr/loss`, `cvr/entire_space_auc`, …) so TensorBoard groups each task's
train loss and evaluation metrics on one card; the run-level scalars are `loss/total`,
`perf/examples_per_sec` and `learning_rate/{tower,embedding}`. The event files are written by
tensorboardX (a maintained writer), imported by the first enabled writer (workers and tools that
only read metrics never import it).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

from absl import logging

TB_DIR = "tensorboard"
METRICS_FILE = "metrics.jsonl"


def _plain(v: Any):
  try:
    f = float(v)
  except (TypeError, ValueError):
    return v
  return f if math.isfinite(f) else str(f)  # JSON has no NaN/Inf; keep them readable


def learning_rates(config) -> dict[str, float]:
  """The learning rates a train record carries: the towers' (optax) and the tables' (row-wise).

  Both are constant in the config today; a schedule would be evaluated here, per step.
  """
  if config is None:
    return {}
  return {
    "learning_rate/tower": float(config.optimizer.learning_rate),
    "learning_rate/embedding": float(config.embedding.learning_rate),
  }


def tb_tag(key: str) -> str:
  """A metric name of the JSON lines -> its TensorBoard tag (task first: tasks group together)."""
  if key == "loss":
    return "loss/total"
  if key.startswith("loss/"):
    return f"{key[5:]}/loss"
  if key == "examples_per_sec":
    return "perf/examples_per_sec"
  return key


class MetricWriter:
  """Appends `{"step", "split", "time", **values}` to `<workdir>/metrics.jsonl` and writes the
  finite numeric values as TensorBoard scalars under `<workdir>/tensorboard/<split>/`.

  Only process 0 writes (`enabled=False` elsewhere). Train records also get the learning rates of
  `config`. Event files are flushed after every `write` (writes are every `train.log_every` steps,
  so this is cheap and a crashed or interrupted run still shows in TensorBoard) and on `close`.
  """

  def __init__(self, workdir: str, enabled: bool = True, config=None, tensorboard: bool = True):
    self.workdir = workdir
    self.path = os.path.join(workdir, METRICS_FILE)
    self.enabled = enabled
    self.tensorboard = tensorboard
    self._lrs = learning_rates(config)
    self._tb: dict[str, Any] = {}  # split -> tensorboardX.SummaryWriter, created on first use
    self._purge_step: int | None = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      if tensorboard:  # ~1 s of imports (protobuf): here, not inside the first timed log step
        import tensorboardX  # noqa: F401

  def resume_at(self, step: int) -> None:
    """The run starts from a checkpoint at `step` (0: from scratch): records after it are dropped
    from the JSON lines (and lines torn by a kill), and TensorBoard hides this workdir's events
    after it; the run writes them again, so nothing is repeated or lost."""
    self._purge_step = int(step) + 1 if step else None
    if self.enabled:
      _drop_records_after(self.path, int(step))

  def write(self, step: int, split: str, values: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    values = {**values, **self._lrs} if split == "train" else dict(values)
    rec = {
      "step": int(step),
      "split": split,
      "time": time.time(),
      **{k: _plain(v) for k, v in values.items()},
    }
    line = json.dumps(rec) + "\n"
    try:
      with open(self.path, "a") as f:
        f.write(line)
    except OSError as e:  # disk full, read-only: one line naming the file (esmjax.core.outputs)
      from esmjax.core import outputs

      raise outputs.error(self.path, "metrics", e) from None
    if self.tensorboard:
      self._write_tb(int(step), split, values, rec["time"])

  def _write_tb(self, step: int, split: str, values: Mapping[str, Any], walltime: float) -> None:
    w = self._tb.get(split)
    if w is None:
      from tensorboardX import SummaryWriter

      # tensorboardX names files by the second: the suffix keeps a writer reopened within the same
      # second (a quick resume) from overwriting the previous file, and sorts it after it.
      w = self._tb[split] = SummaryWriter(
        os.path.join(self.workdir, TB_DIR, split),
        purge_step=self._purge_step,
        filename_suffix=f".{time.time_ns()}",
      )
    for k, v in values.items():
      try:
        f = float(v)
      except (TypeError, ValueError):
        continue  # strings (e.g. a model name) are not scalars
      if not math.isfinite(f):
        continue  # an undefined metric (AUC of one class): in the JSON lines as "nan", not plotted
      w.add_scalar(tb_tag(k), f, step, walltime=walltime)
    w.flush()

  def close(self) -> None:
    for w in self._tb.values():
      w.close()
    self._tb = {}

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _drop_records_after(path: str, last_step: int) -> None:
  if not os.path.exists(path):
    return
  keep, dropped = [], 0
  with open(path) as f:
    for line in f:
      try:
        rec = json.loads(line)
      except ValueError:
        dropped += 1
        continue
      if int(rec.get("step", 0)) <= last_step:
        keep.append(line if line.endswith("\n") else line + "\n")
      else:
        dropped += 1
  if dropped:
    with open(path + ".tmp", "w") as f:
      f.writelines(keep)
    os.replace(path + ".tmp", path)
    (logging.info if last_step else logging.warning)(
      "dropped %d metric record(s) after step %d from %s (%s)",
      dropped,
      last_step,
      path,
      "they are produced again"
      if last_step
      else "an earlier run without a checkpoint to resume from",
    )


def metrics_table(metrics: Mapping[str, float]) -> str:
  """Evaluation metrics as a small aligned table, one row per task (what a finished run prints)."""
  tasks = [t for t in ("ctr", "cvr", "ctcvr", "ctavr") if f"{t}/auc" in metrics]
  cols = ("auc", "gauc", "logloss", "calibration")
  lines = [f"{'task':<8}" + "".join(f"{c:>13}" for c in cols)]
  for t in tasks:
    values = (metrics.get(f"{t}/{c}", float("nan")) for c in cols)
    lines.append(f"{t:<8}" + "".join(f"{v:>13.4f}" for v in values))
  if "cvr/entire_space_auc" in metrics:
    lines.append(
      f"entire-space CVR AUC (pCVR vs would-buy, all impressions): "
      f"{metrics['cvr/entire_space_auc']:.4f}"
    )
  return "\n".join(lines)


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
