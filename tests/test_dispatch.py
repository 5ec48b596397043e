"""Several steps per dispatch (`train.steps_per_dispatch`) and the run's training rate.

k steps per dispatch must be k single steps, bit for bit: the same state fingerprint, the same
logged losses and evaluations, and a run preempted mid-way with k > 1 resumes to the same state.
"""

import json
import math
import os
import signal

import pytest
import tiny
from test_checkpoint import jit_cache  # noqa: F401  (autouse: one compilation per program)

from esmjax.evaluation import metrics_io
from esmjax.training import trainer
from esmjax.training.dispatch import Plan
from esmjax.training.hooks import Hooks
from esmjax.training.train_log import RateMeter


def run_config(data, **overrides):
  base = {
    "train.num_steps": 24,
    "train.log_every": 6,
    "train.eval_every": 12,
    "checkpoint.every_steps": 12,
    "train.steps_per_dispatch": 1,
  }
  return tiny.run_config(data, **{**base, **overrides})


def records(workdir, split):
  """{step: values} of metrics.jsonl's `split` records, without the timing-dependent rate."""
  return {
    r["step"]: {k: v for k, v in r.items() if k not in ("time", "examples_per_sec")}
    for r in metrics_io.read_metrics(workdir)
    if r["split"] == split
  }


def lengths(plan, start=0):
  out, step = [], start
  while step < plan.total:
    out.append(plan.next_length(step))
    step += out[-1]
  return out


# -- the plan: dispatches never cross a boundary --------------------------------------------------


def test_plan_ends_a_dispatch_on_every_boundary():
  plan = Plan(4, total=10, every=(5,))
  assert lengths(plan) == [4, 1, 4, 1]
  assert lengths(plan, start=3) == [2, 4, 1]  # a resumed run from step 3
  assert lengths(Plan(8, total=100, every=(50, 1000))) == [8] * 6 + [2] + [8] * 6 + [2]
  shipped = lengths(Plan(8, total=977, every=(50, 1000)))  # configs/esm2.py's run
  assert shipped[:7] == [8] * 6 + [2] and shipped[-4:] == [8, 8, 8, 3]
  assert len(shipped) == 19 * 7 + 4
  assert lengths(Plan(5, total=20, every=(10, 5))) == [5] * 4  # every boundary a multiple of k
  assert lengths(Plan(3, total=2, every=(50,))) == [2]
  assert lengths(Plan(1, total=7, every=(3,))) == [1] * 7


# -- equality with single steps -------------------------------------------------------------------


@pytest.fixture(scope="module")
def single(data, tmp_path_factory):
  """The reference: 24 steps, one per dispatch -> (summary, workdir)."""
  workdir = str(tmp_path_factory.mktemp("k1"))
  return trainer.train_and_evaluate(run_config(data), workdir), workdir


@pytest.mark.parametrize("k", [4, 5])
def test_k_steps_per_dispatch_equal_k_single_steps(data, single, tmp_path, k):
  # Log steps 6, 12, ..., evaluations and checkpoints at 12 and 24: k=4 runs dispatches of 4 + 2
  # steps, k=5 of 5 + 1. Both: the same steps, the same order, the same numbers.
  ref, ref_dir = single
  cfg = run_config(data, **{"train.steps_per_dispatch": k})
  summary = trainer.train_and_evaluate(cfg, str(tmp_path))
  assert summary["steps_per_dispatch"] == k and summary["steps"] == 24
  assert summary["state_fingerprint"] == ref["state_fingerprint"]
  assert records(str(tmp_path), "train") == records(ref_dir, "train")  # every logged loss, exactly
  assert sorted(records(str(tmp_path), "train")) == [6, 12, 18, 24]
  assert records(str(tmp_path), "eval") == records(ref_dir, "eval")
  assert summary["metrics"] == ref["metrics"]


def test_preempted_mid_way_with_k_steps_resumes_to_the_same_state(data, single, tmp_path):
  ref, ref_dir = single
  workdir = str(tmp_path)
  cfg = run_config(data, **{"train.steps_per_dispatch": 4})

  def preempt(step):  # a real SIGTERM to this process after the dispatch that ends at step 16
    if step == 16:
      os.kill(os.getpid(), signal.SIGTERM)

  stopped = trainer.train_and_evaluate(cfg, workdir, hooks=Hooks(after_dispatch=preempt))
  assert stopped["preempted"] == "SIGTERM" and stopped["steps"] == 16  # 12 + one dispatch of 4
  assert not os.path.exists(os.path.join(workdir, "summary.json"))  # not finished: no summary
  resumed = trainer.train_and_evaluate(cfg, workdir)
  assert resumed["resumed_from_step"] == 16
  assert resumed["state_fingerprint"] == ref["state_fingerprint"]
  assert records(workdir, "train") == records(ref_dir, "train")
  assert resumed["metrics"] == ref["metrics"]


# -- the run's rate -------------------------------------------------------------------------------


def test_rate_meter_counts_the_whole_run_without_pauses():
  times = iter([0.0, 1.0, 1.5, 3.5, 4.0, 6.0])  # start, window, pause, resume, window, window
  meter = RateMeter(batch_size=8, clock=lambda: next(times))
  meter.start()
  meter.add_steps(10)
  assert meter.window() == 80.0  # 10 steps x 8 in 1 s
  with meter.paused():  # 1.5 .. 3.5: an evaluation, left out
    pass
  meter.add_steps(10)
  assert meter.window() == 80.0  # 10 steps in 1 s of training (1.0 .. 1.5, 3.5 .. 4.0)
  meter.add_steps(1)
  assert meter.window() == 4.0  # a short last window: 1 step in 2 s
  assert meter.summary() == {
    "examples_per_sec": 168 / 4.0,
    "examples_per_sec_peak_window": 80.0,
    "examples_per_sec_median_window": 80.0,
    "train_seconds": 4.0,
    "log_windows": 3,
  }


def test_summary_rate_is_the_runs_not_the_last_windows(data, tmp_path):
  # 7 steps logged every 3: windows of 3, 3 and 1 steps; the last window is short.
  cfg = run_config(
    data,
    **{
      "train.num_steps": 7,
      "train.log_every": 3,
      "train.eval_every": 3,
      "checkpoint.every_steps": 100,
      "train.steps_per_dispatch": 2,
    },
  )
  summary = trainer.train_and_evaluate(cfg, str(tmp_path))
  windows = [
    r["examples_per_sec"] for r in metrics_io.read_metrics(str(tmp_path)) if r["split"] == "train"
  ]
  assert len(windows) == 3 == summary["log_windows"]
  assert summary["examples_per_sec"] == pytest.approx(7 * 64 / summary["train_seconds"], rel=1e-12)
  assert summary["examples_per_sec_peak_window"] == max(windows)
  assert summary["examples_per_sec_median_window"] == sorted(windows)[1]
  # Evaluations (at 3 and 6, and the final one) and compilation are outside the training time.
  assert summary["eval_seconds"] > 0 and summary["compile_seconds"] > 0
  outside = summary["eval_seconds"] + summary["compile_seconds"]
  assert summary["train_seconds"] + outside < summary["wall_seconds"]
  with open(os.path.join(str(tmp_path), "summary.json")) as f:
    written = json.load(f)
  assert written["examples_per_sec"] == summary["examples_per_sec"]
  assert math.isfinite(written["examples_per_sec"])
