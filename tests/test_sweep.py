"""benchmarks/sweep.py's grid and its worker processes: f32 and bf16 batches up to 65,536, one
process per (devices, dtype) group, the time budget shared between groups; and one real worker
run of two tiny points in one process (the sweep itself: `python benchmarks/sweep.py --quick`)."""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import harness  # noqa: E402
import sweep  # noqa: E402


def test_accelerator_grid_has_both_dtypes_to_65536_in_two_processes():
  pts = sweep.grid(quick=False, accel=True, device_count=1, base_rows=int(1e6), base_batch=4096)
  esmm = [p for p in pts if p["model"] == "esmm" and p["rows"] == int(1e6)]
  assert sorted(p["batch"] for p in esmm if p["dtype"] == "float32") == list(sweep.F32_BATCHES)
  assert sorted(p["batch"] for p in esmm if p["dtype"] == "bfloat16") == list(sweep.BF16_BATCHES)
  assert {(p["model"], p["dtype"]) for p in pts} == {
    (m, d) for m in ("esmm", "esm2") for d in ("float32", "bfloat16")
  }
  assert pts[0]["axis"] == "base" and len({sweep._key(p) for p in pts}) == len(pts)
  groups = sweep.groups_of(pts, list(range(len(pts))))
  assert list(groups) == [(1, "float32"), (1, "bfloat16")]  # one GPU: two processes
  assert groups[(1, "float32")][0] == 0  # the base point first
  # then the largest batches first in each dtype, so a time box covers them
  order = lambda d: [pts[i]["batch"] for i in groups[(1, d)] if pts[i]["axis"] == "batch"]  # noqa: E731
  assert order("float32")[:2] == [65536, 32768] and order("bfloat16")[:2] == [65536, 32768]


def test_points_run_grouped_with_the_budget_shared(monkeypatch):
  pts = sweep.grid(quick=True, accel=False, device_count=1, base_rows=int(1e5), base_batch=4096)
  calls = []

  def fake_worker(script, spec, env=None, timeout=0):
    calls.append((spec, env["XLA_FLAGS"]))
    return {"results": [{"skipped": "stub"} for _ in spec["points"]]}

  monkeypatch.setattr(harness, "run_worker", fake_worker)
  args = argparse.Namespace(
    isolate=False, budget_s=40.0, mem_fraction=1.0, warmup_s=0.1, windows=1, window_s=0.1,
    worker_timeout=5,
  )  # fmt: skip
  rows = sweep.run_points(pts, args, {"backend": "cpu"}, lambda s: None)
  assert len(calls) == 4  # (1, f32), (2, f32), (8, f32), (1, bf16): not one per point
  assert sum(len(spec["points"]) for spec, _ in calls) == len(pts) == 9
  assert all(len({p["dtype"] for p in spec["points"]}) == 1 for spec, _ in calls)
  assert "device_count=2" in calls[1][1] and all(r["skipped"] == "stub" for r in rows)
  # Each group's deadline is its share of what is left: the first (5 of 9 points) ~5/9 of 40 s.
  assert calls[0][0]["deadline"] - calls[-1][0]["deadline"] < 40


def test_one_worker_runs_several_points_each_compiled_once():
  spec = dict(
    kind="jax", model="esmm", rows=int(2e3), devices=1, warmup_s=0.0, windows=1, window_s=0.05,
    n_batches=2,
  )  # fmt: skip
  points = [dict(spec, dtype="float32", batch=64), dict(spec, dtype="bfloat16", batch=128)]
  out = sweep.many({"points": points, "deadline": float("inf")})["results"]
  assert [len(r["ex_per_s"]) for r in out] == [1, 1] and all(r["rss_cumulative"] for r in out)
  assert all(r["ex_per_s"][0] > 0 and r["final_loss"] > 0 for r in out)
