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
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
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
                             engine_factory=engine_factory, mesh=self.mesh)
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

  # The NaN guard: every step's losses are checked on the devices, and the host reads the result
  # only where it syncs anyway (log steps, evaluations, saves), so the guard costs no host round trip.

  @functools.cached_property
  def loss_names(self) -> tuple[str, ...]:
    """The train metrics' names (`loss`, `loss/ctr`, `loss/ctcvr`, ...), sorted."""
    batch = jax.eval_shape(functools.partial(state_lib.dummy_batch, self.c, self.config.train.batch_size))
    _, m = jax.eval_shape(functools.partial(steps.train_step, self.c), self.state_shape, batch)
    return tuple(sorted(m))

  def new_guard(self):
    """(first step whose losses were not all finite, or -1; which losses were not, then)."""
    return jax.device_put((np.int32(-1), np.zeros(len(self.loss_names), bool)), sh.replicated(self.mesh))

  @functools.cached_property
  def guarded_step(self):
    """jitted (state, batch, guard) -> (state, metrics, guard): `train_step` + the guard update."""
    names = self.loss_names

    def step(state, batch, guard):
      state, m = steps.train_step(self.c, state, batch)
      finite = jnp.stack([jnp.all(jnp.isfinite(m[k])) for k in names])
      first, bad = guard
      now = (first < 0) & ~jnp.all(finite)
      return state, m, (jnp.where(now, state.step, first), jnp.where(now, ~finite, bad))

    rep = sh.replicated(self.mesh)
    return jax.jit(step, in_shardings=(self.state_sharding, sh.batch_sharding(self.mesh), rep),
                   out_shardings=(self.state_sharding, rep, rep), donate_argnums=(0, 2))

  @functools.cached_property
  def nonfinite_leaves(self):
    """jitted state -> {leaf path: holds a NaN/Inf} over the floating leaves (O(state): used only
    before saves and evaluations, which cost O(state) or more themselves)."""

    def check(state):
      return {jax.tree_util.keystr(p): ~jnp.all(jnp.isfinite(x))
              for p, x in jax.tree_util.tree_flatten_with_path(state)[0] if jnp.issubdtype(x.dtype, jnp.inexact)}

    return jax.jit(check, in_shardings=(self.state_sharding,), out_shardings=sh.replicated(self.mesh))


def check_device_count(config: ml_collections.ConfigDict) -> None:
  """mesh.num_devices against the visible devices, and the batch split, before anything is built."""
  n, visible = int(config.mesh.num_devices), jax.device_count()
  if n > visible:
    raise config_lib.ConfigError(
        f"mesh.num_devices={n} but only {visible} device(s) are visible (on CPU, set "
        f"XLA_FLAGS=--xla_force_host_platform_device_count={n} before starting)")
  config_lib.check_devices(config, n if n > 0 else visible, jax.process_count())


