"""Building blocks shared by every model: the field-input assembly and the MLP towers.

`TowerNet` is the network of every model made of "MLP towers on embedding sets": one
`FieldInputs` per set, then the towers. Towers that read the same set are computed together
(`tower_group`): their first layers are one [B, in] × [in, T·h] matmul over the side-by-side
kernels; the layers after it run per tower (on 2 CPU cores a batched [T, B, h] × [T, h, h']
matmul measured no faster, and costs a transpose). The params keep the per-tower tree of
`Tower` (`tower_<t>/Dense_<i>/{kernel,bias}`), with the same initialisation and dropout masks, so
fused and separate towers are one model; only the first layer's summation order differs (a
[in, T·h] matmul is blocked differently from T [in, h] ones), which moves the output by float32
roundoff. `fuse=False` computes every tower on its own (the reference, bit-identical to `Tower`).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from esmjax.models import mixed

ACTIVATIONS = {
  "relu": nn.relu,
  "gelu": nn.gelu,
  "tanh": jnp.tanh,
  "sigmoid": nn.sigmoid,
  "swish": nn.swish,
  "leaky_relu": nn.leaky_relu,
}
DENSE_MODES = ("tanh", "bucket", "none")


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """The schema facts `FieldInputs` needs: field counts, pooling and dense normalisation."""

  num_sparse: int
  mv_lens: tuple[int, ...]
  mv_pooling: tuple[str, ...]
  dense_mode: str
  dense_mean: tuple[float, ...]
  dense_std: tuple[float, ...]

  @classmethod
  def from_schema(cls, schema, dense_mode: str) -> InputSpec:
    dense = schema.dense if dense_mode != "none" else ()
    return cls(
      num_sparse=len(schema.sparse),
      mv_lens=tuple(int(f.max_len) for f in schema.multi),
      mv_pooling=tuple(f.pooling for f in schema.multi),
      dense_mode=dense_mode,
      dense_mean=tuple(float(f.mean) for f in dense),
      dense_std=tuple(float(f.std) or 1.0 for f in dense),
    )

  @property
  def num_fields(self) -> int:
    """Fields of the towers' input: single-valued, pooled multi-valued and dense ones."""
    return self.num_sparse + len(self.mv_lens) + len(self.dense_mean)

  def width(self, dim: int) -> int:
    return self.num_fields * dim


class FieldInputs(nn.Module):
  """[B, C, D] looked-up rows + weights + dense values -> the towers' input vector [B, K·D].

  Single-valued fields pass through; each multi-valued field is pooled over its slots with its
  weights (weighted sum, or weighted mean); dense features enter as bucketised ids (already in
  the rows) or as normalise + tanh embeddings (the ESM2 paper's variant): e = tanh(x̂·u + b).
  """

  spec: InputSpec
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, rows, mv_w, dense):
    spec = self.spec
    rows = rows.astype(self.dtype)
    b, _, d = rows.shape
    parts = [rows[:, : spec.num_sparse]]
    off = spec.num_sparse
    if spec.mv_lens:
      w_off = 0
      pooled = []
      for length, pool in zip(spec.mv_lens, spec.mv_pooling, strict=True):
        r = rows[:, off : off + length]
        w = mv_w[:, w_off : w_off + length].astype(self.dtype)
        s = jnp.einsum("bld,bl->bd", r, w)
        if pool == "mean":
          s = s / jnp.maximum(jnp.sum(w, axis=1, keepdims=True), 1e-6)
        pooled.append(s)
        off += length
        w_off += length
      parts.append(jnp.stack(pooled, 1))
    n_dense = len(spec.dense_mean)
    if n_dense and spec.dense_mode == "bucket":
      parts.append(rows[:, off : off + n_dense])
    elif n_dense and spec.dense_mode == "tanh":
      x = (dense - np.asarray(spec.dense_mean, np.float32)) / np.asarray(spec.dense_std, np.float32)
      u = self.param("dense_u", nn.initializers.normal(1.0), (n_dense, d), jnp.float32)
      c = self.param("dense_b", nn.initializers.zeros, (n_dense, d), jnp.float32)
      parts.append(jnp.tanh(x[:, :, None] * u + c).astype(self.dtype))
    return jnp.concatenate(parts, axis=1).reshape(b, -1)


class Tower(nn.Module):
  """MLP → one logit, one tower on its own (the reference `tower_group` equals)."""

  hidden: Sequence[int]
  activation: str = "relu"
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    act = ACTIVATIONS[self.activation]
    for h in self.hidden:
      x = act(nn.Dense(h, dtype=self.dtype)(x))
      if self.dropout:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(1, dtype=self.dtype)(x)[:, 0].astype(jnp.float32)


class _Affine(nn.Module):
  """The params of one `nn.Dense` (its names, initialisers and RNG path), returned unapplied."""

  in_features: int
  features: int

  @nn.compact
  def __call__(self):
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (self.in_features, self.features), jnp.float32
    )
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    return kernel, bias


