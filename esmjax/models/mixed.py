"""bf16 towers with f32 accumulation, forward and backward: the `model.dtype=bfloat16` path.

Every tower matmul takes bf16 operands and accumulates in f32 (`preferred_element_type`); the
weights stay f32 (the master copy the optimizer updates), activations are cast to bf16 only where a
matmul reads them, and what leaves the towers (logits, gradients) is f32.

The backward pass is written out (`jax.custom_vjp`) because of how XLA:CPU lowers bf16 dots: a
bf16 × bf16 → f32 dot reaches its fast kernel (YNNPACK, AMX/AVX512-BF16) only when its left operand
contracts its last (minor) dimension; any other dot is widened to f32 first and runs at the f32
rate. Autodiff of `x @ w` produces the weight gradient `x.T @ g`, whose left operand contracts its
*first* dimension, and XLA folds or sinks every in-graph transpose back into that form (measured:
transposes through elementwise ops and optimisation barriers are moved into the dot). So the
backward pass runs *feature-major*: the output gradient enters as gᵀ [out, B] (for a head this is
a free reshape of [B]), and then every dot has its left operand contracting its minor dimension:

  weight gradient   dWᵀ [out, in] = gᵀ [out, B] @ a [B, in]      (a: the layer's bf16 input)
  input gradient    daᵀ [in, B]  = W [in, out] @ gᵀ [out, B]
  activation        gᵀ of the layer below = daᵀ · act'(y)ᵀ

and the towers' input gradient is dx [B, in] = g [B, T·h] @ kernelᵀ (a right operand contracting
its minor dimension is a fast form too). The transposes that must stay copies (act'(y)ᵀ and g:
a row-major layout constraint; the small weight gradients dWᵀ → dW, results of dots: gathers,
since XLA rewrites a dot result's transpose into the dot) are CPU-only: GPUs and TPUs take plain
transposes. The forward pass is batch-major as usual (`x @ W`, already the fast form). Dropout
masks and activations match `layers.tower_group` (same params, masks and RNG), so f32 and bf16 are
one model.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.layout import Layout, with_layout_constraint

BF16, F32 = jnp.bfloat16, jnp.float32


# Below this size on any axis a dot runs in f32: a head's [B, h] × [h, 1] is a matrix-vector
# product that XLA:CPU hands to its generic dot kernel, which has no bf16 × bf16 → f32 form.
_MIN_BF16_DIM = 16


def _mm(a, b):
  """a [M, K] @ b [K, N] in bf16, accumulated and returned in f32 (the fast dot form)."""
  dtype = BF16 if min(*a.shape, b.shape[1]) >= _MIN_BF16_DIM else F32
  return jax.lax.dot_general(
    a.astype(dtype), b.astype(dtype), (((1,), (0,)), ((), ())), preferred_element_type=F32
  )


def _mm_nt(a, b):
  """a [M, K] @ b [N, K]ᵀ in bf16 with f32 accumulation."""
  return jax.lax.dot_general(
    a.astype(BF16), b.astype(BF16), (((1,), (1,)), ((), ())), preferred_element_type=F32
  )


def _copy_transpose(a):
  """a.T materialised row-major: the layout constraint stops XLA from giving the transpose (and
  what it feeds) a transposed layout, which would send the dots reading it to f32."""
  return with_layout_constraint(a.T, Layout(major_to_minor=(0, 1)))


def _gather_transpose(a):
  """a.T as a gather: the transpose of a dot's *result* is otherwise rewritten into the dot (its
  operands swapped and transposed: the slow form), layout constraint or not."""
  m, n = a.shape
  perm = np.arange(m * n, dtype=np.int32).reshape(m, n).T.reshape(-1)
  return a.reshape(-1)[perm].reshape(n, m)


def _transpose(a, of_dot: bool = False):
  """a.T as a real copy on CPU (`of_dot`: a is a dot's result); GPUs and TPUs take a.T."""
  cpu = _gather_transpose if of_dot else _copy_transpose
  return jax.lax.platform_dependent(a, cpu=cpu, default=lambda a: a.T)


def _forward(act, keep, fused, has_tail, x, params, masks):
  """-> (outputs per tower [B, n_out] f32, residuals). params: per tower [(kernel, bias), ...]."""
  xb = x.astype(BF16)
  n_towers, n_layers = len(params), len(params[0])
  ys = [[None] * n_layers for _ in range(n_towers)]  # pre-activations, f32
  ins = [[None] * n_layers for _ in range(n_towers)]  # each layer's bf16 input
  first = 0
  if fused:
    kernel = jnp.concatenate([p[0][0] for p in params], axis=1)
    bias = jnp.concatenate([p[0][1] for p in params])
    y = _mm(xb, kernel) + bias
    width = params[0][0][0].shape[1]
    for t in range(n_towers):
      ys[t][0], ins[t][0] = y[:, t * width : (t + 1) * width], xb
    first = 1
  outs = []
  for t in range(n_towers):
    h = xb
    for i in range(n_layers):
      if i >= first:
        ins[t][i] = h
        ys[t][i] = _mm(h, params[t][i][0]) + params[t][i][1]
      h = ys[t][i]
      if i < n_layers - 1 or has_tail:  # a hidden layer
        h = act(h)
        if masks[t][i] is not None:
          h = jnp.where(masks[t][i], h / keep, 0.0)
        if i < n_layers - 1:
          h = h.astype(BF16)
    outs.append(h)
  return outs, (xb, ys, ins)


def _hidden_grad(act, keep, y, mask, gaT):
  """gᵀ of a hidden layer's pre-activation y [B, h] from the gradient of its output gaᵀ [h, B].

  The local derivative act'(y) (times the dropout scale) is formed batch-major and transposed as
  a copy: read through a transpose, XLA would give the product the transposed layout, and the
  dots that take it would fall back to f32."""
  deriv = jax.jvp(act, (y,), (jnp.ones_like(y),))[1]
  if mask is not None:
    deriv = jnp.where(mask, deriv / keep, 0.0)
  return gaT * _transpose(deriv)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def mixed_towers(act, keep, fused, has_tail, x, params, masks):
  """Towers [(kernel, bias) per layer] on x [B, in] -> per tower [B, n_out] f32.

  `has_tail`: the last layer is followed by the activation (and its mask) — towers without a
  head end on a hidden layer. `masks[t][i]`: dropout keep mask of layer i's output, or None.
  """
  return _forward(act, keep, fused, has_tail, x, params, masks)[0]


def _fwd(act, keep, fused, has_tail, x, params, masks):
  outs, res = _forward(act, keep, fused, has_tail, x, params, masks)
  return outs, (res, params, masks, jnp.zeros((), x.dtype))  # x's dtype, as a JAX value


def _bwd(act, keep, fused, has_tail, saved, cts):
  (xb, ys, ins), params, masks, x_zero = saved
  n_towers, n_layers = len(params), len(params[0])
  first = 1 if fused else 0
  grads = [[None] * n_layers for _ in range(n_towers)]
  g_first = []  # per tower: gᵀ of the first layer's pre-activation (fused) / dxᵀ (not fused)
  for t in range(n_towers):
    gT = cts[t].T  # [n_out, B]; a head's [B, 1] becomes [1, B] by a reshape
    if has_tail:
      gT = _hidden_grad(act, keep, ys[t][-1], masks[t][-1], gT)
    for i in reversed(range(n_layers)):
      kernel = params[t][i][0]
      gb = gT.astype(BF16)
      if i >= first:
        grads[t][i] = (_transpose(_mm(gb, ins[t][i]), of_dot=True), jnp.sum(gT, axis=1))
        daT = _mm(kernel, gb)  # [in, B]
        if i == 0:
          g_first.append(daT)
        else:
          gT = _hidden_grad(act, keep, ys[t][i - 1], masks[t][i - 1], daT)
      else:
        g_first.append(gT)
  if fused:
    gT = jnp.concatenate(g_first, axis=0)  # [T·h, B]
    gb = gT.astype(BF16)
    dwT = _mm(gb, xb)  # [T·h, in]
    width = params[0][0][0].shape[1]
    for t in range(n_towers):
      cols = slice(t * width, (t + 1) * width)
      grads[t][0] = (_transpose(dwT[cols], of_dot=True), jnp.sum(gT[cols], 1))
    kernel = jnp.concatenate([p[0][0] for p in params], axis=1)
    # dx [B, in] = g [B, T·h] @ kernelᵀ: a right operand contracting its minor dimension is a
    # fast form too, and g's copy [B, T·h] is cheaper than transposing the result [in, B].
    dx = _mm_nt(_transpose(gb), kernel)
  else:
    dx = _transpose(functools.reduce(jnp.add, g_first), of_dot=True)
  grads = [[(g.astype(F32), b.astype(F32)) for g, b in gt] for gt in grads]
  dx = dx.astype(x_zero.dtype)
  return dx, grads, jax.tree_util.tree_map(lambda m: None, masks)


mixed_towers.defvjp(_fwd, _bwd)
