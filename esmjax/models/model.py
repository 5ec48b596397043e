"""What a model is: the `Model` base class every registered model (one module each) fills in.

A model owns
  * its towers and the embedding set each reads (`towers`; `table_sets` follow from them),
  * the labels it trains on (`labels`; `label_columns` maps them onto a dataset's columns),
  * its network (`module()`: `layers.TowerNet` unless the model brings its own Flax module),
  * how the network's outputs compose into log-probabilities (`log_probs`) and its loss (`loss`),
  * its hyperparameters: a frozen dataclass `Hparams` whose fields (declared with
    `esmjax.common.hparams.field`) are read from `config.model` by name, checked against their
    declared ranges, and listed in the default config.
All probabilities are returned as logs; products are sums (models.losses). `predict_step` returns
{pctr, pcvr, pctcvr[, pctavr]} = exp of `log_probs`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging

from esmjax.common import hparams
from esmjax.models import layers

# Keys of `config.model` every model reads (the network's shape); the rest are hyperparameters.
NETWORK_KEYS = (
  "name",
  "embed_dim",
  "hidden",
  "activation",
  "dropout",
  "dense_mode",
  "dtype",
  "fuse_towers",
)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
DTYPE_CHOICES = ("auto", *DTYPES)
# CPU flags of a bf16 matmul unit: with either, XLA:CPU's bf16 × bf16 → f32 kernel outruns its f32
# one (the shipped main jobs at batch 1,024 train 1.84-2.07x faster in bf16 on a Xeon with AMX,
# 1.37-1.48x on an AMD EPYC with AVX-512-BF16 alone: benchmarks/results/cpu_defaults*.md);
# without, bf16 operands are widened and f32 is as fast or faster.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> frozenset[str]:
  """The flags line of /proc/cpuinfo (empty where there is none: not Linux)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          return frozenset(line.split(":", 1)[1].split())
  except OSError:
    pass
  return frozenset()


def auto_dtype(backend: str | None = None, flags: frozenset[str] | None = None) -> tuple[str, str]:
  """(dtype name, why) of `model.dtype=auto`: bfloat16 on GPU/TPU and on CPUs with a bf16 matmul
  unit (`BF16_CPU_FLAGS`), float32 elsewhere."""
  backend = backend or jax.default_backend()
  if backend != "cpu":
    return "bfloat16", f"backend {backend} computes bf16 natively"
  flags = cpu_flags() if flags is None else flags
  have = [f for f in BF16_CPU_FLAGS if f in flags]
  if have:
    return "bfloat16", f"CPU has {'/'.join(have)}"
  return "float32", f"CPU has none of {'/'.join(BF16_CPU_FLAGS)}"


@functools.cache
def _auto_dtype_logged() -> str:
  name, why = auto_dtype()
  logging.info("model.dtype=auto -> %s (%s; override with --config.model.dtype)", name, why)
  return name


def resolve_dtype(name: str) -> Any:
  """`config.model.dtype` -> the towers' compute dtype ('auto' decided once per process, logged)."""
  if name not in DTYPE_CHOICES:
    raise ValueError(f"model.dtype={name!r} is not allowed; allowed: {list(DTYPE_CHOICES)}")
  return DTYPES[_auto_dtype_logged() if name == "auto" else name]


@dataclasses.dataclass(frozen=True)
class Network:
  """The network keys of `config.model`, with the schema's input facts."""

  spec: layers.InputSpec
  embed_dim: int
  hidden: tuple[int, ...] = (200, 80)
  activation: str = "relu"
  dropout: float = 0.0
  dtype: Any = jnp.float32
  fuse_towers: bool = True

  @classmethod
  def from_config(cls, section: Mapping[str, Any], schema) -> Network:
    return cls(
      spec=layers.InputSpec.from_schema(schema, section["dense_mode"]),
      embed_dim=int(section["embed_dim"]),
      hidden=tuple(int(h) for h in section["hidden"]),
      activation=section["activation"],
      dropout=float(section["dropout"]),
      dtype=resolve_dtype(section.get("dtype", "float32")),  # absent: compat.ABSENT_MEANS
      fuse_towers=bool(section.get("fuse_towers", True)),
    )

  @property
  def in_dim(self) -> int:
    """Width of a tower's input: every field's embedding side by side."""
    return self.spec.width(self.embed_dim)


