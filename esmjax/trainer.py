"""The training loop, top to bottom (big_vision style).

datasets → mesh → components → shapes (`eval_shape`) → shardings → `jit(init, out_shardings)` →
restore → loop { batch → `train_step` → log / evaluate / checkpoint } → final evaluation →
`summary.json`.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from esmjax import config as config_lib
from esmjax import evaluation
from esmjax import metrics_io
from esmjax import sharding as sh
from esmjax import state as state_lib
from esmjax import steps
from esmjax.data import dataset as ds_lib
from esmjax.data import pipeline

SCHEMA_FILE = "schema.json"
SUMMARY_KEYS = ("ctr/auc", "cvr/auc", "ctcvr/auc", "ctavr/auc", "ctr/gauc", "ctcvr/gauc",
                "cvr/entire_space_auc", "ctr/logloss", "ctcvr/logloss", "cvr/calibration")


def resolve_datasets(config: ml_collections.ConfigDict) -> tuple[ds_lib.Dataset, ds_lib.Dataset]:
  """The configured datasets, or the synthetic default (generated once, then cached)."""
  if config.data.train_dir:
    return ds_lib.open_dataset(config.data.train_dir), ds_lib.open_dataset(config.data.eval_dir)
  from esmjax.data import synthetic

  train_dir, eval_dir = synthetic.ensure_dataset(config.data.synthetic, config.data.cache_dir)
  return ds_lib.open_dataset(train_dir), ds_lib.open_dataset(eval_dir)


def num_train_steps(config, train_ds: ds_lib.Dataset) -> int:
  if config.train.num_steps > 0:
    return int(config.train.num_steps)
  rows = train_ds.num_rows * config.data.train_fraction
  return max(1, int(math.ceil(config.train.num_epochs * rows / config.train.batch_size)))


def make_train_iter(config, train_ds: ds_lib.Dataset):
  pc = jax.process_count()
  cfg = pipeline.PipelineConfig(batch_size=config.train.batch_size // pc, seed=config.train.seed,
                                window_blocks=config.data.window_blocks, prefetch=config.data.prefetch,
                                fraction=config.data.train_fraction)
  return iter(pipeline.train_iter_dataset(train_ds, cfg, process_index=jax.process_index(), process_count=pc))


class Run:
  """Everything a run is built from: datasets, mesh, components, jitted functions, initial state."""

  def __init__(self, config: ml_collections.ConfigDict, schema: ds_lib.Schema, mesh=None,
               engine_factory=None):
    self.config = config
    self.mesh = mesh if mesh is not None else sh.make_mesh(config.mesh.num_devices, config.mesh.axis)
    config_lib.check_devices(config, self.mesh.size, jax.process_count())
    self.schema = schema
    self.c = state_lib.build(config, schema, row_multiple=self.mesh.size,
                             engine_factory=engine_factory)
    init = functools.partial(state_lib.init_state, self.c, config.train.seed)
    self.state_shape = jax.eval_shape(init)
    shard_tables = bool(getattr(self.c.engine, "row_sharded", False))
    self.state_sharding = sh.state_shardings(self.state_shape, self.mesh, shard_tables)
    self.init_fn = jax.jit(init, out_shardings=self.state_sharding)
    bsh = sh.batch_sharding(self.mesh)
    self.train_step = jax.jit(functools.partial(steps.train_step, self.c),
                              in_shardings=(self.state_sharding, bsh),
                              out_shardings=(self.state_sharding, sh.replicated(self.mesh)),
                              donate_argnums=0)
    self.predict_step = jax.jit(functools.partial(steps.predict_step, self.c),
                                in_shardings=(self.state_sharding, bsh), out_shardings=bsh)

  def evaluate(self, state, dataset: ds_lib.Dataset) -> dict[str, float]:
    return evaluation.evaluate(self.predict_step, state, dataset, self.config.train.eval_batch_size,
                               self.mesh, self.config.train.max_eval_rows)


def _fmt_time(s: float) -> str:
  s = int(max(s, 0))
  return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def metrics_table(metrics: dict[str, float]) -> str:
  """The final metrics as a small aligned table (what the README's first command prints)."""
  tasks = [t for t in ("ctr", "cvr", "ctcvr", "ctavr") if f"{t}/auc" in metrics]
  cols = ("auc", "gauc", "logloss", "calibration")
  lines = [f"{'task':<8}" + "".join(f"{c:>13}" for c in cols)]
  for t in tasks:
    lines.append(f"{t:<8}" + "".join(f"{metrics.get(f'{t}/{c}', float('nan')):>13.4f}" for c in cols))
  if "cvr/entire_space_auc" in metrics:
    lines.append(f"entire-space CVR AUC (pCVR vs would-buy, all impressions): "
                 f"{metrics['cvr/entire_space_auc']:.4f}")
  return "\n".join(lines)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains, evaluates, writes metrics.jsonl and summary.json in `workdir`; returns the summary."""
  config_lib.validate(config)
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  train_ds, eval_ds = resolve_datasets(config)
  run = Run(config, train_ds.schema)
  if is_main:  # predict / load / export rebuild the model from this, without the training data
    with open(os.path.join(workdir, SCHEMA_FILE), "w") as f:
      json.dump(train_ds.schema.to_json(), f, indent=1)
  total_steps = num_train_steps(config, train_ds)
  writer = metrics_io.MetricWriter(workdir, enabled=is_main)
  train_iter = make_train_iter(config, train_ds)

  from esmjax import checkpoint as ckpt_lib  # orbax is heavy: import when a run starts

  ckpt = ckpt_lib.Checkpointer(workdir, config, run) if config.checkpoint.enabled else None
  state = None
  if ckpt is not None:
    state = ckpt.restore_latest(train_iter)
  if state is None:
    state = run.init_fn()
  start_step = int(jax.device_get(state.step))
  if start_step:
    logging.info("resumed from step %d in %s", start_step, workdir)
  logging.info("training %s for %d steps (batch %d, %d device(s), %d process(es)); train rows %d, eval rows %d",
               config.model.name, total_steps, config.train.batch_size, run.mesh.size,
               jax.process_count(), train_ds.num_rows, eval_ds.num_rows)

  t_start = t_log = time.time()
  steps_timed, ex_per_s, last_eval = 0, float("nan"), {}
  step = start_step
  compile_s = None
  while step < total_steps:
    batch = next(train_iter)
    state, m = run.train_step(state, sh.put_batch({k: batch[k] for k in steps.BATCH_KEYS}, run.mesh))
    step += 1
    if compile_s is None:
      jax.block_until_ready(m["loss"])
      compile_s = time.time() - t_start
      t_log, steps_timed = time.time(), 0
      continue
    steps_timed += 1
    if step % config.train.log_every == 0 or step == total_steps:
      m = jax.device_get(m)
      _check_finite(m, step)
      now = time.time()
      ex_per_s = steps_timed * config.train.batch_size / max(now - t_log, 1e-9)
      eta = (total_steps - step) * config.train.batch_size / max(ex_per_s, 1e-9)
      logging.info("step %d/%d  loss %.5f  %s  %.0f ex/s  ETA %s", step, total_steps, m["loss"],
                   " ".join(f"{k[5:]} {v:.4f}" for k, v in m.items() if k.startswith("loss/")),
                   ex_per_s, _fmt_time(eta))
      writer.write(step, "train", {**m, "examples_per_sec": ex_per_s})
      t_log, steps_timed = now, 0
    if config.train.eval_every > 0 and step % config.train.eval_every == 0 and step < total_steps:
      last_eval = _evaluate(run, state, eval_ds, writer, step)
    if ckpt is not None and step % config.checkpoint.every_steps == 0 and step < total_steps:
      ckpt.save(step, state, train_iter)
  train_s = time.time() - t_start
  final = _evaluate(run, state, eval_ds, writer, step) if (step != start_step or not last_eval) else last_eval
  if ckpt is not None:
    ckpt.save(step, state, train_iter, metrics=final, force=True)
    ckpt.close()
  summary = {
      "model": config.model.name,
      "steps": int(step),
      "examples_per_sec": ex_per_s,
      "train_seconds": train_s,
      "compile_seconds": compile_s,
      "metrics": final,
      "state_fingerprint": state_lib.state_fingerprint(state),
      "num_devices": run.mesh.size,
      "num_processes": jax.process_count(),
      "train_dir": train_ds.directory,
      "eval_dir": eval_ds.directory,
      "config": json.loads(config.to_json_best_effort()),
  }
  if is_main:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=1, default=str)
  _close(train_iter)
  return summary


def _evaluate(run: Run, state, eval_ds, writer, step) -> dict[str, float]:
  t = time.time()
  m = run.evaluate(state, eval_ds)
  _check_finite({k: v for k, v in m.items() if not k.startswith("n/")}, step, allow_nan=True)
  writer.write(step, "eval", m)
  logging.info("eval at step %d (%.1fs): %s", step, time.time() - t,
               "  ".join(f"{k} {m[k]:.4f}" for k in SUMMARY_KEYS if k in m))
  return m


class NonFiniteError(FloatingPointError):
  """A loss or metric became NaN/Inf; the message names the step and the task."""


def _check_finite(m: dict[str, Any], step: int, allow_nan: bool = False) -> None:
  for k, v in m.items():
    v = float(np.asarray(v))
    if math.isinf(v) or (math.isnan(v) and not allow_nan):
      raise NonFiniteError(f"non-finite {k} = {v} at step {step}; stopping without checkpointing "
                           "this state (lower the learning rates or check the input data)")


def _close(it) -> None:
  close = getattr(it, "close", None)
  if close is not None:
    close()
