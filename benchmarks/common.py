"""What the benchmarks measure on: the ESMM-paper throughput setup (both frameworks), the models'
towers and FLOPs, esmjax's step timed in a worker, and runs as users run them (the shipped configs,
the trainer's datasets and batches, its summary). The mechanics (options, timing windows, worker
processes, the result record) are the harness's: benchmarks/harness/.

Throughput data (`zipf_batches`): the ESMM paper's shape, 23 single-valued fields × dim 18, ids
drawn per field from a Zipf law (exponent `zipf_a`) over that field's vocabulary (table rows / 23),
and the batches pre-generated and reused, so neither framework pays for input; both frameworks get
the very same batches (same seed).
"""

from __future__ import annotations

import itertools
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

# The harness's names that the scripts read through `common` (roofline.py, bf16_step.py, sweep.py).
from harness import (  # noqa: F401
  BENCH,
  RESULT_TAG,
  RESULTS,
  ROOT,
  peak_rss_mb,
  rss_mb,
  run_worker,
  spec_windows,
  spread,
  timed_windows,
  worker_env,
  worker_main,
)

PAPER_FIELDS = 23  # the ESMM paper's single-valued fields
PAPER_DIM = 18  # the ESMM paper's embedding dim
ZIPF_A = 1.2  # id skew of the throughput batches (heavier head than uniform, long tail)


# ---------------------------------------------------------------------------------------------
# The ESMM-paper throughput setup (both frameworks).


def state_bytes_per_row(dtype: str = "float32", dim: int = PAPER_DIM) -> int:
  """Bytes of train state per table row with row-wise Adagrad: the row, its f32 slot and the int32
  duplicate-merge scratch (tables are initialised in place: measured peak RSS at 1e8 rows is the
  state plus ~0.5 GB)."""
  return dim * (2 if dtype == "bfloat16" else 4) + 4 + 4


