"""The row layout of a train state's leaves: which leaves are table rows (`ROW_LEAVES`, axis 0 the
padded table row), and cutting or padding them to another row count (`repad`), so a checkpoint
written on N devices restores on M (the padded row count depends on the device count)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

ROW_LEAVES = ("tables", "slots", "scratch")  # leaves whose axis 0 is the (padded) table row


def leaves(tree) -> dict[str, Any]:
  return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def is_row_leaf(path: str, shape, padded_rows: int) -> bool:
  top = path[1:].split("[")[0].split(".")[0]  # keystr: ".tables['shared']" -> "tables"
  return top in ROW_LEAVES and len(shape) >= 1 and shape[0] == padded_rows


def repad(state, resize: dict[str, Any], rows: int):
  """Cuts or pads axis 0 of the `resize` leaves to `rows` (scratch pads with -1, its idle value)."""

  def fix(path, x):
    p = jax.tree_util.keystr(path)
    if p not in resize:
      return x
    fill = -1 if p.startswith(".scratch") else 0

    def body(a):
      if a.shape[0] >= rows:
        return a[:rows]
      pad = jnp.full((rows - a.shape[0],) + a.shape[1:], fill, a.dtype)
      return jnp.concatenate([a, pad])

    return jax.jit(body, out_shardings=resize[p])(x)

  return jax.tree_util.tree_map_with_path(fix, state)
