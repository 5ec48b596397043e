"""Runs that survive: exact resumption after SIGKILL and SIGTERM, and on another device count.

The interrupted runs are real command-line subprocesses (`tests/slow_cli.py`: `esmjax.main` with a
test hook that slows each dispatch), signalled while they train between the checkpoints at N and
2N; the reference run and the resumptions run in-process. "Exact" is bit for bit: the state
fingerprint (a hash of every array), the final eval metrics, and every logged train loss.
"""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tiny

from esmjax.checkpoints import checkpoint as ckpt_lib
from esmjax.core import feed as loop_data
from esmjax.data.format import dataset as D
from esmjax.data.pipeline import batches as pipeline
from esmjax.evaluation import metrics_io
from esmjax.training import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 100  # checkpoint.every_steps; runs go to 2N (4+ epochs of the tiny data)


def esmm_config(**overrides):
  """configs/esmm.py with `overrides` ({"train.batch_size": 64, ...}), as the CLI would build it."""
  return tiny.repo_config("configs/esmm.py", **overrides)


def tiny_overrides(data, **kw):
  o = {
    "data.train_dir": str(data / "train"),
    "data.eval_dir": str(data / "eval"),
    "model.embed_dim": 4,
    "model.hidden": (8, 4),
    "train.batch_size": 64,
    "train.eval_batch_size": 128,
    "train.num_steps": 2 * N,
    "train.log_every": 5,
    "checkpoint.every_steps": N,
    "mesh.num_devices": 8,
  }
  o.update(kw)
  return o


def tiny_schema():
  """tests/tiny.py's schema with 41 table rows: padded to 48 rows on 8 devices and to 42 on 2."""
  base = tiny.tiny_schema()
  return dataclasses.replace(base, sparse=(D.SparseField("user", 13),) + base.sparse[1:])


@pytest.fixture(scope="module", autouse=True)
def jit_cache(tmp_path_factory):
  """A persistent compilation cache for this module's runs, in-process and subprocesses alike: the
  same programs are compiled once, not once per run (that is most of this module's time)."""
  try:
    from jax._src import compilation_cache  # reset_cache is private: without it, just no cache

    reset = compilation_cache.reset_cache
  except (ImportError, AttributeError):
    yield None
    return
  path = str(tmp_path_factory.mktemp("jit-cache"))
  keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
  old = [getattr(jax.config, k) for k in keys]
  for k, v in zip(keys, (path, 0.0), strict=True):
    jax.config.update(k, v)
  reset()
  yield path
  for k, v in zip(keys, old, strict=True):
    jax.config.update(k, v)
  reset()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  schema = tiny_schema()
  for split, rows, seed in (("train", 3000, 0), ("eval", 500, 1)):
    D.write_dataset(
      str(root / split),
      schema,
      [tiny.random_block(schema, rows, seed, seed * 10**6)],
      block_rows=256,
      blocks_per_shard=3,
    )
  return root


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
  """Run A: 2N steps on 8 devices without interruption -> (summary, train losses, workdir)."""
  workdir = str(tmp_path_factory.mktemp("A"))
  summary = trainer.train_and_evaluate(esmm_config(**tiny_overrides(data)), workdir)
  return summary, _train_losses(workdir), workdir


def _train_losses(workdir):
  return [
    (r["step"], {k: v for k, v in r.items() if k.startswith("loss")})
    for r in metrics_io.read_metrics(workdir)
    if r["split"] == "train"
  ]


def _logged_step(workdir) -> int:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return max([json.loads(line)["step"] for line in f if line.endswith("}\n")] or [0])


def _saved_steps(workdir) -> list[int]:
  return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())


