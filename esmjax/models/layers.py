"""Building blocks shared by every model: the field-input assembly and the MLP tower."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = {"relu": nn.relu, "gelu": nn.gelu, "tanh": jnp.tanh, "sigmoid": nn.sigmoid,
               "swish": nn.swish, "leaky_relu": nn.leaky_relu}
DENSE_MODES = ("tanh", "bucket", "none")


class FieldInputs(nn.Module):
  """[B, C, D] looked-up rows + weights + dense values -> the towers' input vector [B, K·D].

  Single-valued fields pass through; each multi-valued field is pooled over its slots with its
  weights (weighted sum, or weighted mean); dense features enter as bucketised ids (already in
  the rows) or as normalise + tanh embeddings (the ESM2 paper's variant): e = tanh(x̂·u + b).
  """

  num_sparse: int
  mv_lens: tuple[int, ...]
  mv_pooling: tuple[str, ...]
  dense_mode: str
  dense_mean: tuple[float, ...]
  dense_std: tuple[float, ...]
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, rows, mv_w, dense):
    rows = rows.astype(self.dtype)
    b, _, d = rows.shape
    parts = [rows[:, :self.num_sparse]]
    off = self.num_sparse
    if self.mv_lens:
      w_off = 0
      pooled = []
      for length, pool in zip(self.mv_lens, self.mv_pooling):
        r = rows[:, off:off + length]
        w = mv_w[:, w_off:w_off + length].astype(self.dtype)
        s = jnp.einsum("bld,bl->bd", r, w)
        if pool == "mean":
          s = s / jnp.maximum(jnp.sum(w, axis=1, keepdims=True), 1e-6)
        pooled.append(s)
        off += length
        w_off += length
      parts.append(jnp.stack(pooled, 1))
    n_dense = len(self.dense_mean)
    if n_dense and self.dense_mode == "bucket":
      parts.append(rows[:, off:off + n_dense])
    elif n_dense and self.dense_mode == "tanh":
      x = (dense - np.asarray(self.dense_mean, np.float32)) / np.asarray(self.dense_std, np.float32)
      u = self.param("dense_u", nn.initializers.normal(1.0), (n_dense, d), jnp.float32)
      c = self.param("dense_b", nn.initializers.zeros, (n_dense, d), jnp.float32)
      parts.append(jnp.tanh(x[:, :, None] * u + c).astype(self.dtype))
    return jnp.concatenate(parts, axis=1).reshape(b, -1)


class Tower(nn.Module):
  """MLP → one logit. Each tower is its own submodule, so its initialisation differs."""

  hidden: Sequence[int]
  activation: str = "relu"
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    act = ACTIVATIONS[self.activation]
    for h in self.hidden:
      x = act(nn.Dense(h, dtype=self.dtype)(x))
      if self.dropout:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(1, dtype=self.dtype)(x)[:, 0].astype(jnp.float32)