def _fmt_time(s: float) -> str:
  if not math.isfinite(s):  # no throughput measured yet (the first logged step compiled)
    return "?"
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
  """Trains, evaluates, writes metrics.jsonl and summary.json in `workdir`; returns the summary.

  Resumes from the latest readable checkpoint in `workdir`. On SIGTERM / SIGINT it finishes the
  step in flight, saves, and returns a summary with `preempted` set (no final evaluation).
  """
  config_lib.validate(config)
  check_device_count(config)  # before any data is generated or read
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  train_ds, eval_ds = resolve_datasets(config)
  run = Run(config, train_ds.schema)
  if is_main:  # predict / load / export rebuild the model from this, without the training data
    with open(os.path.join(workdir, SCHEMA_FILE), "w") as f:
      json.dump(train_ds.schema.to_json(), f, indent=1)
  total_steps = num_train_steps(config, train_ds)
  train_iter = make_train_iter(config, train_ds)

  from esmjax import checkpoint as ckpt_lib  # orbax is heavy: import when a run starts

  ckpt = ckpt_lib.Checkpointer(workdir, config, run) if config.checkpoint.enabled else None
  writer = metrics_io.MetricWriter(workdir, enabled=is_main, config=config)
  stop = _StopSignal()
  try:
    state = ckpt.restore_latest(train_iter) if ckpt is not None else None
    if state is None:
      state = run.init_fn()
    start_step = int(jax.device_get(state.step))
    if is_main:  # records after the checkpoint are produced again: drop them, nothing is repeated
      _truncate_metrics(writer.path, start_step)
      writer.resume_at(start_step)
    if start_step:
      logging.info("resumed from step %d in %s", start_step, workdir)
    logging.info("training %s for %d steps (batch %d, %d device(s), %d process(es)); train rows %d, eval rows %d",
                 config.model.name, total_steps, config.train.batch_size, run.mesh.size,
                 jax.process_count(), train_ds.num_rows, eval_ds.num_rows)
    if ckpt is not None:
      stop.install()  # no checkpoints: the signals keep their usual meaning
    guard = run.new_guard()
    best = config.checkpoint.best_metric

    def healthy(step: int, whole_state: bool) -> None:
      _raise_if_nonfinite(run, guard, state if whole_state else None, step, ckpt)

    def save(step: int, metrics=None) -> None:
      healthy(step, whole_state=True)  # a NaN/Inf state is never written
      ckpt.save(step, state, train_iter, metrics=metrics)

    t_start = t_log = time.time()
    steps_timed, ex_per_s, last_eval, compile_s = 0, float("nan"), {}, None
    step = start_step
    preempted = None
    while step < total_steps:
      raw = next(train_iter)
      batch = {k: raw[k] for k in steps.BATCH_KEYS}
      if step + 1 == config.train.inject_nan_at_step:
        batch = _poison(batch)
      state, m, guard = run.guarded_step(state, sh.put_batch(batch, run.mesh), guard)
      step += 1
      if config.train.step_delay_s:
        time.sleep(config.train.step_delay_s)
      if compile_s is None:  # the first step compiles: keep it out of the throughput
        jax.block_until_ready(m["loss"])
        compile_s = time.time() - t_start
        t_log, steps_timed = time.time(), -1
      steps_timed += 1
      if step % config.train.log_every == 0 or step == total_steps:
        healthy(step, whole_state=False)
        m = jax.device_get(m)
        now = time.time()
        ex_per_s = steps_timed * config.train.batch_size / max(now - t_log, 1e-9) if steps_timed else ex_per_s
        eta = (total_steps - step) * config.train.batch_size / max(ex_per_s, 1e-9)
        logging.info("step %d/%d  loss %.5f  %s  %.0f ex/s  ETA %s", step, total_steps, m["loss"],
                     " ".join(f"{k[5:]} {v:.4f}" for k, v in m.items() if k.startswith("loss/")),
                     ex_per_s, _fmt_time(eta))
        writer.write(step, "train", {**m, **({"examples_per_sec": ex_per_s} if steps_timed else {})})
        t_log, steps_timed = now, 0
      evaluated = config.train.eval_every > 0 and step % config.train.eval_every == 0 and step < total_steps
      if evaluated:
        healthy(step, whole_state=True)  # NaN weights would otherwise surface as a metrics error
        last_eval = _evaluate(run, state, eval_ds, writer, step)
      if ckpt is not None and step < total_steps and (step % config.checkpoint.every_steps == 0 or
                                                      (evaluated and best)):
        save(step, last_eval if evaluated else None)
      preempted = stop.received(step, config.train.log_every)
      if preempted:
        break
    train_s = time.time() - t_start
    if preempted:
      save(step)
      ckpt.wait()
      logging.warning("%s received: stopped after step %d/%d and saved checkpoint step %d in %s; run "
                      "the same command again to resume", preempted, step, total_steps, step, ckpt.directory)
      return {"model": config.model.name, "steps": int(step), "total_steps": int(total_steps),
              "preempted": preempted, "checkpoint_dir": ckpt.directory, "train_seconds": train_s}
    healthy(step, whole_state=True)
    final = _evaluate(run, state, eval_ds, writer, step) if (step != start_step or not last_eval) else last_eval
    if ckpt is not None:
      save(step, final)
      ckpt.wait()
    summary = {
        "model": config.model.name,
        "steps": int(step),
        "examples_per_sec": ex_per_s,
        "train_seconds": train_s,
        "compile_seconds": compile_s,
        "metrics": final,
        "state_fingerprint": _fingerprint(state),
        "resumed_from_step": start_step or None,
        "best_checkpoint_step": ckpt.best_step() if ckpt is not None else None,
        "num_devices": run.mesh.size,
        "num_processes": jax.process_count(),
        "train_dir": train_ds.directory,
        "eval_dir": eval_ds.directory,
        "config": json.loads(config.to_json_best_effort()),
    }
    if is_main:
      with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    return summary
  finally:
    stop.uninstall()
    writer.close()
    if ckpt is not None:
      ckpt.close()  # waits for a save in flight: what was written is complete
    _close(train_iter)


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


