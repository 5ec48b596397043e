"""The device-resident input mode (`data.input_mode`, esmjax/training/resident.py, input_mode.py).

The order: each epoch a keyed permutation of every device's rows, a pure function of (seed, epoch,
device); every resident row read exactly once per epoch; the rows are the stream's rows (the
same leading train_fraction of the blocks) but for the fewer-than-the-devices left over. The run:
k steps per dispatch equal k single steps, and an interrupted run resumes to the uninterrupted
run's state in both modes. The choice: 'auto' by size and by what measured faster, overridable.
"""

import os
import signal

import jax
import numpy as np
import pytest
import tiny
from test_checkpoint import jit_cache  # noqa: F401  (autouse: one compilation per program)

from esmjax.checkpoints import checkpoint as ckpt_lib
from esmjax.config import defaults as config_lib
from esmjax.core import sharding as sh
from esmjax.core.run import Run
from esmjax.data.format import dataset as ds_lib
from esmjax.data.pipeline import batches as pipeline
from esmjax.training import input_mode, resident, trainer
from esmjax.training.hooks import Hooks

# -- the permutation ------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 2, 7, 100, 4097])
def test_each_epoch_order_is_a_permutation_of_the_rows(m):
  order = resident.epoch_order(seed=0, epoch=0, device=0, m=m)
  assert order.dtype == np.int32
  np.testing.assert_array_equal(np.sort(order), np.arange(m))


def test_the_order_is_a_pure_function_of_seed_epoch_and_device():
  base = resident.epoch_order(0, 3, 1, 500)
  np.testing.assert_array_equal(resident.epoch_order(0, 3, 1, 500), base)  # the same, recomputed
  for other in (
    resident.epoch_order(1, 3, 1, 500),  # another seed
    resident.epoch_order(0, 4, 1, 500),  # another epoch
    resident.epoch_order(0, 3, 2, 500),  # another device
  ):
    assert np.mean(other == base) < 0.05  # a different shuffle, not a shifted copy
  assert np.mean(base == np.arange(500)) < 0.05  # shuffled at all


def test_packed_columns_read_back_bit_for_bit():
  block = tiny.random_block(tiny.tiny_schema(), 50)
  cols = {k: block[k] for k in ("sparse", "mv_ids", "mv_w", "dense", "labels")}
  cols["mv_w"][3, 1] = np.float32(-0.0)  # floats travel as their bits
  rows, layout = resident.pack(cols)
  assert rows.dtype == np.int32 and rows.shape == (50, sum(v.shape[1] for v in cols.values()))
  back = resident.unpack(rows, layout)
  for k, v in cols.items():
    assert back[k].dtype == v.dtype
    np.testing.assert_array_equal(np.asarray(back[k]).view(np.uint8), v.view(np.uint8))


def test_position_of_a_step_is_exact_past_int32():
  assert resident.position(0, 8, 100) == (0, 0)
  assert resident.position(13, 8, 100) == (1, 4)
  step = 3 * 10**9  # step · rows overflows int32: the position is computed in Python integers
  assert resident.position(step, 4096, 10**7) == divmod(step * 4096, 10**7)


# -- the rows an epoch reads ----------------------------------------------------------------------


def _resident(data, fraction=1.0, devices=8):
  cfg = tiny.run_config(data, **{"mesh.num_devices": devices, "data.train_fraction": fraction})
  run = Run(cfg, tiny.tiny_schema())
  ds = ds_lib.open_dataset(str(data / "train"))
  return run, ds, resident.ResidentData(ds, cfg, run.mesh)


def _device_sequences(run, res, steps: int) -> np.ndarray:
  """[devices, steps · b]: the resident row index each device reads, step by step, through the
  gather and position updates the dispatch program runs."""
  index = sh.put_batch({"i": np.arange(res.rows, dtype=np.int32)}, run.mesh)
  gather = jax.jit(res.gather_fn(run.mesh))
  advance = jax.jit(lambda p: resident.position_after(p, res.b, res.m))
  pos, out = res.start_position(0), []
  for _ in range(steps):
    out.append(np.asarray(gather(index, *pos)["i"]).reshape(run.mesh.size, res.b))
    pos = advance(pos)
  return np.concatenate(out, axis=1)


