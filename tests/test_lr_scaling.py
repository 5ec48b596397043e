"""optimizer.lr_batch_scaling: the learning rates the built optimizers use at a batch size."""

import json

import jax.numpy as jnp
import pytest
import tiny

from esmjax.config import defaults as config_lib
from esmjax.core import lr_scaling
from esmjax.core import state as state_lib


@pytest.mark.parametrize(
  "mode, batch, tables, want_tower, want_table",
  [
    ("none", 4096, True, 1e-3, 0.05),
    ("linear", 4096, True, 4e-3, 0.2),
    ("sqrt", 4096, True, 2e-3, 0.1),
    ("sqrt", 4096, False, 2e-3, 0.05),
    ("linear", 1024, True, 1e-3, 0.05),  # the reference batch: the configured rates exactly
    ("linear", 256, True, 2.5e-4, 0.0125),
  ],
)
def test_learning_rates_follow_the_batch(mode, batch, tables, want_tower, want_table):
  cfg = tiny.tiny_config(
    "esmm",
    **{
      "optimizer.lr_batch_scaling": mode,
      "optimizer.lr_scale_tables": tables,
      "train.batch_size": batch,
    },
  )
  config_lib.validate(cfg)
  tower, table = lr_scaling.learning_rates(cfg)
  assert tower == pytest.approx(want_tower, rel=1e-12)
  assert table == pytest.approx(want_table, rel=1e-12)
  c = state_lib.build(cfg, tiny.tiny_schema())
  assert c.engine.opt.learning_rate == pytest.approx(want_table, rel=1e-12)
  # The towers' Adam: its first update of a unit gradient is -lr (bias-corrected m / sqrt(v) = 1).
  params = {"w": jnp.zeros(3)}
  upd, _ = c.tx.update({"w": jnp.ones(3)}, c.tx.init(params), params)
  assert float(upd["w"][0]) == pytest.approx(-want_tower, rel=1e-4)


def test_configs_without_the_keys_are_unscaled():
  cfg = tiny.tiny_config("esmm", **{"train.batch_size": 8192})
  for key in ("lr_batch_scaling", "lr_reference_batch", "lr_scale_tables"):
    del cfg.optimizer[key]
  config_lib.validate(cfg)
  assert lr_scaling.learning_rates(cfg) == (1e-3, 0.05)


@pytest.mark.parametrize(
  "key, value, message",
  [
    ("optimizer.lr_batch_scaling", "log", "optimizer.lr_batch_scaling='log' is not allowed"),
    ("optimizer.lr_reference_batch", 0, "optimizer.lr_reference_batch=0 is out of range"),
  ],
)
def test_bad_scaling_keys_are_named(key, value, message):
  cfg = tiny.tiny_config("esmm")
  config_lib.set_path(cfg, key, value)
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(cfg)


def test_resuming_a_checkpoint_written_before_the_keys_warns_of_nothing():
  from esmjax.checkpoints import checkpoint

  new = checkpoint._flat_config(json.loads(tiny.tiny_config("esmm").to_json_best_effort()))
  old = {k: v for k, v in new.items() if not k.startswith("optimizer.lr_")}
  assert checkpoint.changed_settings(old, new) == []
  scaled = {**new, "optimizer.lr_batch_scaling": "sqrt"}  # set away from the default: a change
  assert checkpoint.changed_settings(old, scaled) == ["optimizer.lr_batch_scaling None -> 'sqrt'"]


def test_a_checkpoint_written_before_model_dtype_trained_in_float32():
  # Absent, model.dtype means float32 (compat.ABSENT_MEANS), not today's default 'auto': resuming
  # such a run under 'auto' is a change, under float32 none.
  from esmjax.checkpoints import checkpoint

  new = checkpoint._flat_config(json.loads(config_lib.default_config().to_json_best_effort()))
  old = {k: v for k, v in new.items() if k != "model.dtype"}
  assert new["model.dtype"] == "auto"
  assert checkpoint.changed_settings(old, new) == ["model.dtype 'float32' -> 'auto'"]
  assert checkpoint.changed_settings(old, {**new, "model.dtype": "float32"}) == []