def _signal_while_training(workdir, overrides, sig, ready, name, jit_cache, step_delay_s=0.01):
  """Starts the CLI on 8 fake devices, slowed by a test hook (`tests/slow_cli.py`: a sleep of
  `step_delay_s` after each dispatch), and sends `sig` as soon as `ready()`.
  -> (exit code, output)."""
  env = tiny.cli_env(
    8,
    JAX_COMPILATION_CACHE_DIR=jit_cache or os.path.join(os.path.dirname(workdir), "jit-cache"),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0,
    ESMJAX_TEST_STEP_DELAY_S=step_delay_s,
  )
  flag = lambda v: ",".join(map(str, v)) if isinstance(v, tuple) else str(v)
  cmd = [
    sys.executable,
    os.path.join(REPO, "tests", "slow_cli.py"),
    "--config=configs/esmm.py",
    f"--workdir={workdir}",
    *(f"--config.{k}={flag(v)}" for k, v in overrides.items()),
  ]
  log = os.path.join(os.path.dirname(workdir), f"{name}.log")
  with open(log, "w") as out:
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
      deadline = time.time() + 300
      while proc.poll() is None and time.time() < deadline:
        if ready():
          proc.send_signal(sig)
          break
        time.sleep(0.005)
      proc.wait(timeout=120)
    finally:
      if proc.poll() is None:
        proc.kill()
  with open(log) as f:
    return proc.returncode, f.read()


@pytest.mark.parametrize("prefetch", [0, 3])
def test_data_position_counts_consumed_batches_not_prefetched_ones(data, prefetch):
  ds = D.open_dataset(str(data / "train"))
  cfg = pipeline.PipelineConfig(batch_size=100, seed=3, window_blocks=2, prefetch=prefetch)
  it = iter(pipeline.train_iter_dataset(ds, cfg))
  for _ in range(7):
    next(it)
  time.sleep(0.05)  # the prefetch thread runs ahead of what was consumed
  state = it.get_state()
  assert state == {"window": 1, "offset": 700 - 512}  # windows of 2 blocks x 256 rows
  rest = [next(it) for _ in range(40)]  # through window ends and into the second epoch
  again = iter(pipeline.train_iter_dataset(ds, cfg))
  again.set_state(state)
  for a in rest:
    b = next(again)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  loop_data.close_iter(it)
  loop_data.close_iter(again)


def test_sigterm_then_sigkill_then_resume_equals_the_straight_run(
  data, straight, tmp_path, jit_cache
):
  ref, ref_losses, _ = straight
  workdir = str(tmp_path / "B")
  ov = tiny_overrides(data)
  # 10 ms per step (a test hook): the signals land mid-run even when this process is scheduled late.
  # SIGTERM between checkpoints N and 2N: the step in flight finishes, is saved, and the exit is 0.
  code, out = _signal_while_training(
    workdir, ov, signal.SIGTERM, lambda: _logged_step(workdir) > N, "sigterm", jit_cache
  )
  assert code == 0, out[-3000:]
  line = [
    l for l in out.splitlines() if l.startswith("esmjax: SIGTERM received: stopped after step")
  ]
  assert line, out[-3000:]
  stopped = int(line[0].split("after step ")[1].split("/")[0])
  assert N < stopped < 2 * N and _saved_steps(workdir) == [N, stopped]
  # Resumed, then SIGKILL 10+ steps later: those steps are lost (no checkpoint after `stopped`).
  code, out = _signal_while_training(
    workdir, ov, signal.SIGKILL, lambda: _logged_step(workdir) >= stopped + 10, "sigkill", jit_cache
  )
  assert code == -signal.SIGKILL, out[-3000:]
  assert f"restored checkpoint step {stopped}" in out
  assert _saved_steps(workdir) == [N, stopped] and _logged_step(workdir) >= stopped + 10
  # Resumed again, to 2N: the same model, metrics and per-step losses as without interruption.
  summary = trainer.train_and_evaluate(esmm_config(**ov), workdir)
  assert summary["resumed_from_step"] == stopped and summary["steps"] == 2 * N
  assert summary["state_fingerprint"] == ref["state_fingerprint"]
  np.testing.assert_equal(summary["metrics"], ref["metrics"])  # NaN-aware, exact
  assert _train_losses(workdir) == ref_losses  # the data order too: nothing lost, nothing repeated


