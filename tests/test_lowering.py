"""GPU / TPU readiness without a device: the guarded train step (1 and k steps per dispatch, on one
device and on 8 row-sharded fake devices; from host batches and from device-resident rows) and
the predict step lower for CUDA and for TPU on this
CPU (JAX's cross-platform lowering), so a change that only accelerators would reject fails here."""

import re

import pytest
import tiny

from esmjax.core.run import Run
from esmjax.data.format import dataset as ds_lib
from esmjax.training.dispatch import Dispatcher
from esmjax.training.resident import ResidentData, ResidentDispatcher

PLATFORMS = ("cuda", "tpu")


def _main_signature(text: str) -> str:
  return next(line for line in text.splitlines() if "func.func public @main" in line)


@pytest.mark.parametrize("devices", [1, 8])
@pytest.mark.parametrize("k", [1, 3])
def test_guarded_train_dispatch_lowers_for_cuda_and_tpu(devices, k):
  cfg = tiny.tiny_config("esm2", **{"mesh.num_devices": devices, "train.steps_per_dispatch": k})
  run = Run(cfg, tiny.tiny_schema())
  assert bool(getattr(run.components.engine, "row_sharded", False)) == (devices > 1)
  dispatch = Dispatcher(run, k)
  traced = dispatch.jitted().trace(*dispatch.abstract_args())
  text = traced.lower(lowering_platforms=PLATFORMS).as_text()
  # One module for both platforms: it takes the platform index first; the state is donated.
  signature = _main_signature(text)
  assert "_platform_index" in signature and "tf.aliasing_output" in signature
  assert ("stablehlo.while" in text) == (k > 1)  # up to k steps: one loop
  assert ("manual_computation" in text) == (devices > 1)  # the row-sharded engine's shard_map


@pytest.mark.parametrize("devices", [1, 8])
def test_predict_step_lowers_for_cuda_and_tpu(devices):
  run = Run(tiny.tiny_config("esmm", **{"mesh.num_devices": devices}), tiny.tiny_schema())
  lowered = run.predict_step.trace(run.abstract_state(), run.abstract_batch(128))
  text = lowered.lower(lowering_platforms=PLATFORMS).as_text()
  assert "_platform_index" in _main_signature(text)
  assert ("manual_computation" in text) == (devices > 1)


@pytest.mark.parametrize("devices", [1, 8])
def test_resident_train_dispatch_lowers_for_cuda_and_tpu(data, devices):
  cfg = tiny.run_config(data, **{"mesh.num_devices": devices, "train.steps_per_dispatch": 4})
  run = Run(cfg, tiny.tiny_schema())
  rows = ResidentData(ds_lib.open_dataset(str(data / "train")), cfg, run.mesh)
  dispatch = ResidentDispatcher(run, rows, 4)
  text = dispatch.jitted().trace(*dispatch.abstract_args()).lower(lowering_platforms=PLATFORMS)
  text = text.as_text()
  signature = _main_signature(text)
  assert "_platform_index" in signature and "tf.aliasing_output" in signature
  # The gather runs inside the steps' loop, per device on its own rows (a shard_map region; on one
  # device the region is inlined).
  assert "stablehlo.while" in text
  assert "manual_computation" in text if devices > 1 else "stablehlo.gather" in text
  rows_arg = f"tensor<{rows.rows}x{rows.columns['rows'].shape[1]}xi32>"
  assert rows_arg in signature  # the resident rows are an argument, not a constant


def test_bf16_train_step_lowers_for_cuda_and_tpu_with_f32_accumulation():
  """model.dtype=bfloat16: the towers' dots take bf16 operands and return f32 on every platform."""
  cfg = tiny.tiny_config("esmm", **{"model.dtype": "bfloat16", "model.hidden": (32, 16)})
  cfg.model.embed_dim = 8
  run = Run(cfg, tiny.tiny_schema())
  dispatch = Dispatcher(run, 1)
  traced = dispatch.jitted().trace(*dispatch.abstract_args())
  text = traced.lower(lowering_platforms=PLATFORMS).as_text()
  mixed = re.findall(
    r"dot_general.*\(tensor<\S+xbf16>, tensor<\S+xbf16>\) -> tensor<\S+xf32>", text
  )
  assert len(mixed) >= 6, len(mixed)  # forward, and the backward's weight and input gradients


def test_evaluation_metrics_sorted_on_the_device_lower_for_cuda():
  # float64 sorts and scans on the GPU: the whole evaluation (AUC, GAUC, population AUC, ...).
  import jax
  import jax.numpy as jnp

  from esmjax.evaluation import device_metrics

  n = 1000

  def spec(dtype):
    return jax.ShapeDtypeStruct((n,), dtype)

  preds = {k: spec(jnp.float32) for k in ("pctr", "pcvr", "pctcvr", "pctavr")}
  labels = {k: spec(jnp.uint8) for k in ("click", "buy", "daction")}
  truth = {"would_buy": spec(jnp.float32), "pcvr": spec(jnp.float32)}
  with jax.enable_x64(True):
    traced = device_metrics._evaluate.trace(preds, labels, spec(jnp.int64), truth)
    text = traced.lower(lowering_platforms=("cuda",)).as_text()
  assert "stablehlo.sort" in text and "f64" in text and "i64" in text
