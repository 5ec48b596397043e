"""benchmarks/throughput.py's workers, each in its own process: a point's step (or the step fed by
the input pipeline) timed in windows that alternate with a reference measured on the same process
and load (the towers alone, or the same step on pre-made batches)."""

from __future__ import annotations

import shutil
import tempfile
import time

import common


def _alternate(
  fns: dict, batch_size: int, *, warmup_s: float, windows: int, window_s: float
) -> dict:
  """Times each `fns[name] = (step(i), sync())` in alternating windows of ≥ window_s seconds.

  Returns {name: {"ex_per_s": [...], "ex_per_cpu_s": [...], "first_step_s": s}}: window k of every
  name ran back to back, so their ratio sees (nearly) the same machine load.
  """
  out = {}
  for name, (step, sync) in fns.items():  # compile + warm up each
    t = time.perf_counter()
    step(0)
    sync()
    out[name] = {
      "first_step_s": time.perf_counter() - t,
      "ex_per_s": [],
      "ex_per_cpu_s": [],
      "steps": 1,
    }
    t, n = time.perf_counter(), 0
    while n < 2 or time.perf_counter() - t < warmup_s:
      step(n + 1)
      sync()
      n += 1
    out[name]["chunk"] = int(max(1, min(16, window_s / 4 / ((time.perf_counter() - t) / n))))
  for _ in range(windows):
    for name, (step, sync) in fns.items():
      o = out[name]
      n, t, c = 0, time.perf_counter(), time.process_time()
      while n < 2 or time.perf_counter() - t < window_s:
        for _ in range(o["chunk"]):
          step(o["steps"])
          o["steps"] += 1
          n += 1
        sync()
      o["ex_per_s"].append(n * batch_size / (time.perf_counter() - t))
      o["ex_per_cpu_s"].append(n * batch_size / max(time.process_time() - c, 1e-9))
  return out


