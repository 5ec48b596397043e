"""Two processes × 2 CPU devices (gloo on 127.0.0.1) train like one process × 4 devices.

Both runs see the same rows in every step: the pipeline gives process p the shuffled blocks
p, p+2, ... and each process fills its half-batch (32 rows) from one 32-row block (window 1),
while one process fills a 64-row batch from the same two blocks (window 2). Tables are row-sharded
over 4 devices in both, so the runs differ only in float summation order and process count (and
in steps per dispatch, which changes no number).
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tiny

from esmjax.training import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 10


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _overrides(tmp, window_blocks):
  return {
    "data.train_dir": str(tmp / "train"),
    "data.eval_dir": str(tmp / "eval"),
    "model.embed_dim": 4,
    "model.hidden": (8, 4),
    "train.batch_size": 64,
    "train.eval_batch_size": 128,
    "train.num_steps": STEPS,
    "train.log_every": 5,
    "checkpoint.enabled": False,
    "data.prefetch": 0,
    "data.window_blocks": window_blocks,
  }


def _flag(k, v):
  return f"--config.{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"


def _train_losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def _metrics_table(stdout: str) -> str:
  return stdout[stdout.index("task ") :]


def _start_two_processes(workdir, flags, port: int, env) -> list[subprocess.Popen]:
  """Processes 0 and 1 of one `esmjax.main` run on `workdir`, coordinated on `port`."""
  return [
    subprocess.Popen(
      [
        sys.executable,
        "-m",
        "esmjax.main",
        "--config=configs/esmm.py",
        f"--workdir={workdir}",
        *flags,
        f"--config.distributed.coordinator=127.0.0.1:{port}",
        "--config.distributed.num_processes=2",
        f"--config.distributed.process_id={i}",
      ],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]


def test_two_processes_match_one_process(tmp_path):
  tiny.tiny_dataset(str(tmp_path / "train"), n=2048, seed=0, block_rows=32)
  tiny.tiny_dataset(str(tmp_path / "eval"), n=512, seed=1, block_rows=64, start_id=10**6)
  port = _free_port()
  env = {
    **os.environ,
    "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    "JAX_PLATFORMS": "cpu",
  }
  # The two processes run 3 steps per dispatch (3 + 2 up to each log step), each stacking its
  # half-batches; the one-process reference runs single steps.
  two_processes = {**_overrides(tmp_path, 1), "train.steps_per_dispatch": 3}
  flags = [_flag(k, v) for k, v in two_processes.items()]
  procs = _start_two_processes(tmp_path / "two", flags, port, env)

  # Meanwhile, the reference in this process: 1 process, 4 of the 8 test devices.
  one_process = {**_overrides(tmp_path, 2), "mesh.num_devices": 4, "train.steps_per_dispatch": 1}
  cfg = tiny.repo_config("configs/esmm.py", **one_process)
  one = trainer.train_and_evaluate(cfg, str(tmp_path / "one"))

  outs = []
  for p in procs:
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    outs.append(out)
  with open(tmp_path / "two" / "summary.json") as f:
    two = json.load(f)
  assert two["num_processes"] == 2 and two["num_devices"] == 4 and one["num_devices"] == 4
  assert two["steps"] == one["steps"] == STEPS
  # Every process reports the same global metrics (AUCs over all processes' rows).
  assert _metrics_table(outs[0]) == _metrics_table(outs[1])
  # ... and they are the one-process run's, up to float summation order.
  assert two["metrics"].keys() == one["metrics"].keys()
  for k, v in one["metrics"].items():
    np.testing.assert_allclose(two["metrics"][k], v, rtol=1e-5, atol=1e-6, err_msg=k)
  l1, l2 = _train_losses(tmp_path / "one"), _train_losses(tmp_path / "two")
  assert sorted(l1) == sorted(l2) == [5, STEPS]
  np.testing.assert_allclose([l2[s] for s in sorted(l2)], [l1[s] for s in sorted(l1)], rtol=1e-5)


def test_distributed_settings_from_flags_or_env(monkeypatch):
  from esmjax.config import defaults as config_lib
  from esmjax.core import distributed

  cfg = config_lib.default_config()
  for k in distributed.ENV.values():
    monkeypatch.delenv(k, raising=False)
  assert distributed.settings(cfg) == ("", 1, 0)  # single process: nothing to initialise
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAX_PROCESS_ID", "3")
  assert distributed.settings(cfg) == ("10.0.0.1:1234", 4, 3)
  cfg.distributed.update(coordinator="127.0.0.1:5555", num_processes=2, process_id=1)  # flags win
  assert distributed.settings(cfg) == ("127.0.0.1:5555", 2, 1)
  cfg.distributed.process_id = 2
  with pytest.raises(config_lib.ConfigError, match=r"distributed.process_id=2 must be in \[0, 2\)"):
    distributed.settings(cfg)


def test_two_processes_match_one_process_with_rows_resident_on_the_devices(tmp_path):
  # data.input_mode='device': process p keeps its blocks p, p+2, ..., split over its 2 devices in
  # order. One process on 4 devices keeps the blocks in file order, so its reference reads the
  # same blocks reordered (even ones first): then every mesh device holds the same rows in both
  # runs, gathers them in the same order, and the runs agree up to float summation order.
  from esmjax.data.format import dataset as D

  tiny.tiny_dataset(str(tmp_path / "train"), n=2048, seed=0, block_rows=32)
  tiny.tiny_dataset(str(tmp_path / "eval"), n=512, seed=1, block_rows=64, start_id=10**6)
  src = D.BlockSource(D.open_dataset(str(tmp_path / "train")))
  order = list(range(0, len(src), 2)) + list(range(1, len(src), 2))
  D.write_dataset(
    str(tmp_path / "train-even-first"),
    tiny.tiny_schema(),
    [src.read(i) for i in order],
    block_rows=32,
    blocks_per_shard=3,
  )
  port = _free_port()
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  env["JAX_PLATFORMS"] = "cpu"
  two_processes = {**_overrides(tmp_path, 1), "data.input_mode": "device"}
  flags = [_flag(k, v) for k, v in two_processes.items()]
  procs = _start_two_processes(tmp_path / "two", flags, port, env)
  one_process = {
    **_overrides(tmp_path, 1),
    "data.input_mode": "device",
    "data.train_dir": str(tmp_path / "train-even-first"),
    "mesh.num_devices": 4,
  }
  one = trainer.train_and_evaluate(
    tiny.repo_config("configs/esmm.py", **one_process), str(tmp_path / "one")
  )
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    assert "resident rows: 2048 on 4 device(s) (512 each" in err
  with open(tmp_path / "two" / "summary.json") as f:
    two = json.load(f)
  assert two["num_processes"] == 2 and two["steps"] == one["steps"] == STEPS
  for k, v in one["metrics"].items():
    np.testing.assert_allclose(two["metrics"][k], v, rtol=1e-5, atol=1e-6, err_msg=k)
  l1, l2 = _train_losses(tmp_path / "one"), _train_losses(tmp_path / "two")
  assert sorted(l1) == sorted(l2) == [5, STEPS]
  np.testing.assert_allclose([l2[s] for s in sorted(l2)], [l1[s] for s in sorted(l1)], rtol=1e-5)
