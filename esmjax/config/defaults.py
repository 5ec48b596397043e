"""The default configuration and its validation.

`configs/*.py` start from `default_config()` and override only what differs (flax-examples style).
`validate(config)` runs before any data is read or anything is compiled, and every error names the
key and, for enumerations, the allowed values (torchrec style).
"""

from __future__ import annotations

import math
import os

import ml_collections

from esmjax.common import compile_cache
from esmjax.common.config_keys import ConfigError, get_path, set_path, unknown_key  # noqa: F401

# The walker of dotted keys, also used as config.ConfigError / unknown_key / get_path / set_path.
from esmjax.config import compat
from esmjax.embedding import optimizers as opt_lib
from esmjax.models import layers
from esmjax.models import registry as model_registry

C = ml_collections.ConfigDict


INPUT_MODES = ("auto", "stream", "device")  # data.input_mode (esmjax/training/input_mode.py)
BEST_TASKS = ("ctr", "cvr", "ctcvr", "ctavr")  # tasks of checkpoint.best_metric
BEST_METRICS = (
  "auc",
  "gauc",
  "logloss",
  "calibration",  # ... and its metrics
  "entire_space_auc",
  "entire_space_logloss",
)


def default_config(world: str = "default") -> ml_collections.ConfigDict:
  """Every key with its default; `world` names the synthetic world trained on when no train_dir
  is given (esmjax.data.synthetic.cache.WORLDS: 'default', or 'paper' for the ESMM paper's
  rates)."""
  from esmjax.data.synthetic import cache as synthetic  # the embedded default dataset's knobs

  c = C()
  c.model = C()
  c.model.name = "esmm"  # a registered model, esmjax/models/<name>.py: esmm, esmm_ns, esm2, ...
  c.model.embed_dim = 18  # embedding dim per field (ESMM paper: 18)
  c.model.hidden = (200, 80)  # tower hidden sizes; each tower ends in one logit (paper: 200-80-1)
  c.model.activation = "relu"  # tower activation: relu, gelu, tanh, sigmoid, swish, leaky_relu
  c.model.dropout = 0.0  # dropout after each hidden layer (train only)
  c.model.dense_mode = (
    "tanh"  # dense features: tanh (normalise + tanh embedding), bucket (ids), none
  )
  # Tower matmuls: float32, bfloat16 (bf16 operands, f32 accumulation, f32 master weights), or
  # auto (bfloat16 on GPU/TPU and on CPUs with avx512_bf16/amx_bf16, else float32; decided at
  # start-up and logged). auto is the default: the main job at batch 1,024 runs 1.84x (ESMM) /
  # 2.07x (ESM2) the f32 rate on a Xeon with AMX, 1.37x / 1.48x on an AMD EPYC with AVX-512-BF16
  # alone (benchmarks/results/cpu_defaults_huge_pages.md, cpu_defaults_epyc.md), with AUCs within
  # seed noise of f32 (experiments/results/bf16_quality_paper.md).
  c.model.dtype = "auto"
  c.model.fuse_towers = True  # towers on one input computed together (f32 roundoff from separate)
  # Each model's own hyperparameters (loss_weights, daction_label, aman_rate, oversample_k, ...):
  # declared, documented and range-checked in its module, esmjax/models/<name>.py (class Hparams).
  for key, value in model_registry.default_hyperparameters().items():
    c.model[key] = value

  c.embedding = C()
  c.embedding.optimizer = "rowwise_adagrad"  # sgd, adagrad, rowwise_adagrad, lazy_adam, ftrl
  c.embedding.init_std = 0.01  # tables start ~ N(0, init_std²)
  c.embedding.dtype = "float32"  # table storage: float32 or bfloat16 (slots stay float32)
  c.embedding.sharding = (
    "auto"  # tables: row (rows over mesh.axis), replicated, auto (row if > 1 device)
  )
  # The row-wise optimizers' hyperparameters (learning_rate 0.05, eps, initial_accumulator, beta1,
  # beta2, l1, l2, ftrl_beta): declared, documented and range-checked in
  # esmjax/embedding/optimizers.py, each on the optimizer that reads it.
  for key, value in opt_lib.default_hyperparameters().items():
    c.embedding[key] = value

  c.optimizer = C()
  c.optimizer.name = "adam"  # tower optimizer (optax): adam, adamw, adagrad, sgd
  c.optimizer.learning_rate = 1e-3  # tower learning rate
  c.optimizer.weight_decay = 0.0  # adamw only
  c.optimizer.grad_clip = 0.0  # global-norm clip of tower gradients; 0 = off
  # learning rates × f(batch / lr_reference_batch): none (f = 1), linear, sqrt (lr_scaling.py)
  c.optimizer.lr_batch_scaling = "none"
  c.optimizer.lr_reference_batch = 1024  # the batch the learning rates were tuned at
  c.optimizer.lr_scale_tables = True  # scale embedding.learning_rate too (else the towers' only)

  c.data = C()
  c.data.train_dir = ""  # dataset directory to train on; empty = generated synthetic data
  c.data.eval_dir = ""  # dataset directory to evaluate on; empty = the synthetic eval split
  c.data.cache_dir = os.path.join(os.path.expanduser("~"), ".cache", "esmjax")  # synthetic cache
  c.data.synthetic = synthetic.world_config(world)  # the synthetic world (when train_dir is empty)
  c.data.window_blocks = 8  # blocks whose rows are shuffled together
  c.data.prefetch = 2  # batches prepared ahead in a background thread
  c.data.train_fraction = 1.0  # use this leading fraction of the training blocks (sparsity curves)
  # auto, stream (grain, from disk) or device (rows resident on the devices, batched there);
  # auto: device where the rows fit and that measured faster (esmjax/training/input_mode.py)
  c.data.input_mode = "auto"

  c.train = C()
  c.train.batch_size = 4096  # global batch (split over devices and processes)
  c.train.num_epochs = 1.0  # epochs over the training set (ignored if num_steps > 0)
  c.train.num_steps = -1  # exact number of steps; -1 = from num_epochs
  c.train.seed = 0  # model init, data order and dropout
  c.train.log_every = 50  # steps between log lines
  c.train.eval_every = -1  # steps between evaluations; -1 = at the end only
  c.train.eval_batch_size = 16384  # rows per evaluation step
  c.train.max_eval_rows = -1  # evaluate on at most this many rows; -1 = all
  c.train.eval_metrics_on = "auto"  # AUC etc. sorted on: device, host, auto (device on a GPU)
  c.train.steps_per_dispatch = 8  # steps per host dispatch (one device loop); k changes no result
  # JAX's persistent compilation cache: a second run skips compiling; "" = off
  # (default: $ESMJAX_COMPILE_CACHE, else ~/.cache/esmjax/jax-compile;
  # esmjax.common.compile_cache.py)
  c.train.compile_cache_dir = compile_cache.default_dir()

  c.mesh = C()
  c.mesh.axis = "data"  # mesh axis of batches and table rows
  c.mesh.num_devices = -1  # devices to use; -1 = all

  c.checkpoint = C()
  c.checkpoint.enabled = True  # write orbax checkpoints in the workdir
  c.checkpoint.every_steps = 1000  # steps between checkpoints (and one at the end)
  # The most of the wall time periodic saves may take: a periodic save comes no sooner than the
  # last save's time (blocked + written) / this after it; 0 = save at every every_steps exactly.
  c.checkpoint.max_time_share = 0.05
  c.checkpoint.keep = 3  # last K checkpoints kept
  c.checkpoint.best_metric = ""  # also keep the best checkpoint by this eval metric; "" = off
  c.checkpoint.best_mode = "max"  # max or min: which end of best_metric is best

  c.distributed = C()
  c.distributed.coordinator = ""  # host:port of process 0; empty = single process
  c.distributed.num_processes = 1  # processes in the job
  c.distributed.process_id = 0  # this process's index
  return c