class _KeepMask(nn.Module):
  """The keep mask an `nn.Dropout` of this name would draw (same RNG stream and call)."""

  rate: float

  @nn.compact
  def __call__(self, shape):
    return jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.rate, shape)


class _TowerParts(nn.Module):
  """One tower's layer params (`Dense_<i>`) and dropout masks (`Dropout_<i>`), as `Tower` names
  them."""

  sizes: tuple[int, ...]  # input, hidden..., [1]
  num_hidden: int
  rate: float

  @nn.compact
  def __call__(self, batch: int, train: bool):
    affine = [
      _Affine(a, b, name=f"Dense_{i}")() for i, (a, b) in enumerate(itertools.pairwise(self.sizes))
    ]
    masks = [
      _KeepMask(self.rate, name=f"Dropout_{i}")((batch, self.sizes[i + 1]))
      if train and self.rate
      else None
      for i in range(self.num_hidden)
    ]
    return affine, masks


def _dense(x, kernel, bias, dtype):
  """`nn.Dense`'s arithmetic: promote to `dtype`, contract the last axis, add the bias."""
  x, kernel, bias = x.astype(dtype), kernel.astype(dtype), bias.astype(dtype)
  y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
  return y + bias


def tower_group(
  names: Sequence[str],
  x,
  *,
  hidden: Sequence[int],
  activation: str,
  dropout: float,
  dtype,
  train: bool,
  fuse: bool = True,
  head: bool = True,
) -> dict[str, jax.Array]:
  """Towers `tower_<name>` on one input x [B, in] -> {name: logit [B] f32} (head) or {name: last
  hidden [B, h]} (no head). Call inside a compact module: the towers become its submodules."""
  hidden = tuple(hidden)
  sizes = (x.shape[-1], *hidden) + ((1,) if head else ())
  parts = [
    _TowerParts(sizes, len(hidden), dropout, name=f"tower_{t}")(x.shape[0], train) for t in names
  ]
  act = ACTIVATIONS[activation]
  keep = 1.0 - dropout
  if jnp.dtype(dtype) == jnp.bfloat16:
    fused = fuse and len(names) > 1 and bool(hidden)
    params = [[tuple(a) for a in p[0]] for p in parts]
    masks = [list(p[1]) + [None] * (len(sizes) - 1 - len(p[1])) for p in parts]
    outs = mixed.mixed_towers(act, keep, fused, not head, x, params, masks)
    if head:
      return {t: h[:, 0] for t, h in zip(names, outs, strict=True)}
    return dict(zip(names, outs, strict=True))
  hs, first = [x] * len(names), 0
  if fuse and len(names) > 1 and hidden:
    kernel = jnp.concatenate([p[0][0][0].astype(dtype) for p in parts], axis=1)
    bias = jnp.concatenate([p[0][0][1].astype(dtype) for p in parts])
    y = _dense(x, kernel, bias, dtype)
    hs, first = [y[:, j * hidden[0] : (j + 1) * hidden[0]] for j in range(len(names))], 1
  for i in range(len(sizes) - 1):
    for j, (affine, masks) in enumerate(parts):
      if i >= first:
        hs[j] = _dense(hs[j], *affine[i], dtype)
      if i < len(hidden):
        hs[j] = act(hs[j])
        if masks[i] is not None:
          hs[j] = jax.lax.select(masks[i], hs[j] / keep, jnp.zeros_like(hs[j]))
  if head:
    return {t: h[:, 0].astype(jnp.float32) for t, h in zip(names, hs, strict=True)}
  return dict(zip(names, hs, strict=True))


def mlp_flops(sizes: Sequence[int]) -> float:
  """Matmul FLOPs per example of an MLP with these layer sizes, forward + backward: 2·MACs forward,
  4·MACs backward (input and weight gradients)."""
  return 6.0 * float(sum(a * b for a, b in itertools.pairwise(sizes)))


class TowerNet(nn.Module):
  """`FieldInputs` per embedding set, then MLP towers -> {tower: logit [B]}; the towers on one set
  run as one `tower_group`."""

  towers: tuple[tuple[str, str], ...]  # (tower, embedding set)
  spec: InputSpec
  hidden: tuple[int, ...] = (200, 80)
  activation: str = "relu"
  dropout: float = 0.0
  dtype: Any = jnp.float32
  fuse: bool = True

  @nn.compact
  def __call__(self, emb: dict[str, jax.Array], mv_w, dense, train: bool = False):
    out = {}
    for s in dict.fromkeys(s for _, s in self.towers):
      # Pooling and the dense embeddings stay f32 (the towers cast their input to bf16 for the
      # matmul), so the rows' gradient, which the table optimizers read, is f32 too.
      x = FieldInputs(self.spec, jnp.float32, name=f"inputs_{s}")(emb[s], mv_w, dense)
      names = [t for t, ts in self.towers if ts == s]
      out.update(
        tower_group(
          names,
          x,
          hidden=self.hidden,
          activation=self.activation,
          dropout=self.dropout,
          dtype=self.dtype,
          train=train,
          fuse=self.fuse,
        )
      )
    return {t: out[t] for t, _ in self.towers}
