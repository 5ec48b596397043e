"""GPU / TPU readiness without a device: the guarded train step (1 and k steps per dispatch, on one
device and on 8 row-sharded fake devices) and the predict step lower for CUDA and for TPU on this
CPU (JAX's cross-platform lowering), so a change that only accelerators would reject fails here."""

import pytest
import tiny

from esmjax.core.run import Run
from esmjax.training.dispatch import Dispatcher

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
