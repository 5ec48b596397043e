"""What the benchmarks share: the ESMM-paper throughput setup, the models' towers, timed windows,
subprocess workers and memory readings. Provenance, tables and results files: benchmarks.reporting.

Every measured configuration runs in a fresh subprocess (`run_worker`): its peak RSS is then its
own, a crash or an out-of-memory kill costs one row instead of the run, and each JAX process can
get its own fake device count. Workers print one `@@RESULT@@ {json}` line.

Throughput data (`zipf_batches`): the ESMM paper's shape, 23 single-valued fields × dim 18, ids
drawn per field from a Zipf law (exponent `zipf_a`) over that field's vocabulary (table rows / 23),
and the batches pre-generated and reused, so neither framework pays for input; both frameworks get
the very same batches (same seed).
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

try:
  import reporting
except ImportError:  # a worker running another checkout's esmjax (user_path.py's baseline ref)
  reporting = None

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"
RESULT_TAG = "@@RESULT@@"
PAPER_FIELDS = 23  # the ESMM paper's single-valued fields
PAPER_DIM = 18  # the ESMM paper's embedding dim
ZIPF_A = 1.2  # id skew of the throughput batches (heavier head than uniform, long tail)


# ---------------------------------------------------------------------------------------------
# Memory readings.


def rss_mb() -> float:
  """Current resident set of this process (MB)."""
  try:
    for line in open("/proc/self/status"):
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  except OSError:
    pass
  return float("nan")


def peak_rss_mb() -> float:
  """Peak resident set of this process so far (MB; ru_maxrss is KiB on Linux)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------
# Statistics.


def spread(values: list[float]) -> dict[str, float]:
  """Median and the noise around it: min, max and the relative half-range (max−min)/2/median."""
  v = [float(x) for x in values if x == x]
  if not v:
    return {
      "median": float("nan"),
      "min": float("nan"),
      "max": float("nan"),
      "rel_half_range": float("nan"),
      "n": 0,
    }
  med = statistics.median(v)
  return {
    "median": med,
    "min": min(v),
    "max": max(v),
    "rel_half_range": (max(v) - min(v)) / 2 / med if med else float("nan"),
    "n": len(v),
  }


def timed_windows(
  step: Callable[[int], Any],
  sync: Callable[[], Any],
  batch_size: int,
  *,
  warmup_s: float,
  windows: int,
  window_s: float,
  min_steps: int = 2,
  cpu_rates: list[float] | None = None,
) -> tuple[float, list[float], int]:
  """Runs `step(i)`; returns (first-step seconds incl. compile, examples/s per window, steps).

  `cpu_rates`, if given, receives examples per CPU-second of this process (all its threads) per
  window: on a shared, oversubscribed machine that measures the work a step costs, whatever share
  of the cores the scheduler gave it (spin-waiting still counts as work).

  After the first step (compile) the step runs for `warmup_s`, then `windows` windows of at least
  `window_s` seconds and `min_steps` steps each. Steps go in chunks with one `sync` per chunk (so
  asynchronous dispatch still overlaps host and device, as in training), sized from the warm-up
  to ~1/4 of a window.
  """
  i = 0
  t0 = time.perf_counter()
  step(i)
  sync()
  i += 1
  first = time.perf_counter() - t0
  t0, n = time.perf_counter(), 0
  while n < 1 or time.perf_counter() - t0 < warmup_s:
    step(i)
    sync()
    i += 1
    n += 1
  step_s = (time.perf_counter() - t0) / n
  chunk = int(max(1, min(16, window_s / 4 / max(step_s, 1e-6))))
  rates = []
  for _ in range(windows):
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while n < min_steps or time.perf_counter() - t0 < window_s:
      for _ in range(chunk):
        step(i)
        i += 1
        n += 1
      sync()
    rates.append(n * batch_size / (time.perf_counter() - t0))
    if cpu_rates is not None:
      cpu_rates.append(n * batch_size / max(time.process_time() - c0, 1e-9))
  return first, rates, i


def spec_windows(spec: dict, step, sync, cpu_rates: list[float] | None = None):
  """`timed_windows` at a worker spec's batch, warmup_s (default 2), windows (3) and window_s (3):
  one reading of these keys, so every framework's worker is timed alike."""
  return timed_windows(
    step,
    sync,
    spec["batch"],
    warmup_s=spec.get("warmup_s", 2.0),
    windows=spec.get("windows", 3),
    window_s=spec.get("window_s", 3.0),
    cpu_rates=cpu_rates,
  )


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


# ---------------------------------------------------------------------------------------------
# Subprocess workers.


def worker_env(devices: int | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
  """The parent's environment as `python -m esmjax.main` runs in it (malloc on huge pages where
  supported: `host_memory.cli_malloc_env`), with N fake CPU devices (replacing any given count) if
  asked, then `extra` (GLIBC_TUNABLES="" there: malloc as the OS gives it)."""
  from esmjax.core import host_memory  # light: no JAX import in the parent

  env = host_memory.cli_malloc_env(os.environ)
  env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # accelerators: measured peaks, not 75 %
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if devices is not None:
    flags = re.sub(
      r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", "")
    ).strip()
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={int(devices)}".strip()
  env["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT), str(BENCH), env.get("PYTHONPATH", "")) if p
  )
  env.update(extra or {})
  return env


def run_worker(
  script: Path | str,
  spec: dict[str, Any],
  *,
  env: dict[str, str] | None = None,
  timeout: float = 600.0,
) -> dict[str, Any]:
  """Runs `python script --worker JSON`; returns its result dict, or {'error': ...}."""
  cmd = [sys.executable, str(script), "--worker", json.dumps(spec)]
  t = time.perf_counter()
  try:
    p = subprocess.run(
      cmd, env=env or worker_env(), capture_output=True, text=True, timeout=timeout
    )
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout:.0f}s", "spec": spec}
  wall = time.perf_counter() - t
  for line in reversed(p.stdout.splitlines()):
    if line.startswith(RESULT_TAG):
      out = json.loads(line[len(RESULT_TAG) :])
      out["wall_s"] = wall
      return out
  tail = (p.stderr or p.stdout)[-1500:]
  return {
    "error": f"exit {p.returncode}"
    + (" (killed: out of memory?)" if p.returncode in (-9, 137) else "")
    + f": {tail}",
    "spec": spec,
    "wall_s": wall,
  }


def worker_main(handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]) -> bool:
  """If argv is `--worker JSON`, runs handlers[spec['kind']] and prints the result line."""
  if len(sys.argv) < 3 or sys.argv[1] != "--worker":
    return False
  spec = json.loads(sys.argv[2])
  out = handlers[spec["kind"]](spec)
  print(RESULT_TAG + json.dumps(out, default=float), flush=True)
  return True
