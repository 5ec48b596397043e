"""experiments.full_scale_probe at tiny sizes: each probe runs, checks what it compares and writes
its results."""

import json

from experiments import full_scale_probe


def test_csv_and_metrics_probes_write_their_tables(tmp_path):
  rec = full_scale_probe.main(["csv", "--rows=3000", "--reps=1", f"--out={tmp_path}"])
  assert set(rec["rows_per_s"]) == {
    "csv.writer loop",
    "prediction_files.write_csv",
    "prediction_files.write_parquet",
  }
  md = (tmp_path / "full_scale_probe_csv.md").read_text()
  assert "| prediction_files.write_csv |" in md and "Machine: " in md
  rec = full_scale_probe.main(["metrics", "--rows=4000", "--reps=1", f"--out={tmp_path}"])
  assert rec["max_metric_difference"] < 1e-12  # the two evaluate paths agree
  saved = json.loads((tmp_path / "full_scale_probe_metrics.json").read_text())
  assert saved["sizes"] == [2000, 4000] and "load_before" in saved