def _choice(config, key: str, allowed) -> None:
  value = get_path(config, key)
  if value not in allowed:
    raise ConfigError(f"{key}={value!r} is not allowed; allowed: {list(allowed)}")


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks every enumerated value and the contradictions a run cannot survive."""
  try:
    _check_model(config.model)
    _check_embedding(config.embedding)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _choice(config, "model.activation", layers.ACTIVATIONS)
  _choice(config, "model.dense_mode", layers.DENSE_MODES)
  dtype = compat.get(config, "model.dtype")
  if dtype not in ("auto", "float32", "bfloat16"):
    raise ConfigError(
      f"model.dtype={dtype!r} is not allowed; allowed: ['auto', 'float32', 'bfloat16']"
    )
  _choice(config, "embedding.dtype", ("float32", "bfloat16"))
  sharding = compat.get(config, "embedding.sharding")
  if sharding not in ("auto", "replicated", "row"):
    raise ConfigError(
      f"embedding.sharding={sharding!r} is not allowed; allowed: ['auto', 'replicated', 'row']"
    )
  _choice(config, "optimizer.name", ("adam", "adamw", "adagrad", "sgd"))
  hidden = config.model.get("hidden")
  if (
    not hidden
    or isinstance(hidden, (str, int))
    or any(not isinstance(h, int) or isinstance(h, bool) or h <= 0 for h in hidden)
  ):
    raise ConfigError(
      f"model.hidden={hidden!r}: tower sizes are missing; give a non-empty list of "
      "positive ints, e.g. --config.model.hidden=200,80"
    )
  mode = config.data.get("input_mode", "auto")  # absent from configs saved before it existed
  if mode not in INPUT_MODES:
    raise ConfigError(f"data.input_mode={mode!r} is not allowed; allowed: {list(INPUT_MODES)}")
  if not 0.0 < config.data.train_fraction <= 1.0:
    raise ConfigError(f"data.train_fraction={config.data.train_fraction!r} must be in (0, 1]")
  for key in ("data.train_dir", "data.eval_dir"):
    path = get_path(config, key)
    if path and not os.path.isdir(path):
      raise ConfigError(f"{key}={path!r}: directory does not exist")
    if path and not os.path.exists(os.path.join(path, "manifest.json")):
      raise ConfigError(
        f"{key}={path!r}: no manifest.json there (not an esmjax dataset, or its "
        "writing did not finish)"
      )
  if bool(config.data.train_dir) != bool(config.data.eval_dir):
    given, empty = (
      ("data.train_dir", "data.eval_dir")
      if config.data.train_dir
      else ("data.eval_dir", "data.train_dir")
    )
    raise ConfigError(
      f"{given} is set but {empty} is empty: give both (or neither, for synthetic data)"
    )
  if not config.data.train_dir:
    _validate_synthetic(config)
  _validate_run_sections(config)
  return config


def _validate_synthetic(config: ml_collections.ConfigDict) -> None:
  """The synthetic world's keys (read when data.train_dir is empty), before anything is generated:
  a ConfigError naming `data.synthetic.<key>` and its range."""
  from esmjax.data.synthetic import worlds as synthetic_config

  try:
    world = synthetic_config.resolve_config(config.data.synthetic)
  except ValueError as e:
    detail = str(e).removeprefix("synthetic config: ")
    raise ConfigError(
      f"data.synthetic.{detail.replace(' must ', ' is out of range: must ', 1)}"
      if " must " in detail
      else f"data.synthetic: {detail}"
    ) from None
  for k in ("num_train", "num_eval"):
    if int(world[k]) < 1:
      raise ConfigError(
        f"data.synthetic.{k}={world[k]!r} is out of range: must be >= 1 to train and evaluate"
      )


# -- the train, optimizer, mesh, checkpoint and distributed sections ------------------------------

_ANY = float("inf")


def _number(
  config,
  key: str,
  *,
  low: float,
  high: float = _ANY,
  low_open: bool = False,
  integer: bool = False,
  unset: int | None = None,
) -> None:
  """`key` is a number in [low, high] ((low, high] with `low_open`), an int with `integer`, or
  exactly `unset` (a key's "off" / "all" value, e.g. -1); else a ConfigError naming the range."""
  value = get_path(config, key)
  if unset is not None and value == unset and not isinstance(value, bool):
    return
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
  if integer:
    ok = ok and float(value).is_integer()
  ok = ok and (value > low if low_open else value >= low) and value <= high
  if ok:
    return
  kind = "an integer" if integer else "a finite number"
  left = f"({low:g}" if low_open else f"[{low:g}"
  right = "∞)" if high == _ANY else f"{high}]"
  also = f", or {unset} ({_UNSET_MEANS.get(key, 'off')})" if unset is not None else ""
  raise ConfigError(f"{key}={value!r} is out of range; allowed: {kind} in {left}, {right}{also}")


_UNSET_MEANS = {
  "train.num_steps": "from train.num_epochs",
  "train.eval_every": "at the end only",
  "train.max_eval_rows": "all rows",
  "mesh.num_devices": "all devices",
}


def _validate_run_sections(config: ml_collections.ConfigDict) -> None:
  """Signs and ranges of every numeric key of the train, optimizer, mesh, checkpoint and
  distributed sections, and the contradictions between them."""
  for key in (
    "train.batch_size",
    "train.eval_batch_size",
    "train.log_every",
    "train.steps_per_dispatch",
    "checkpoint.every_steps",
    "checkpoint.keep",
    "distributed.num_processes",
  ):
    _number(config, key, low=1, integer=True)
  _number(config, "train.num_steps", low=1, integer=True, unset=-1)
  _number(config, "train.eval_every", low=1, integer=True, unset=-1)
  _number(config, "train.max_eval_rows", low=1, integer=True, unset=-1)
  _number(config, "train.seed", low=0, high=2**32 - 1, integer=True)
  # num_epochs decides the number of steps when num_steps is -1; otherwise it is not read.
  _number(config, "train.num_epochs", low=0, low_open=config.train.num_steps == -1)
  _number(config, "optimizer.learning_rate", low=0, low_open=True)
  if "max_time_share" in config.checkpoint:  # absent from configs saved before it existed
    _number(config, "checkpoint.max_time_share", low=0, high=0.99)
  _number(config, "optimizer.weight_decay", low=0)
  _number(config, "optimizer.grad_clip", low=0)
  if "eval_metrics_on" in config.train:  # absent from configs saved before it existed
    _choice(config, "train.eval_metrics_on", ("auto", "device", "host"))
  if "lr_batch_scaling" in config.optimizer:  # absent from configs saved before it existed
    _choice(config, "optimizer.lr_batch_scaling", ("none", "linear", "sqrt"))
    _number(config, "optimizer.lr_reference_batch", low=1, integer=True)
    if not isinstance(config.optimizer.lr_scale_tables, bool):
      raise ConfigError(
        f"optimizer.lr_scale_tables={config.optimizer.lr_scale_tables!r} is not allowed; "
        "allowed: [True, False]"
      )
  _number(config, "mesh.num_devices", low=1, integer=True, unset=-1)
  if not isinstance(config.mesh.axis, str) or not config.mesh.axis:
    raise ConfigError(f"mesh.axis={config.mesh.axis!r}: give a non-empty name, e.g. 'data'")
  if config.mesh.num_devices > 0:  # -1 (all devices) is checked against the devices at start-up
    check_devices(config, int(config.mesh.num_devices), int(config.distributed.num_processes))
  _choice(config, "checkpoint.best_mode", ("max", "min"))
  metric = compat.get(config, "checkpoint.best_metric")
  if metric and (
    metric.count("/") != 1
    or metric.split("/")[0] not in BEST_TASKS
    or metric.split("/")[1] not in BEST_METRICS
  ):
    raise ConfigError(
      f"checkpoint.best_metric={metric!r} is not an eval metric; use task/metric "
      f"with task in {list(BEST_TASKS)} and metric in {list(BEST_METRICS)}, e.g. "
      "'ctcvr/auc'"
    )
  num = int(config.distributed.num_processes)
  _number(config, "distributed.process_id", low=0, high=max(num - 1, 0), integer=True)
  coordinator = config.distributed.coordinator
  if num > 1 and not coordinator:
    raise ConfigError(f"distributed.num_processes={num} needs distributed.coordinator (host:port)")
  if coordinator:
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
      raise ConfigError(
        f"distributed.coordinator={coordinator!r} is not HOST:PORT (a port in [1, 65535])"
      )


def _check_model(model: ml_collections.ConfigDict) -> None:
  """The model section: the name is registered, the network keys are in range, every model
  hyperparameter is within the range its model declares, and no key is unknown to every model."""
  model_registry.check_section(model)
  embed_dim = model.embed_dim
  if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim <= 0:
    raise ValueError(f"model.embed_dim={embed_dim!r} is not allowed: an int > 0")
  dropout = model.dropout
  if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
    raise ValueError(f"model.dropout={dropout!r} is not allowed: in [0, 1)")
  if not isinstance(model.get("fuse_towers", compat.ABSENT_MEANS["model.fuse_towers"]), bool):
    raise ValueError(f"model.fuse_towers={model.fuse_towers!r} is not allowed: True or False")


EMBEDDING_KEYS = ("optimizer", "init_std", "dtype", "sharding")  # besides the optimizers' own


def _check_embedding(embedding: ml_collections.ConfigDict) -> None:
  """The embedding section: a registered optimizer, every optimizer hyperparameter within the range
  its optimizer declares, init_std >= 0, and no key unknown to the engine and every optimizer."""
  opt_lib.check_section(embedding)
  known = (*EMBEDDING_KEYS, *opt_lib.hyperparameters())
  for key in embedding:
    if key not in known:
      raise ValueError(
        f"embedding.{key} is not a key of the engine or any optimizer; keys: {sorted(known)}"
      )
  std = embedding.init_std
  if isinstance(std, bool) or not isinstance(std, (int, float)) or not std >= 0:
    raise ValueError(f"embedding.init_std={std!r} is not allowed: a number >= 0")


def check_devices(config: ml_collections.ConfigDict, num_devices: int, num_processes: int) -> None:
  """Batch sizes must split evenly over devices (checked before compiling)."""
  if num_devices <= 0:
    raise ConfigError(f"mesh.num_devices={num_devices}: no devices to run on")
  for key in ("train.batch_size", "train.eval_batch_size"):
    v = int(get_path(config, key))
    if v % num_devices:
      raise ConfigError(
        f"{key}={v} is not divisible by the {num_devices} devices "
        f"({num_processes} process(es)); pick a multiple of {num_devices}"
      )
