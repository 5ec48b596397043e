"""The entry point end to end: a 2-step run of each shipped config, predictions out, bad input
in."""

import csv
import json
import os

import pytest
import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(args, timeout=300):
  return tiny.run_cli(args, timeout=timeout)


@pytest.mark.parametrize("cfg", ["configs/esmm.py", "configs/esm2.py"])
def test_two_step_run_of_each_config_on_synthetic_data(cfg, tmp_path, capsys):
  wd = tmp_path / "wd"
  tiny.main_in_process([f"--config={cfg}", f"--workdir={wd}", *tiny.tiny_flags(tmp_path / "cache")])
  summary = json.loads((wd / "summary.json").read_text())
  assert summary["steps"] == 2
  m = summary["metrics"]
  for k in ("ctr/auc", "cvr/auc", "ctcvr/auc", "ctr/gauc", "cvr/entire_space_auc"):
    assert 0.0 <= m[k] <= 1.0, (k, m[k])
  assert ("ctavr/auc" in m) == (cfg.endswith("esm2.py"))
  out = capsys.readouterr().out
  assert "ctr" in out and "entire-space CVR AUC" in out  # the final metrics table
  lines = (wd / "metrics.jsonl").read_text().splitlines()
  assert {json.loads(l)["split"] for l in lines} >= {"train", "eval"}


def test_predict_writes_one_row_per_input_row_in_order(tmp_path):
  train = tiny.tiny_dataset(str(tmp_path / "train"), 1000)
  ev = tiny.tiny_dataset(str(tmp_path / "eval"), 700, seed=1, start_id=10_000)
  common = [
    "--config=configs/esm2.py",
    f"--workdir={tmp_path / 'wd'}",
    f"--config.data.train_dir={train.directory}",
    f"--config.data.eval_dir={ev.directory}",
    "--config.train.batch_size=64",
    "--config.train.eval_batch_size=128",
    "--config.model.hidden=(8,)",
    "--config.model.embed_dim=4",
  ]
  tiny.main_in_process(common + ["--config.train.num_steps=3"])
  out = tmp_path / "preds.csv"
  tiny.main_in_process(
    common + ["--mode=predict", f"--predict_input={ev.directory}", f"--predict_output={out}"]
  )
  rows = list(csv.reader(out.open()))
  assert rows[0] == ["sample_id", "pctr", "pcvr", "pctcvr", "pctavr"]
  assert [int(r[0]) for r in rows[1:]] == list(range(10_000, 10_700))
  for r_ in rows[1:]:
    p = [float(x) for x in r_[1:]]
    assert all(0.0 <= x <= 1.0 for x in p)
    assert abs(p[2] - p[0] * p[1]) < 1e-5  # pCTCVR = pCTR · pCVR


@pytest.mark.parametrize(
  "flag,expect",
  [
    ("--config.model.nmae=esmm", "unknown config key 'model.nmae'"),
    ("--config.model.name=esmx", "model.name='esmx' is not a model; allowed: ['esmm'"),
    (
      "--config.embedding.optimizer=adam",
      "embedding.optimizer='adam' is not a sparse optimizer; allowed",
    ),
    ("--config.model.activation=relu6", "model.activation='relu6' is not allowed; allowed"),
    (
      "--config.data.train_dir=/no/such/dir",
      "data.train_dir='/no/such/dir': directory does not exist",
    ),
    (
      "--config.train.batch_size=abc",
      "--config.train.batch_size='abc' is not a valid value: config key "
      "train.batch_size takes an int",
    ),
    (
      "--config.optimizer.learning_rate=-1e-4",
      "optimizer.learning_rate=-0.0001 is out of range; allowed: a finite number in (0, ∞)",
    ),
    (
      "--config.train.steps_per_dispatch=0",
      "train.steps_per_dispatch=0 is out of range; allowed: an integer in [1, ∞)",
    ),
    (
      "--config.train.eval_every=0",
      "train.eval_every=0 is out of range; allowed: an integer in [1, ∞), or -1 (at the end only)",
    ),
    ("--mode=serve", "flag --mode=serve: value should be one of"),
    (
      "--config.model.aman_rate=0.2",
      "model.aman_rate=0.2 is set, but model 'esmm' does not declare it; 'esmm' keys: "
      "['activation', 'dense_mode', 'dropout', 'dtype', 'embed_dim', 'fuse_towers', 'hidden', "
      "'name']",
    ),
  ],
)
def test_bad_config_names_the_key(flag, expect):
  r = _main(["--config=configs/esmm.py", flag], timeout=120)
  assert r.returncode == 2
  assert expect in r.stderr
  assert "Traceback" not in r.stderr
  assert r.stderr.count("\n") == 1 and r.stderr.startswith("esmjax: error: ")  # one line


@pytest.mark.parametrize(
  "config, expect",
  [
    (
      "configs/baselines/aman.py:rat=0.2",
      "ValueError: config argument 'rat' in 'rat=0.2': unknown; allowed: world, rate",
    ),
    (
      "configs/baselines/oversampling.py:k=five",
      "ValueError: config argument k='five': not a float",
    ),
  ],
)
def test_a_bad_config_argument_is_one_line(config, expect):
  r = _main([f"--config={config}"], timeout=120)
  assert r.returncode == 2, r.stderr[-2000:]
  assert r.stderr == f"esmjax: error: --config={config}: {expect}\n"


@pytest.mark.parametrize(
  "content, expect",
  [
    (None, "--config={path}: no such file"),
    ("def get_config(:\n", "--config={path}: invalid syntax (line 1: def get_config(:)"),
    (
      "def get_config():\n  return undefined_name\n",
      "--config={path}: NameError: name 'undefined_name' is not defined",
    ),
  ],
)
def test_missing_or_broken_config_file_is_one_line(tmp_path, content, expect):
  path = tmp_path / "cfg.py"
  if content is not None:
    path.write_text(content)
  r = _main([f"--config={path}"], timeout=120)
  assert r.returncode == 2, r.stderr[-2000:]
  assert r.stderr == "esmjax: error: " + expect.format(path=path) + "\n"