def test_resume_on_fewer_devices_restores_the_state_with_new_shardings(data, straight, tmp_path):
  workdir = str(tmp_path / "A")
  shutil.copytree(straight[2], workdir)  # saved on 8 devices at steps N and 2N
  ov = tiny_overrides(data)
  cfg8 = esmm_config(**ov)
  run8 = trainer.Run(cfg8, tiny_schema())
  ck8 = ckpt_lib.Checkpointer(workdir, cfg8, run8)
  saved = ck8.restore_latest()
  ck8.close()
  cfg2 = esmm_config(**{**ov, "mesh.num_devices": 2, "train.num_steps": 2 * N + 10})
  run2 = trainer.Run(cfg2, tiny_schema())
  assert (run8.components.layout.padded_rows, run2.components.layout.padded_rows) == (48, 42)
  ck2 = ckpt_lib.Checkpointer(workdir, cfg2, run2)
  it2 = loop_data.make_train_iter(cfg2, D.open_dataset(str(data / "train")))
  restored = ck2.restore_latest(it2)
  ck2.close()
  loop_data.close_iter(it2)
  assert ck2.restored_step == 2 * N and it2.get_state() == saved_iter_state(workdir, 2 * N)
  shardings2 = jax.tree_util.tree_leaves(run2.state_sharding)
  for (path, a), b, sharding in zip(
    jax.tree_util.tree_flatten_with_path(saved)[0],
    jax.tree_util.tree_leaves(restored),
    shardings2,
    strict=True,
  ):
    a, name = np.asarray(a), jax.tree_util.keystr(path)
    assert b.sharding == sharding and b.sharding.mesh.size == 2, name
    if b.shape != a.shape:  # a table row leaf: 48 -> 42 rows; rows past 41 are never addressed
      assert (a.shape[0], b.shape[0]) == (48, 42), name
    np.testing.assert_array_equal(np.asarray(b), a[: b.shape[0]] if b.ndim else a, err_msg=name)
  # ... and the run goes on, on 2 devices.
  summary = trainer.train_and_evaluate(cfg2, workdir)
  assert (summary["resumed_from_step"], summary["steps"], summary["num_devices"]) == (
    2 * N,
    2 * N + 10,
    2,
  )
  assert np.isfinite(summary["metrics"]["ctr/logloss"])


def saved_iter_state(workdir, step):
  with open(os.path.join(workdir, "checkpoints", str(step), "data", "process_0-of-1.json")) as f:
    return json.load(f)


def test_workdir_written_with_the_removed_test_hook_keys_resumes_exactly(data, tmp_path, caplog):
  # A workdir whose saved config carries train.inject_nan_at_step and train.step_delay_s (keys
  # default_config() does not have) resumes without a warning, to the uninterrupted run's state.
  ov = tiny_overrides(
    data, **{"train.num_steps": 10, "checkpoint.every_steps": 5, "train.log_every": 5}
  )
  old = esmm_config(**{**ov, "train.num_steps": 5})
  old.train.inject_nan_at_step, old.train.step_delay_s = -1, 0.0
  workdir = str(tmp_path / "old")
  trainer.train_and_evaluate(old, workdir)
  with open(os.path.join(workdir, "checkpoints", "5", "config", "metadata")) as f:
    assert json.load(f)["train"]["step_delay_s"] == 0.0
  with caplog.at_level("WARNING"):
    resumed = trainer.train_and_evaluate(esmm_config(**ov), workdir)
  assert resumed["resumed_from_step"] == 5 and "changed settings" not in caplog.text
  straight = trainer.train_and_evaluate(esmm_config(**ov), str(tmp_path / "straight"))
  assert resumed["state_fingerprint"] == straight["state_fingerprint"]
  import esmjax

  assert esmjax.load(workdir).step == 10


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_resume_is_bit_identical_in_either_model_dtype(data, tmp_path, dtype):
  """Stopped at a checkpoint and resumed, a run ends bit for bit where the straight run does, in
  f32 and in bf16 towers alike (the SIGKILL/SIGTERM tests above run the shipped `auto`, which is
  either, depending on the CPU)."""
  ov = tiny_overrides(
    data,
    **{
      "train.num_steps": 10,
      "checkpoint.every_steps": 5,
      "train.log_every": 5,
      "model.dtype": dtype,
    },
  )
  workdir = str(tmp_path / "stopped")
  trainer.train_and_evaluate(esmm_config(**{**ov, "train.num_steps": 5}), workdir)
  resumed = trainer.train_and_evaluate(esmm_config(**ov), workdir)
  straight = trainer.train_and_evaluate(esmm_config(**ov), str(tmp_path / "straight"))
  assert resumed["resumed_from_step"] == 5
  assert resumed["state_fingerprint"] == straight["state_fingerprint"]
  assert resumed["metrics"] == straight["metrics"]
  assert _train_losses(workdir)[-1] == _train_losses(str(tmp_path / "straight"))[-1]
