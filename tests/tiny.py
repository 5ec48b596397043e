"""Tiny schemas, blocks, datasets and configs for tests, a small synthetic world, and the command
line run in-process."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np

from esmjax.config import defaults as config_lib
from esmjax.data.format import dataset as D

REPO = pathlib.Path(__file__).resolve().parents[1]
# A small synthetic world (config.data.synthetic keys): 20 k train and 4 k eval impressions.
TINY_WORLD = dict(
  num_users=2_000,
  num_items=1_000,
  num_categories=50,
  num_shops=200,
  num_brands=100,
  num_intentions=150,
  num_profiles=20,
  cross_buckets=512,
  num_train=20_000,
  num_eval=4_000,
  block_rows=2_048,
  blocks_per_shard=4,
  chunk_rows=8_192,
  calibration_rows=20_000,
)


def tiny_schema(
  labels=("click", "buy", "cart", "wish", "daction"),
  truth=("pctr", "pcvr", "pdaction", "would_buy"),
):
  return D.Schema(
    sparse=(D.SparseField("user", 12), D.SparseField("item", 9), D.SparseField("ctx", 4)),
    multi=(D.MultiField("hist", 9, 3, "sum"), D.MultiField("tags", 6, 2, "mean")),
    dense=(
      D.DenseField("price", 1.0, 2.0, (0.0, 1.0, 2.5)),
      D.DenseField("age", 0.5, 1.0, (0.0, 0.5, 1.0)),
    ),
    labels=labels,
    truth=truth,
  )


def random_block(schema: D.Schema, n: int, seed: int = 0, start_id: int = 0):
  rng = np.random.default_rng(seed)
  b = D.empty_block(schema, n)
  b["sparse"][:] = np.stack([rng.integers(0, f.vocab_size, n) for f in schema.sparse], 1)
  cols = []
  for f in schema.multi:
    ids = rng.integers(0, f.vocab_size, (n, f.max_len))
    cols.append(ids)
  b["mv_ids"][:] = np.concatenate(cols, 1)
  b["mv_w"][:] = np.where(b["mv_ids"] > 0, rng.uniform(0.5, 2.0, b["mv_ids"].shape), 0.0)
  b["dense"][:] = rng.normal(1.0, 1.5, b["dense"].shape)
  click = rng.random(n) < 0.3
  lab = {
    "click": click,
    "buy": click & (rng.random(n) < 0.3),
    "cart": click & (rng.random(n) < 0.4),
  }
  lab["wish"] = click & ~lab["cart"] & (rng.random(n) < 0.2)
  lab["daction"] = lab["cart"] | lab["wish"]
  b["labels"][:] = np.stack([lab[l] for l in schema.labels], 1).astype(np.uint8)
  b["user"][:] = b["sparse"][:, 0]
  b["sample_id"][:] = np.arange(start_id, start_id + n)
  if schema.truth:
    b["truth"][:] = rng.random((n, len(schema.truth)))
    b["truth"][:, schema.truth.index("would_buy")] = (rng.random(n) < 0.3) | lab["buy"]
  return b


def tiny_dataset(
  directory: str, n: int = 2000, seed: int = 0, block_rows: int = 256, start_id: int = 0
):
  s = tiny_schema()
  D.write_dataset(
    directory, s, [random_block(s, n, seed, start_id)], block_rows=block_rows, blocks_per_shard=3
  )
  return D.open_dataset(directory)


def train_eval_datasets(root):
  """`root`/train (1 500 rows) and `root`/eval (300 rows, other user ids) -> `root`."""
  tiny_dataset(str(root / "train"), n=1500, seed=0)
  tiny_dataset(str(root / "eval"), n=300, seed=1, start_id=10**6)
  return root


def run_config(data, **overrides):
  """tiny_config("esmm") on `train_eval_datasets(data)`, 8 devices, 10 steps, checkpoints every 5
  steps, then `overrides`."""
  base = {
    "data.train_dir": str(data / "train"),
    "data.eval_dir": str(data / "eval"),
    "mesh.num_devices": 8,
    "train.num_steps": 10,
    "checkpoint.every_steps": 5,
  }
  return tiny_config("esmm", **{**base, **overrides})


def tiny_config(model: str = "esmm", **overrides):
  c = config_lib.default_config()
  c.model.name = model
  c.model.embed_dim = 4
  c.model.hidden = (8, 4)
  c.train.batch_size = 64
  c.train.eval_batch_size = 128
  c.train.num_steps = 2
  c.train.log_every = 1
  c.mesh.num_devices = 1
  c.checkpoint.every_steps = 1
  # A save at every checkpoint.every_steps, however fast the steps: tests name the steps saved.
  c.checkpoint.max_time_share = 0.0
  # float32, not the default auto: tests built on this config compare against f32 references
  # (dense autodiff, PyTorch, exact metrics) to f32 rounding, on any CPU. The bf16 path (what auto
  # picks on CPUs with bf16 units) has its own tests that ask for it by name.
  c.model.dtype = "float32"
  for key, value in overrides.items():
    config_lib.set_path(c, key, value)
  return c


def repo_config(path: str, **overrides):
  """get_config() of the repository's config file `path` (e.g. "configs/esmm.py"), loaded as the
  command line loads it (ml_collections' config-file parser), with `overrides` by dotted key
  ({"train.batch_size": 64, ...})."""
  from ml_collections.config_flags import config_flags

  config = config_flags.ConfigFileFlagParser("config", lock_config=False).parse(str(REPO / path))
  for key, value in overrides.items():
    config_lib.set_path(config, key, value)
  return config


def run_main(config, workdir: str, monkeypatch, capsys):
  """esmjax.main.main on `config` in `workdir` (mode train) as the CLI runs it -> (exit code,
  stdout, stderr)."""
  return run_mode("train", config, workdir, monkeypatch, capsys)


def run_mode(mode: str, config, workdir: str, monkeypatch, capsys, **flags):
  """esmjax.main.main in `mode` with `flags` (its module attributes, e.g. _CHECKPOINT_STEP=5;
  the others at their defaults) as the CLI runs it -> (exit code, stdout, stderr)."""
  import types

  from esmjax import main as main_lib

  values = {
    "_CONFIG": config,
    "_WORKDIR": workdir,
    "_MODE": mode,
    "_CHECKPOINT_STEP": -1,
    "_EXPORT_PATH": "",
    "_EXPORT_BATCH": 0,
    **flags,
  }
  for name, value in values.items():
    monkeypatch.setattr(main_lib, name, types.SimpleNamespace(value=value))
  code = 0
  try:
    main_lib.main(["esmjax"])
  except SystemExit as e:
    code = e.code
  captured = capsys.readouterr()
  return code, captured.out, captured.err


def cli_env(devices: int = 1, **extra) -> dict[str, str]:
  """The environment of a command-line subprocess: `devices` fake CPU devices, CPU only, the
  repository on the path (for `tests/slow_cli.py` and `-c` scripts), plus `extra`."""
  env = {
    **os.environ,
    "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
    "JAX_PLATFORMS": "cpu",
    "PYTHONPATH": str(REPO),
  }
  env.update({k: str(v) for k, v in extra.items()})
  return env


def run_cli(args, module: str = "esmjax.main", devices: int = 1, timeout: float = 300, env=None):
  """`python -m <module> <args>` in the repository, as a user runs it -> CompletedProcess (text).
  For tests of exit codes, signals and one-line errors; other runs go through `main_in_process`."""
  return subprocess.run(
    [sys.executable, "-m", module, *map(str, args)],
    cwd=REPO,
    env=env or cli_env(devices),
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def tiny_flags(cache_dir, **overrides) -> list[str]:
  """Command-line flags of a compile-light run on the small synthetic world cached in
  `cache_dir`: 2 steps, embeddings of 4, towers 16-8, then `overrides` ({"train.num_steps": 3})."""
  keys = {
    "train.num_steps": 2,
    "train.batch_size": 256,
    "train.eval_batch_size": 1024,
    "model.hidden": "(16,8)",
    "model.embed_dim": 4,
    **{f"data.synthetic.{k}": v for k, v in TINY_WORLD.items()},
    "data.cache_dir": cache_dir,
    **overrides,
  }
  return [f"--config.{k}={v}" for k, v in keys.items()]


def main_in_process(args) -> None:
  """`python -m esmjax.main <args>` run in this process under absl's flagsaver (flag values are
  restored afterwards): for tests of what a run writes, where no exit code or signal is tested."""
  import grain  # noqa: F401  (defines absl flags; see below)
  from absl import flags
  from absl.testing import flagsaver

  from esmjax import exits
  from esmjax import main as main_lib

  # Flags defined inside a flagsaver are dropped when it ends: every module that defines some
  # (grain) is imported above, before it starts.
  argv = ["esmjax", *map(str, args)]
  saved_argv = sys.argv
  # ml_collections reads the `--config.<key>=` overrides from sys.argv, as the command line has it.
  sys.argv = argv
  try:
    with flagsaver.flagsaver():
      flags.FLAGS.unparse_flags()
      exits.parse_flags(argv)
      main_lib.main(["esmjax"])
  finally:
    sys.argv = saved_argv


def poisoned(batch):
  """A batch as corrupt input would make it: NaN dense values and multi-valued weights."""
  assert batch["dense"].size or batch["mv_w"].size, "needs dense or multi-valued fields"
  return {
    **batch,
    "dense": np.full_like(batch["dense"], np.nan),
    "mv_w": np.full_like(batch["mv_w"], np.nan),
  }


def nan_at_step(step: int):
  """Test hooks: the batch of step `step` (counted from 1) is `poisoned`."""
  from esmjax.training.hooks import Hooks

  def batches(it, start):
    for i, b in enumerate(it, start + 1):
      yield poisoned(b) if i == step else b

  return Hooks(batches=batches)