def paper_schema(table_rows: int, fields: int = PAPER_FIELDS):
  """23 single-valued fields sharing `table_rows` rows (vocab = rows / fields each), no dense."""
  from esmjax.data.format import dataset as ds_lib

  vocab = max(2, int(table_rows) // fields)
  return ds_lib.Schema(
    sparse=tuple(ds_lib.SparseField(f"f{i}", vocab) for i in range(fields)),
    labels=("click", "buy", "daction"),
  )


def bench_config(
  model: str = "esmm",
  batch_size: int = 4096,
  dtype: str = "float32",
  table_optimizer: str = "rowwise_adagrad",
  dim: int = PAPER_DIM,
  devices: int = 1,
):
  """esmjax's default config with the paper sizes, for throughput runs."""
  from esmjax.config import defaults as config_lib

  c = config_lib.default_config()
  c.model.name = model
  c.model.embed_dim = dim
  c.model.dtype = dtype
  c.model.dense_mode = "none"
  c.embedding.dtype = dtype
  c.embedding.optimizer = table_optimizer
  c.train.batch_size = batch_size
  c.train.eval_batch_size = batch_size
  c.mesh.num_devices = devices
  c.checkpoint.enabled = False
  return config_lib.validate(c)


def quality_config(model: str, batch_size: int, seed: int, max_eval_rows: int = -1):
  """esmjax's default config (the default synthetic data) for a quality run of `model`."""
  from esmjax.config import defaults as config_lib

  c = config_lib.default_config()
  c.model.name = model
  c.train.batch_size = batch_size
  c.train.seed = seed
  c.train.max_eval_rows = max_eval_rows
  c.mesh.num_devices = 1
  c.checkpoint.enabled = False
  return config_lib.validate(c)


def zipf_batches(
  schema, batch_size: int, n: int, seed: int = 0, a: float = ZIPF_A
) -> list[dict[str, np.ndarray]]:
  """`n` batches of Zipf ids (per field over its vocabulary) and plausible labels."""
  from esmjax.data.format import dataset as ds_lib

  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    b = ds_lib.empty_block(schema, batch_size)
    cols = []
    for f in schema.sparse:
      # Zipf ranks 1, 2, ... -> ids in [1, vocab): a scattered permutation so hot ids are not all
      # neighbours (rows of one field would otherwise share cache lines unrealistically often).
      r = (rng.zipf(a, batch_size) - 1) % (f.vocab_size - 1)
      cols.append(1 + (r * 2654435761) % (f.vocab_size - 1))
    b["sparse"][:] = np.stack(cols, 1).astype(np.int32)
    click = rng.random(batch_size) < 0.05
    buy = click & (rng.random(batch_size) < 0.1)
    dact = click & (rng.random(batch_size) < 0.2)
    lab = {"click": click, "buy": buy, "daction": dact}
    b["labels"][:] = np.stack([lab[k] for k in schema.labels], 1).astype(np.uint8)
    out.append(b)
  return out


def model_towers(model: str) -> tuple[tuple[str, str], ...]:
  """(tower, the input set it reads) for each tower of `model`: the one place the benchmarks learn
  a model's towers (FLOP counts, the roofline's towers, the PyTorch reference's towers).

  Imports JAX (the model module): call it in workers, never in a benchmark's parent process.
  """
  from esmjax.models import registry

  return tuple(registry.get(model).towers)


def flops_per_example(in_dim: int, hidden, towers: int) -> float:
  """Matmul FLOPs of one example, forward + backward: 2·MACs forward, 4·MACs backward (input and
  weight gradients; the input gradient of the first layer is the embeddings' gradient)."""
  dims = [in_dim, *hidden, 1]
  macs = sum(a * b for a, b in itertools.pairwise(dims))
  return 6.0 * macs * towers


def model_flops(model: str, num_fields: int, dim: int = PAPER_DIM, hidden=(200, 80)) -> float:
  """FLOPs per example of `model`'s towers, each reading all `num_fields` fields (in a worker)."""
  return flops_per_example(num_fields * dim, hidden, len(model_towers(model)))


def jax_throughput(spec: dict[str, Any]) -> dict[str, Any]:
  """One esmjax configuration on pre-generated Zipf batches (run inside a worker process).

  spec: model, rows, batch, devices, dtype, optimizer, zipf_a, n_batches, warmup_s, windows,
  window_s.
  """
  rss0 = rss_mb()
  import jax

  from esmjax.core import sharding as sh
  from esmjax.core import steps
  from esmjax.training import trainer

  devices = int(spec.get("devices", 1))
  mesh = sh.make_mesh(devices)
  schema = paper_schema(spec["rows"])
  cfg = bench_config(
    spec.get("model", "esmm"),
    spec["batch"],
    spec.get("dtype", "float32"),
    spec.get("optimizer", "rowwise_adagrad"),
    devices=devices,
  )
  if spec.get("model_dtype"):  # the towers' dtype alone (tables keep `dtype`)
    cfg.model.dtype = spec["model_dtype"]
  rss_import = rss_mb()
  t = time.perf_counter()
  run = trainer.Run(cfg, schema, mesh=mesh)
  state = run.init_fn()
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t
  host = zipf_batches(
    schema,
    spec["batch"],
    spec.get("n_batches", 8),
    seed=spec.get("seed", 0),
    a=spec.get("zipf_a", ZIPF_A),
  )
  batches = [sh.put_batch({k: b[k] for k in steps.BATCH_KEYS}, mesh) for b in host]
  del host
  box = {"state": state, "m": None}
  del state

  def step(i):
    box["state"], box["m"] = run.train_step(box["state"], batches[i % len(batches)])

  def sync():
    jax.block_until_ready(box["m"])

  cpu = []
  first, rates, steps_run = spec_windows(spec, step, sync, cpu_rates=cpu)
  loss = float(jax.device_get(box["m"]["loss"]))
  dev = jax.devices()[0]
  stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
  return {
    "framework": "jax",
    "ex_per_s": rates,
    "ex_per_cpu_s": cpu,
    "first_step_s": first,
    "init_s": init_s,
    "steps": steps_run,
    "final_loss": loss,
    "peak_rss_mb": peak_rss_mb(),
    "rss_before_import_mb": rss0,
    "rss_after_import_mb": rss_import,
    "device_peak_mb": (stats or {}).get("peak_bytes_in_use", 0) / 2**20 if stats else None,
    "engine": type(run.components.engine).__name__,
    "row_sharded": bool(getattr(run.components.engine, "row_sharded", False)),
    "backend": jax.default_backend(),
    "num_devices": mesh.size,
    "flops_per_example": model_flops(spec.get("model", "esmm"), len(schema.sparse)),
  }


def jax_probe() -> dict[str, Any]:
  """Backend, devices and versions (in a worker: the parent never imports jax, so it never holds
  an accelerator or fixes the CPU device count)."""
  import jax

  devs = jax.devices()
  out = {
    "backend": jax.default_backend(),
    "device_count": len(devs),
    "device_kind": devs[0].device_kind if devs else "",
    "jax": jax.__version__,
    "python": platform.python_version(),
  }
  try:
    import flax

    out["flax"] = flax.__version__
  except ImportError:
    pass
  try:
    import torch

    out["torch"] = torch.__version__
    out["torch_cuda"] = bool(torch.cuda.is_available())
  except ImportError:
    out["torch"] = None
  return out


# ---------------------------------------------------------------------------------------------
# Runs as users run them: the shipped configs, the trainer's datasets and batches, its summary.
# (Workers only. These run against another checkout's esmjax too, user_path.py's baseline ref, so
# they use what both have.)


def shipped_config(tree: Path | str, model: str, batch_size: int = 0, num_steps: int = -1):
  """<tree>/configs/<model>.py loaded as `python -m esmjax.main --config=...` loads it
  (ml_collections' config-file parser), with only the batch size and the number of steps changed,
  each where it is > 0."""
  from ml_collections.config_flags import config_flags

  path = Path(tree) / "configs" / f"{model}.py"
  if not path.is_file():
    raise FileNotFoundError(
      f"no config {path}; models with a shipped config: "
      f"{sorted(p.stem for p in path.parent.glob('*.py'))}"
    )
  c = config_flags.ConfigFileFlagParser("config", lock_config=False).parse(str(path))
  if batch_size > 0:
    c.train.batch_size = int(batch_size)
  if num_steps > 0:
    c.train.num_steps = int(num_steps)
  return c


def datasets(config):
  """(train, eval) datasets as the trainer resolves them (the synthetic world unless configured)."""
  from esmjax.core import feed as data_lib

  return data_lib.resolve_datasets(config)


def train_batches(config, train_ds):
  """The trainer's iterator of training batches (grain, seeded by train.seed): both frameworks read
  the same rows in the same order through it."""
  from esmjax.core import feed as data_lib

  return data_lib.make_train_iter(config, train_ds)


def read_run(workdir: Path | str) -> dict[str, Any]:
  """A finished esmjax run's rate and curves from its workdir (summary.json, metrics.jsonl).

  ex_per_s: examples over the training wall time, compilation, evaluation and the final
  checkpoint left out. A summary with `examples_per_sec_median_window` comes from a loop that
  compiles before it starts timing: steps · batch / train_seconds. An older summary's
  train_seconds includes the first step, which compiled (compile_seconds):
  (steps − 1) · batch / (train_seconds − compile_seconds). windows: examples/s between log steps;
  losses: [(step, loss)].
  """
  workdir = Path(workdir)
  summary = json.loads((workdir / "summary.json").read_text())
  batch = int(summary["config"]["train"]["batch_size"])
  steps = int(summary["steps"])
  train_s, compile_s = float(summary["train_seconds"]), float(summary["compile_seconds"])
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  records = [json.loads(line) for line in lines if line.strip()]
  train = [r for r in records if r.get("split") == "train"]
  return {
    "steps": steps,
    "batch": batch,
    "train_s": train_s,
    "first_step_s": compile_s,
    "ex_per_s": _run_rate(summary, steps, batch, train_s, compile_s),
    "summary_ex_per_s": summary.get("examples_per_sec"),
    "windows": [float(r["examples_per_sec"]) for r in train if "examples_per_sec" in r],
    "losses": [(int(r["step"]), float(r["loss"])) for r in train],
    "metrics": summary.get("metrics") or {},
  }


def _run_rate(summary, steps: int, batch: int, train_s: float, compile_s: float) -> float:
  if "examples_per_sec_median_window" in summary:
    return steps * batch / train_s
  return (steps - 1) * batch / (train_s - compile_s) if steps > 1 else float("nan")


def torch_setup(threads: int):
  """(torch, device, sync) in a PyTorch worker: CUDA where available, `threads` CPU threads."""
  import torch

  dev = "cuda" if torch.cuda.is_available() else "cpu"
  torch.set_num_threads(threads)
  sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
  return torch, dev, sync