def test_every_epoch_reads_each_resident_row_exactly_once_on_8_devices(data):
  run, ds, res = _resident(data)
  # 1 500 rows over 8 devices: 187 each; the 4 left over are out for the whole run.
  assert (res.m, res.b, res.rows, res.dropped) == (187, 8, 1496, 4)
  m = res.m
  seq = _device_sequences(run, res, steps=-(-3 * m // res.b))  # three epochs, batches span them
  for d in range(run.mesh.size):
    epochs = [seq[d, e * m : (e + 1) * m] for e in range(3)]
    for e in epochs:  # each device reads its own rows, each exactly once per epoch
      np.testing.assert_array_equal(np.sort(e), np.arange(d * m, (d + 1) * m))
    assert np.mean(epochs[0] == epochs[1]) < 0.1  # and shuffles them anew each epoch


def test_resuming_at_a_step_continues_the_same_sequence(data):
  run, _, res = _resident(data, devices=2)
  seq = _device_sequences(run, res, steps=40)
  index = sh.put_batch({"i": np.arange(res.rows, dtype=np.int32)}, run.mesh)
  for step in (0, 17, 39):  # where a resumed run starts: the position from the step alone
    got = np.asarray(jax.jit(res.gather_fn(run.mesh))(index, *res.start_position(step))["i"])
    np.testing.assert_array_equal(got.reshape(2, res.b), seq[:, step * res.b : (step + 1) * res.b])


@pytest.mark.parametrize("k", [3, 50])  # 50 steps of 8 rows span three epochs of 187
def test_a_dispatch_gathers_the_rows_of_its_k_steps_at_once_as_k_single_steps(data, k):
  run, _, res = _resident(data)
  seq = _device_sequences(run, res, steps=k + 30)
  index = sh.put_batch({"i": np.arange(res.rows, dtype=np.int32)}, run.mesh)
  many = jax.jit(res.gather_fn(run.mesh, steps=k))
  after = jax.jit(lambda p, n: resident.position_after(p, n * res.b, res.m))
  for step in (0, 29):
    pos = res.start_position(step)
    got = np.asarray(many(index, *pos)["i"])  # [k, devices · b]
    assert got.shape == (k, run.mesh.size * res.b)
    want = seq[:, step * res.b : (step + k) * res.b].reshape(run.mesh.size, k, res.b)
    np.testing.assert_array_equal(got.reshape(k, run.mesh.size, res.b), want.transpose(1, 0, 2))
    np.testing.assert_array_equal(after(pos, k), res.start_position(step + k))


def test_the_resident_rows_are_the_rows_the_stream_reads_in_an_epoch(data):
  # train_fraction 0.5 of 6 blocks: the stream reads the leading 3 blocks, in some order.
  _, ds, res = _resident(data, fraction=0.5, devices=1)
  src = ds_lib.BlockSource(ds)
  used = resident.used_blocks(ds, 0.5)
  resident_ids = np.concatenate([src.read(i)["sample_id"] for i in range(used)])
  assert res.rows == len(resident_ids) == 3 * 256 and res.dropped == 0
  # One block per window: the stream's windows end where its epochs end (with windows of several
  # blocks, a window can take the next epoch's first blocks, and an epoch-long stretch of the
  # stream then repeats some rows and holds back others).
  cfg = pipeline.PipelineConfig(batch_size=64, seed=0, fraction=0.5, prefetch=0, window_blocks=1)
  it = iter(pipeline.train_iter_dataset(ds, cfg))
  stream_ids = np.concatenate([next(it)["sample_id"] for _ in range(res.rows // 64)])
  np.testing.assert_array_equal(np.sort(stream_ids), np.sort(resident_ids))
  # The resident columns hold exactly those rows, in block order.
  labels = np.concatenate([src.read(i)["labels"] for i in range(used)])
  got = resident.unpack(np.asarray(res.columns["rows"]), res.layout)
  np.testing.assert_array_equal(np.asarray(got["labels"]), labels)
  assert got["labels"].dtype == labels.dtype


# -- runs -----------------------------------------------------------------------------------------


def run_config(data, mode, **overrides):
  base = {
    "data.input_mode": mode,
    "train.num_steps": 12,
    "train.log_every": 3,
    "checkpoint.every_steps": 6,
    "train.steps_per_dispatch": 4,
  }
  return tiny.run_config(data, **{**base, **overrides})


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
  """{mode: summary} of uninterrupted 12-step runs, 4 steps per dispatch."""
  return {
    mode: trainer.train_and_evaluate(
      run_config(data, mode), str(tmp_path_factory.mktemp(f"straight-{mode}"))
    )
    for mode in ("stream", "device")
  }


def test_device_mode_trains_from_the_resident_rows(straight):
  # Both modes train on the same rows in different orders: different states, similar quality.
  assert straight["device"]["steps"] == straight["stream"]["steps"] == 12
  assert straight["device"]["state_fingerprint"] != straight["stream"]["state_fingerprint"]
  auc = {mode: straight[mode]["metrics"]["ctr/auc"] for mode in straight}
  assert abs(auc["device"] - auc["stream"]) < 0.1


@pytest.mark.parametrize("mode", ["stream", "device"])
def test_interrupted_then_resumed_equals_the_uninterrupted_run(data, straight, tmp_path, mode):
  def preempt(step):  # a real SIGTERM after the dispatch that ends at step 9 (no save step)
    if step == 9:
      os.kill(os.getpid(), signal.SIGTERM)

  cfg = run_config(data, mode)
  stopped = trainer.train_and_evaluate(cfg, str(tmp_path), hooks=Hooks(after_dispatch=preempt))
  assert stopped["preempted"] == "SIGTERM" and stopped["steps"] == 9
  resumed = trainer.train_and_evaluate(cfg, str(tmp_path))
  assert resumed["state_fingerprint"] == straight[mode]["state_fingerprint"]
  assert resumed["metrics"] == straight[mode]["metrics"]


def test_device_mode_k_steps_per_dispatch_equal_single_steps(data, straight, tmp_path):
  cfg = run_config(data, "device", **{"train.steps_per_dispatch": 1})
  single = trainer.train_and_evaluate(cfg, str(tmp_path))
  assert single["state_fingerprint"] == straight["device"]["state_fingerprint"]


def test_a_checkpoint_resumes_only_in_the_mode_that_wrote_it(data, tmp_path):
  trainer.train_and_evaluate(run_config(data, "stream", **{"train.num_steps": 6}), str(tmp_path))
  with pytest.raises(ckpt_lib.IncompatibleCheckpointError) as e:
    trainer.train_and_evaluate(run_config(data, "device"), str(tmp_path))
  assert "data.input_mode='stream'" in str(e.value)
  assert "--config.data.input_mode=stream" in str(e.value)


# -- the choice -----------------------------------------------------------------------------------


def test_an_unknown_input_mode_is_one_line_naming_the_allowed_values():
  cfg = tiny.tiny_config(**{"data.input_mode": "gpu"})
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(cfg)
  assert str(e.value) == (
    "data.input_mode='gpu' is not allowed; allowed: ['auto', 'stream', 'device']"
  )


def test_auto_takes_the_device_where_rows_fit_and_it_measured_faster(data, monkeypatch):
  run, ds, _ = _resident(data, devices=1)
  cfg = tiny.run_config(data, **{"mesh.num_devices": 1})
  monkeypatch.setattr(input_mode, "CPU_PREFERS_DEVICE", True)
  assert input_mode.resolve(cfg, run, ds) == "device"
  assert input_mode.resolve(cfg, run, ds, custom_batches=True) == "stream"  # a test hook
  monkeypatch.setattr(input_mode, "CPU_PREFERS_DEVICE", False)
  assert input_mode.resolve(cfg, run, ds) == "stream"
  cfg.data.input_mode = "device"  # the key overrides the measurement
  assert input_mode.resolve(cfg, run, ds) == "device"
  cfg.data.input_mode = "stream"
  monkeypatch.setattr(input_mode, "CPU_PREFERS_DEVICE", True)
  assert input_mode.resolve(cfg, run, ds) == "stream"


def test_rows_that_do_not_fit_stay_on_the_stream(data, monkeypatch):
  run, ds, _ = _resident(data, devices=1)
  cfg = tiny.run_config(data, **{"mesh.num_devices": 1})
  monkeypatch.setattr(input_mode, "CPU_PREFERS_DEVICE", True)
  monkeypatch.setattr(input_mode, "device_memory_bytes", lambda: (100_000, "device memory"))
  ok, why = input_mode.fits(run, ds, 1.0)
  assert not ok and why.endswith("MiB per device > 60% of 0.1 MiB (device memory)")
  assert why.startswith(f"rows {1500 * resident.row_bytes(ds) / 2**20:.1f} MiB + state ")
  assert input_mode.resolve(cfg, run, ds) == "stream"
  cfg.data.input_mode = "device"
  with pytest.raises(config_lib.ConfigError) as e:
    input_mode.resolve(cfg, run, ds)
  assert str(e.value) == (
    f"data.input_mode='device' but the training rows do not fit: {why}; use "
    "data.input_mode='stream' (or 'auto')"
  )


def test_too_few_rows_per_device_for_a_batch_is_one_line(data):
  cfg = tiny.run_config(data, **{"mesh.num_devices": 1, "train.batch_size": 2048})
  run = Run(cfg, tiny.tiny_schema())
  with pytest.raises(config_lib.ConfigError, match="needs at least train.batch_size / devices"):
    resident.ResidentData(ds_lib.open_dataset(str(data / "train")), cfg, run.mesh)
