"""No host work in series with the devices, and the persistent compilation cache.

The loop reads a log step's values (losses and the NaN guard, one read) only once the next
dispatch is queued behind it, in both input modes; `esmjax.common.compile_cache` points JAX's
persistent
cache at train.compile_cache_dir (or $ESMJAX_COMPILE_CACHE), keeps a directory JAX already has,
and turns off with ''.
"""

import os

import jax
import pytest
import tiny

from esmjax.common import compile_cache
from esmjax.config import defaults as config_lib
from esmjax.training import dispatch, resident, train_log, trainer


@pytest.mark.parametrize("mode", ["stream", "device"])
def test_a_log_step_is_read_after_the_next_dispatch_is_queued(data, tmp_path, monkeypatch, mode):
  events = []
  cls = resident.ResidentDispatcher if mode == "device" else dispatch.Dispatcher
  call, log = cls.__call__, train_log.TrainLog.maybe_log

  def dispatched(self, *args):
    events.append("d")
    return call(self, *args)

  def logged(self, step, *args, **kw):
    events.append(f"log {step}")
    return log(self, step, *args, **kw)

  monkeypatch.setattr(cls, "__call__", dispatched)
  monkeypatch.setattr(train_log.TrainLog, "maybe_log", logged)
  cfg = tiny.run_config(
    data,
    **{
      "data.input_mode": mode,
      "mesh.num_devices": 1,
      "train.num_steps": 6,
      "train.log_every": 2,
      "train.steps_per_dispatch": 1,
      "checkpoint.every_steps": 100,
    },
  )
  summary = trainer.train_and_evaluate(cfg, str(tmp_path))
  assert summary["steps"] == 6
  # Step 2's values are read after step 3's dispatch is queued; the last step's right away (the
  # final evaluation waits for the devices anyway).
  assert events == ["d", "d", "d", "log 2", "d", "d", "log 4", "d", "log 6"]
  records = [r for r in _read(tmp_path) if r["split"] == "train"]
  assert [r["step"] for r in records] == [2, 4, 6]


def _read(workdir):
  from esmjax.evaluation import metrics_io

  return metrics_io.read_metrics(str(workdir))


# -- the compilation cache ------------------------------------------------------------------------


@pytest.fixture
def fresh_jax_cache():
  """JAX's cache directory unset for the test, then put back as it was."""
  from jax._src import compilation_cache

  keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
  old = [getattr(jax.config, k) for k in keys]
  jax.config.update("jax_compilation_cache_dir", None)
  compilation_cache.reset_cache()
  yield
  for k, v in zip(keys, old, strict=True):
    jax.config.update(k, v)
  compilation_cache.reset_cache()


def test_the_default_directory_follows_the_environment(monkeypatch, tmp_path):
  monkeypatch.delenv(compile_cache.ENV, raising=False)
  monkeypatch.setenv("HOME", str(tmp_path))
  assert compile_cache.default_dir() == str(tmp_path / ".cache" / "esmjax" / "jax-compile")
  monkeypatch.setenv(compile_cache.ENV, "/somewhere/cache")
  assert compile_cache.default_dir() == "/somewhere/cache"
  assert config_lib.default_config().train.compile_cache_dir == "/somewhere/cache"
  for off in ("", "off", "OFF"):
    monkeypatch.setenv(compile_cache.ENV, off)
    assert compile_cache.default_dir() == ""


def test_enable_points_jax_at_the_directory_and_programs_land_there(tmp_path, fresh_jax_cache):
  path = tmp_path / "cache"
  cfg = tiny.tiny_config(**{"train.compile_cache_dir": str(path)})
  assert compile_cache.enable(cfg) == str(path)
  assert jax.config.jax_compilation_cache_dir == str(path)
  assert jax.config.jax_persistent_cache_min_compile_time_secs == compile_cache.MIN_COMPILE_SECONDS
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # this tiny program too
  jax.jit(lambda x: x * 3.0 + 1.0)(jax.numpy.arange(7.0)).block_until_ready()
  assert os.listdir(path)  # the compiled program was written
  # A second enable (another run in this process) keeps the directory JAX already has.
  other = tiny.tiny_config(**{"train.compile_cache_dir": str(tmp_path / "other")})
  assert compile_cache.enable(other) is None
  assert jax.config.jax_compilation_cache_dir == str(path)


def test_an_empty_directory_turns_the_cache_off(fresh_jax_cache):
  assert compile_cache.enable(tiny.tiny_config(**{"train.compile_cache_dir": ""})) is None
  assert jax.config.jax_compilation_cache_dir is None


def test_an_unusable_directory_warns_and_runs_without_a_cache(tmp_path, fresh_jax_cache, caplog):
  blocker = tmp_path / "a-file"
  blocker.write_text("")
  cfg = tiny.tiny_config(**{"train.compile_cache_dir": str(blocker / "cache")})
  assert compile_cache.enable(cfg) is None
  assert jax.config.jax_compilation_cache_dir is None
  assert any("compilation cache off" in r.getMessage() for r in caplog.records)
