"""benchmarks/accelerator_summary.py: the accelerator check's one summary, from hand-made stage
results: the headline numbers, the targets judged (missing numbers never met), every stage."""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import accelerator_summary as summ  # noqa: E402


def _point(dtype, batch, rate, model="esmm", devices=1):
  return dict(model=model, dtype=dtype, batch=batch, devices=devices, rate={"median": rate})


def test_summary_of_a_full_check(tmp_path):
  stages = "tests\tok\t61s\ttests.log\nsweep\ttimed out\t130s\tsweep.log\n"
  (tmp_path / "stages.tsv").write_text(stages)
  (tmp_path / "tests.log").write_text("....\n========= 45 passed in 60.2s =========\n")
  sweep = {
    "probe": {"backend": "gpu", "device_count": 1, "device_kind": "NVIDIA H200", "jax": "0.11.2"},
    "points": [
      _point("float32", 4096, 14.2e6),
      _point("float32", 32768, 35.1e6),
      _point("bfloat16", 65536, 61.0e6),
      _point("bfloat16", 65536, 99e6, model="esm2"),  # not ESMM: not the headline
      {"model": "esmm", "dtype": "bfloat16", "batch": 1024, "devices": 1, "skipped": "budget"},
    ],
  }
  (tmp_path / "sweep.json").write_text(json.dumps(sweep))
  up = {"ratios": {"e2e": {"esmm@1024": {"new": 1.2e6, "e2e_over_step": 0.5}}}}
  (tmp_path / "user_path.json").write_text(json.dumps(up))
  modes = {
    "rates": {
      "esmm/1024/step": [2.0e6, 2.4e6, 2.2e6],
      "esmm/1024/device": [1.7e6, 1.9e6, 1.8e6],
      "esmm/1024/stream": [0.4e6],
      "esmm/16384/device": [12e6, 11e6],
    },
    "auto": {"esmm/1024": "device", "esmm/16384": "device"},
  }
  (tmp_path / "input_modes.json").write_text(json.dumps(modes))
  feed = {"results": {"1024": {"rows_per_s": 40e6}, "65536": {"rows_per_s": 90e6}}}
  (tmp_path / "resident_feed.json").write_text(json.dumps(feed))
  (tmp_path / "sweep.md").write_text("# esmjax sweep\n")
  assert summ.main([str(tmp_path)]) == 0
  md = (tmp_path / "accelerator_check.md").read_text()
  assert "Backend **gpu** (1 × NVIDIA H200); jax 0.11.2" in md
  assert "PyTorch reference): 45 passed in 60.2s" in md
  assert "f32 best 35.10 M ex/s at batch 32,768; bf16 best 61.00 M ex/s at batch 65,536" in md
  assert "| sweep step at its best batch in bf16 ≥ 50 M ex/s | 61.00 M ex/s | **met** |" in md
  assert (
    "| ESMM end to end at batch 1,024 ≥ 80 % of the step alone (user_path) | 50 % | **not met** |"
    in md
  )
  # medians of the mode 'auto' picks against the step's: 1.8 / 2.2
  assert "batch 1,024 ≥ 80 % of the step alone (input_modes) | 82 % | **met** |" in md
  assert "batch 16,384 ≥ 10 M ex/s (input_modes) | 12.00 M ex/s | **met** |" in md
  assert "≥ 100 M rows/s (resident_feed) | 90.0 M rows/s | **not met** |" in md
  assert "best 90.0 M rows/s at batch 65,536" in md
  assert "| sweep | timed out | 130s | sweep.log |" in md and "# esmjax sweep" in md
  assert "Evaluation metrics sorted on the device: not measured" in md


def test_nothing_measured_is_never_met(tmp_path):
  (tmp_path / "tests.log").write_text("....\n")  # killed before pytest's summary line
  assert summ.main([str(tmp_path)]) == 0
  md = (tmp_path / "accelerator_check.md").read_text()
  assert "no pytest summary (timed out or crashed: see tests.log)" in md
  assert md.count("not judged (not measured)") == 5 and "**met**" not in md
  assert summ.main([str(tmp_path / "absent")]) == 2
