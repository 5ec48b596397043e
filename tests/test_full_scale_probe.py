"""experiments.full_scale_probe at tiny sizes: each probe runs, checks what it compares and writes
its results."""

import json

import pytest

from experiments import full_scale_probe
from experiments import full_scale_stages as st


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


def test_train_probe_compares_the_trainer_with_its_step_on_a_converted_world(tmp_path):
  work = str(tmp_path / "w")
  st.generate(work, 0.0002, 0)  # 8,460 training and 8,600 test impressions, the raw layout
  for split in ("train", "test"):
    st.convert(work, split, buckets=1000)
  argv = ["train", f"--workdir={work}", "--models=esmm", "--steps=6", "--n_batches=2"]
  rec = full_scale_probe.main([*argv, "--seconds=0.4", "--reps=1", f"--out={tmp_path}"])
  r = rec["results"]["esmm"]
  for part in ("trainer", "step", "pipeline"):
    assert r["medians"][part] > 0, part
  assert rec["rows"] == 8460
  md = (tmp_path / "full_scale_probe_train.md").read_text()
  assert "| esmm |" in md and "trainer / step" in md


def test_train_probe_without_a_converted_workdir_is_one_line(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    full_scale_probe.main(["train", f"--workdir={tmp_path}", f"--out={tmp_path}"])
  err = capsys.readouterr().err
  assert e.value.code == 2 and "convert stages finished" in err and "manifest.json" in err