@dataclasses.dataclass(frozen=True)
class NoHparams:
  """A model without hyperparameters of its own."""


@dataclasses.dataclass(frozen=True)
class Model:
  """A model: `net` (its network; None for a model used for its math alone) and `hp` (an instance
  of its `Hparams`; None = the declared defaults)."""

  net: Network | None = None
  hp: Any = None

  name: ClassVar[str] = ""  # the registry key: `config.model.name`, also the module's name
  order: ClassVar[int] = 100  # position in listings (the papers' order first)
  towers: ClassVar[tuple[tuple[str, str], ...]] = ()  # (tower, embedding set it reads)
  labels: ClassVar[tuple[str, ...]] = ("click", "buy")  # label names `loss` reads
  Hparams: ClassVar[type] = NoHparams

  def __post_init__(self):
    if self.hp is None:
      object.__setattr__(self, "hp", self.Hparams())
    if not isinstance(self.hp, self.Hparams):
      raise TypeError(f"{type(self).__name__}: hp is a {type(self.hp).__name__}, not its Hparams")

  @classmethod
  def from_config(cls, section: Mapping[str, Any], schema) -> Model:
    """The model for `config.model` on `schema`: network keys, and `Hparams` fields by name."""
    return cls(
      Network.from_config(section, schema), hparams.from_section(cls.Hparams, section, "model")
    )

  @property
  def table_sets(self) -> tuple[str, ...]:
    """The embedding sets (one stacked table each) in the order towers first read them."""
    return tuple(dict.fromkeys(s for _, s in self.towers))

  # The network.

  @functools.cached_property
  def module(self) -> nn.Module:
    """The Flax module mapping ({set: rows [B, C, D]}, mv_w, dense, train) -> {output: [B]}."""
    n = self.net
    return layers.TowerNet(
      towers=self.towers,
      spec=n.spec,
      hidden=n.hidden,
      activation=n.activation,
      dropout=n.dropout,
      dtype=n.dtype,
      fuse=n.fuse_towers,
    )

  def init(self, rng, emb, mv_w, dense):
    return self.module.init(rng, emb, mv_w, dense, train=False)

  def apply(self, variables, emb, mv_w, dense, train: bool = False, rngs=None):
    return self.module.apply(variables, emb, mv_w, dense, train=train, rngs=rngs)

  def tower_flops(self) -> dict[str, float]:
    """{tower: matmul FLOPs per example, forward + backward} (benchmarks' FLOP counts)."""
    sizes = (self.net.in_dim, *self.net.hidden, 1)
    return {t: layers.mlp_flops(sizes) for t, _ in self.towers}

  def flops_per_example(self) -> float:
    return float(sum(self.tower_flops().values()))

  # Labels, probabilities, loss.

  def label_columns(self, dataset_labels: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """{label: columns of batch['labels'] whose OR it is}: every dataset label as recorded; a model
    deriving a label it needs (ESM2's DAction) adds it here. ValueError naming what is missing."""
    cols = {name: (i,) for i, name in enumerate(dataset_labels)}
    missing = [l for l in self.labels if l not in cols]
    if missing:
      raise ValueError(
        f"model.name={self.name!r} needs label(s) {missing}, but the dataset has "
        f"only {list(dataset_labels)}"
      )
    return cols

  def log_probs(self, z: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """{log_pctr, log_pcvr, log_pctcvr[, log_pctavr]} from the network's outputs."""
    raise NotImplementedError

  def loss(
    self, z: dict[str, jax.Array], labels: dict[str, jax.Array], rng: jax.Array
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(total loss, {per-task losses}) over the batch's impressions; `labels` are float [B]."""
    raise NotImplementedError

  def probabilities(self, z: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return probabilities(self.log_probs(z))


def probabilities(log_probs: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """{pctr, ...} from {log_pctr, ...}."""
  return {k[4:]: jnp.exp(v) for k, v in log_probs.items()}
