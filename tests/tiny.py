"""Tiny schemas, blocks and datasets for tests (no synthetic generator needed)."""

from __future__ import annotations

import numpy as np

from esmjax import config as config_lib
from esmjax.data import dataset as D


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
  for k, v in overrides.items():
    sect, name = k.split(".")
    c[sect][name] = v
  return c


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
  from esmjax.loop.hooks import Hooks

  def batches(it, start):
    for i, b in enumerate(it, start + 1):
      yield poisoned(b) if i == step else b

  return Hooks(batches=batches)