def _towers_step(run):
  """The train step without the embedding engine: rows [B, C, D] come in with the batch and go
  straight into the same model, loss, gradients (towers and rows) and Adam update."""
  import jax
  import optax

  from esmjax.core import steps

  c = run.components

  def towers_step(state, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    grad_fn = jax.value_and_grad(
      lambda p, e: steps._loss_fn(c, p, e, batch, rng, True), argnums=(0, 1), has_aux=True
    )
    (loss, _), (g_params, g_emb) = grad_fn(state.params, {n: batch["rows"] for n in state.tables})
    updates, opt_state = c.tx.update(g_params, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # The rows' gradient is returned, so it is computed (what a table would receive), not pruned.
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), {
      "loss": loss,
      "g": g_emb,
    }

  return jax.jit(towers_step, donate_argnums=0)


def step_worker(spec) -> dict:
  """One table size: the full step and the towers alone, in alternating windows."""
  rss0 = common.rss_mb()
  import jax
  import jax.numpy as jnp
  import numpy as np

  from esmjax.core import host_memory, steps
  from esmjax.core import sharding as sh
  from esmjax.training import trainer

  mesh = sh.make_mesh(spec["devices"])
  schema = common.paper_schema(spec["rows"])
  cfg = common.bench_config(
    batch_size=spec["batch"], table_optimizer=spec["optimizer"], devices=spec["devices"]
  )
  t = time.perf_counter()
  run = trainer.Run(cfg, schema, mesh=mesh)
  state = run.init_fn()
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t
  advised = host_memory.back_with_huge_pages(state) if spec.get("huge_pages") else 0
  rss_init = common.rss_mb()
  host = common.zipf_batches(schema, spec["batch"], spec["n_batches"], seed=0)
  batches = [sh.put_batch({k: b[k] for k in steps.BATCH_KEYS}, mesh) for b in host]
  rng = np.random.default_rng(0)
  rows = jax.device_put(
    0.01 * rng.standard_normal((spec["batch"], len(schema.sparse), common.PAPER_DIM), np.float32),
    sh.batch_sharding(mesh),
  )
  tower_batches = [{**b, "rows": rows} for b in batches]
  towers = _towers_step(run)
  # The towers' own state: fresh copies of the small leaves and no tables (a 1e8-row table must not
  # exist twice); both states are donated step after step, so they must not share buffers.
  small = jax.jit(
    lambda s: s.replace(
      tables={n: jnp.zeros((8, common.PAPER_DIM)) for n in s.tables},
      slots={},
      scratch=jnp.zeros((8,), jnp.int32),
    )
  )(state)
  box = {"step": state, "towers": small, "m": None, "mt": None}
  del state, small

  def step(i):
    box["step"], box["m"] = run.train_step(box["step"], batches[i % len(batches)])

  def towers_step(i):
    box["towers"], box["mt"] = towers(box["towers"], tower_batches[i % len(batches)])

  res = _alternate(
    {
      "step": (step, lambda: jax.block_until_ready(box["m"])),
      "towers": (towers_step, lambda: jax.block_until_ready(box["mt"])),
    },
    spec["batch"],
    warmup_s=spec["warmup_s"],
    windows=spec["windows"],
    window_s=spec["window_s"],
  )
  return {
    **res["step"],
    "reference": {"name": "towers alone", **res["towers"]},
    "init_s": init_s,
    "final_loss": float(jax.device_get(box["m"]["loss"])),
    "peak_rss_mb": common.peak_rss_mb(),
    "rss_before_import_mb": rss0,
    "rss_after_init_mb": rss_init,
    "engine": type(run.components.engine).__name__,
    "num_devices": mesh.size,
    "huge_page_bytes_advised": advised,
  }


def pipeline_worker(spec) -> dict:
  """The step fed by the real input pipeline (Zipf blocks written to a dataset on disk, read by
  the grain pipeline: block shuffle, window row shuffle, re-batch, prefetch thread, put on device),
  alternating with the same step on pre-made device batches."""
  import jax
  import numpy as np

  from esmjax.core import feed as loop_data
  from esmjax.core import sharding as sh
  from esmjax.core import steps
  from esmjax.data.format import dataset as ds_lib
  from esmjax.training import trainer

  mesh = sh.make_mesh(1)
  schema = common.paper_schema(spec["rows"])
  cfg = common.bench_config(batch_size=spec["batch"])
  tmp = tempfile.mkdtemp(prefix="esmjax-throughput-")
  try:
    blocks = common.zipf_batches(schema, spec["batch"], spec["n_blocks"], seed=1)
    for i, b in enumerate(blocks):
      b["user"][:] = b["sparse"][:, 0]
      b["sample_id"][:] = np.arange(i * spec["batch"], (i + 1) * spec["batch"])
    ds_lib.write_dataset(tmp, schema, blocks, block_rows=spec["batch"])
    ds = ds_lib.open_dataset(tmp)
    run = trainer.Run(cfg, schema, mesh=mesh)
    it = loop_data.make_train_iter(cfg, ds)
    premade = [sh.put_batch({k: b[k] for k in steps.BATCH_KEYS}, mesh) for b in blocks[:8]]
    box = {"pipe": run.init_fn(), "pre": run.init_fn(), "m": None, "mp": None}

    def pipe_step(i):
      b = next(it)
      box["pipe"], box["m"] = run.train_step(
        box["pipe"], sh.put_batch({k: b[k] for k in steps.BATCH_KEYS}, mesh)
      )

    def pre_step(i):
      box["pre"], box["mp"] = run.train_step(box["pre"], premade[i % len(premade)])

    res = _alternate(
      {
        "pipeline": (pipe_step, lambda: jax.block_until_ready(box["m"])),
        "premade": (pre_step, lambda: jax.block_until_ready(box["mp"])),
      },
      spec["batch"],
      warmup_s=spec["warmup_s"],
      windows=spec["windows"],
      window_s=spec["window_s"],
    )
    close = getattr(it, "close", None)
    if close:
      close()
    return {
      **res["pipeline"],
      "reference": {"name": "same step, pre-made batches", **res["premade"]},
      "peak_rss_mb": common.peak_rss_mb(),
      "dataset_rows": ds.num_rows,
      "engine": type(run.components.engine).__name__,
      "num_devices": 1,
    }
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