def _raise_if_nonfinite(run: Run, guard, state, step: int, ckpt) -> None:
  """Raises NonFiniteError if a step's losses (or, given `state`, any state leaf) went NaN/Inf."""
  first, bad = jax.device_get(guard)
  if first >= 0:
    what = (f"non-finite {', '.join(n for n, b in zip(run.loss_names, bad) if b)} at step {int(first)} "
            f"(found at step {step})")
  else:
    if state is None:
      return
    leaves = [p for p, b in jax.device_get(run.nonfinite_leaves(state)).items() if b]
    if not leaves:
      return
    what = (f"non-finite values in the train state at step {step} "
            f"({', '.join('state' + p for p in leaves[:4])}), although every loss was finite")
  last = ckpt.latest_step() if ckpt is not None else None
  kept = (f"the last checkpoint is step {last} in {ckpt.directory}" if last is not None
          else "no checkpoint was written")
  raise NonFiniteError(f"{what}; stopped without checkpointing this state ({kept}). Lower the learning "
                       "rates, clip the tower gradients (optimizer.grad_clip) or check the input data")


def _poison(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """train.inject_nan_at_step: NaN dense values and multi-valued weights, as corrupt input would be."""
  if not (batch["dense"].size or batch["mv_w"].size):
    raise config_lib.ConfigError("train.inject_nan_at_step needs a dataset with dense or multi-valued fields")
  return {**batch, "dense": np.full_like(batch["dense"], np.nan), "mv_w": np.full_like(batch["mv_w"], np.nan)}


class _StopSignal:
  """SIGTERM / SIGINT -> a flag read between steps: the step in flight finishes, then a save.

  A second signal of the same kind acts as usual (kills / raises KeyboardInterrupt), for when a
  save hangs. Handlers are set from the main thread only (Python allows no other).
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.name: str | None = None
    self._previous: dict[int, Any] = {}

  def install(self) -> None:
    if threading.current_thread() is not threading.main_thread():
      logging.warning("not in the main thread: SIGTERM / SIGINT will not save a checkpoint")
      return
    for s in self.SIGNALS:
      prev = signal.signal(s, self._handle)
      self._previous[s] = prev if prev is not None else signal.SIG_DFL

  def _handle(self, signum, frame) -> None:
    del frame
    self.name = signal.Signals(signum).name
    signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

  def received(self, step: int, every: int) -> str | None:
    """The signal's name once one arrived (agreed by all processes, at log steps, when several)."""
    if jax.process_count() == 1:
      return self.name
    if step % every:
      return None
    from jax.experimental import multihost_utils

    anyone = np.any(multihost_utils.process_allgather(np.asarray([self.name is not None])))
    return (self.name or "SIGTERM (on another process)") if anyone else None

  def uninstall(self) -> None:
    for s, h in self._previous.items():
      signal.signal(s, h)
    self._previous = {}


def _truncate_metrics(path: str, last_step: int) -> None:
  """Drops metric records after `last_step` (and lines torn by a kill): a resumed run writes them again."""
  if not os.path.exists(path):
    return
  keep, dropped = [], 0
  with open(path) as f:
    for line in f:
      try:
        rec = json.loads(line)
      except ValueError:
        dropped += 1
        continue
      if int(rec.get("step", 0)) <= last_step:
        keep.append(line if line.endswith("\n") else line + "\n")
      else:
        dropped += 1
  if dropped:
    with open(path + ".tmp", "w") as f:
      f.writelines(keep)
    os.replace(path + ".tmp", path)
    (logging.info if last_step else logging.warning)(
        "dropped %d metric record(s) after step %d from %s (%s)", dropped, last_step, path,
        "they are produced again" if last_step else "an earlier run without a checkpoint to resume from")


def _fingerprint(state) -> str:
  """state.state_fingerprint over the global arrays (gathered first when several processes hold them)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    state = multihost_utils.process_allgather(state, tiled=True)
  return state_lib.state_fingerprint(state)


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
