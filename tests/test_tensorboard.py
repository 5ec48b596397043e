"""TensorBoard logging: event files per split, task-first tags, learning rates, read back from
disk."""

import glob
import json
import os
import struct

import pytest
import tiny
from tensorboardX.proto import event_pb2

from esmjax.evaluation import metrics_io
from esmjax.training import trainer


def read_events(logdir: str) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} of every scalar in the event files of `logdir`, oldest file first
  (TFRecord framing: u64 length, u32 crc, payload, u32 crc). As TensorBoard does, a SessionLog
  START at step T (tensorboardX's `purge_step`) drops the values at steps >= T read before it."""
  out: dict[str, dict[int, float]] = {}
  files = sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*")))
  assert files, f"no event file in {logdir}"
  for path in files:
    data = open(path, "rb").read()
    pos = 0
    while pos < len(data):
      (n,) = struct.unpack("<Q", data[pos : pos + 8])
      ev = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + n])
      pos += 12 + n + 4
      if ev.HasField("session_log") and ev.session_log.status == event_pb2.SessionLog.START:
        out = {t: {k: v for k, v in vals.items() if k < ev.step} for t, vals in out.items()}
      for v in ev.summary.value:
        out.setdefault(v.tag, {})[int(ev.step)] = float(v.simple_value)
  return out


def test_writer_tags_splits_and_learning_rates(tmp_path):
  cfg = tiny.tiny_config("esm2")
  w = metrics_io.MetricWriter(str(tmp_path), config=cfg)
  w.write(
    10, "train", {"loss": 0.5, "loss/ctr": 0.25, "loss/ctcvr": 0.125, "examples_per_sec": 1000.0}
  )
  w.write(
    20, "train", {"loss": 0.4, "loss/ctr": 0.2, "loss/ctcvr": 0.1, "examples_per_sec": 2000.0}
  )
  w.write(
    20,
    "eval",
    {
      "ctr/auc": 0.75,
      "cvr/entire_space_auc": 0.625,
      "n/clicks": 7,
      "model": "esm2",
      "ctavr/gauc": float("nan"),
    },
  )
  w.close()
  train = read_events(str(tmp_path / "tensorboard" / "train"))
  assert train["loss/total"] == {10: 0.5, 20: pytest.approx(0.4)}
  assert train["ctr/loss"] == {10: 0.25, 20: pytest.approx(0.2)}
  assert train["ctcvr/loss"][10] == 0.125
  assert train["perf/examples_per_sec"] == {10: 1000.0, 20: 2000.0}
  assert train["learning_rate/tower"][20] == pytest.approx(cfg.optimizer.learning_rate)
  assert train["learning_rate/embedding"][20] == pytest.approx(cfg.embedding.learning_rate)
  ev = read_events(str(tmp_path / "tensorboard" / "eval"))
  assert ev == {"ctr/auc": {20: 0.75}, "cvr/entire_space_auc": {20: 0.625}, "n/clicks": {20: 7.0}}
  # The JSON lines carry the same values, learning rates included, under their own names.
  recs = metrics_io.read_metrics(str(tmp_path))
  assert [r["split"] for r in recs] == ["train", "train", "eval"]
  assert (
    recs[1]["learning_rate/tower"] == cfg.optimizer.learning_rate and recs[2]["model"] == "esm2"
  )
  assert recs[2]["ctavr/gauc"] == "nan"  # kept in the JSON lines, left out of TensorBoard


def test_resumed_run_hides_the_events_it_repeats(tmp_path):
  w = metrics_io.MetricWriter(str(tmp_path))
  for step in range(1, 6):
    w.write(step, "train", {"loss": float(step)})
  w.close()
  w = metrics_io.MetricWriter(str(tmp_path))  # resumed from a checkpoint at step 3
  w.resume_at(3)
  for step in (4, 5, 6):
    w.write(step, "train", {"loss": 10.0 * step})
  w.close()
  assert read_events(str(tmp_path / "tensorboard" / "train"))["loss/total"] == {
    1: 1.0,
    2: 2.0,
    3: 3.0,
    4: 40.0,
    5: 50.0,
    6: 60.0,
  }


def test_disabled_writer_writes_nothing(tmp_path):
  w = metrics_io.MetricWriter(str(tmp_path / "wd"), enabled=False)
  w.write(1, "train", {"loss": 1.0})
  w.close()
  assert not (tmp_path / "wd").exists()


def test_tiny_training_logs_tensorboard(tmp_path):
  train_dir, eval_dir = str(tmp_path / "train"), str(tmp_path / "eval")
  tiny.tiny_dataset(train_dir, n=1024)
  tiny.tiny_dataset(eval_dir, n=256, seed=1)
  cfg = tiny.tiny_config(
    "esmm", **{"train.num_steps": 4, "train.eval_every": 2, "checkpoint.enabled": False}
  )
  cfg.data.train_dir, cfg.data.eval_dir = train_dir, eval_dir
  wd = str(tmp_path / "wd")
  summary = trainer.train_and_evaluate(cfg, wd)

  train = read_events(os.path.join(wd, "tensorboard", "train"))
  ev = read_events(os.path.join(wd, "tensorboard", "eval"))
  recs = metrics_io.read_metrics(wd)
  # Every JSON train record is in TensorBoard, with the same values.
  jtrain = {r["step"]: r for r in recs if r["split"] == "train"}
  assert sorted(train["loss/total"]) == sorted(jtrain) and 4 in jtrain
  names = {
    "loss": "loss/total",
    "loss/ctr": "ctr/loss",
    "loss/ctcvr": "ctcvr/loss",
    "examples_per_sec": "perf/examples_per_sec",
    "learning_rate/tower": "learning_rate/tower",
    "learning_rate/embedding": "learning_rate/embedding",
  }
  for step, r in jtrain.items():
    for key, tag in names.items():
      if not isinstance(r.get(key, "absent"), float):  # "nan", or no throughput yet at step 1
        assert step not in train.get(tag, {})
      else:
        assert train[tag][step] == pytest.approx(r[key], rel=1e-6), (tag, step)
  assert train["learning_rate/tower"][4] == pytest.approx(cfg.optimizer.learning_rate)
  assert train["learning_rate/embedding"][4] == pytest.approx(cfg.embedding.learning_rate)
  assert 4 in train["perf/examples_per_sec"]
  # Evaluation at step 2 and the final one at step 4, per task; the last equals the summary's.
  for key in ("ctr/auc", "cvr/auc", "ctcvr/auc", "ctr/logloss", "cvr/entire_space_auc"):
    assert sorted(ev[key]) == [2, 4], key
    assert ev[key][4] == pytest.approx(summary["metrics"][key], rel=1e-6)
  assert json.load(open(os.path.join(wd, "summary.json")))["steps"] == 4
