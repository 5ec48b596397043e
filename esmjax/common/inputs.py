"""A model's input columns: what they are, how they are checked, and where stray ids go.

A model reads four arrays per batch (the dataset's input columns):

    sparse  int32   [b, F]  one id per single-valued field; 0 = PAD, 1 = OOV
    mv_ids  int32   [b, L]  each multi-valued field's `max_len` slots side by side; 0 = PAD
    mv_w    float32 [b, L]  their weights (0 in empty slots)
    dense   float32 [b, Dn] raw dense values (the model normalises / bucketises them)

An id is a row of its field's table only inside [0, vocab_size); the stacked table puts the next
field's rows right after, so an id outside that range would read another field's rows. Such
*stray* ids are scored as the field's OOV row (id 1), the way serving systems treat values unseen
at training: `map_strays` does it on the host (in the id's own dtype, so an int64 2**32 + 5 is a
stray and never becomes 5), `map_strays_in_graph` inside a jitted or exported function, and both
count what they mapped per field. Values that are not ids at all (NaN, 2.5) are refused by
`check_values`, as are non-finite weights and dense values.

The library's predict (`esmjax.api`, `esmjax.serving.predict`) and the serving artifact
(`esmjax.serving.export`)
both read these rules from here; NumPy only, jax.numpy only inside the traced function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from esmjax.common.schema import OOV

INPUT_KEYS = ("sparse", "mv_ids", "mv_w", "dense")  # what a model reads (labels are not inputs)
STRAYS_KEY = "oov_ids"  # per-row stray-id counts [b, fields] that the counting predict step adds


@dataclasses.dataclass(frozen=True)
class InputColumns:
  """One input array: its dtype, the field behind each column and, for ids, their vocabulary."""

  name: str
  dtype: str
  fields: tuple[str, ...]  # per column
  vocab: tuple[int, ...] | None = None  # per column (id inputs only): ids lie in [0, vocab)

  @property
  def width(self) -> int:
    return len(self.fields)


def columns(schema) -> tuple[InputColumns, ...]:
  """The model's inputs for `schema`, in argument order."""
  mv_fields = tuple(f.name for f in schema.multi for _ in range(int(f.max_len)))
  mv_vocab = tuple(int(f.vocab_size) for f in schema.multi for _ in range(int(f.max_len)))
  return (
    InputColumns(
      "sparse",
      "int32",
      tuple(f.name for f in schema.sparse),
      tuple(int(f.vocab_size) for f in schema.sparse),
    ),
    InputColumns("mv_ids", "int32", mv_fields, mv_vocab),
    InputColumns("mv_w", "float32", mv_fields),
    InputColumns("dense", "float32", tuple(f.name for f in schema.dense)),
  )


def columns_from_signature(inputs: Sequence[dict[str, Any]]) -> tuple[InputColumns, ...]:
  """The same description read back from an export's signature (`esmjax.serving.export`)."""
  out = []
  for x in inputs:
    fields: list[str] = []
    for f in x.get("fields", []):  # one entry per column, or per field with its [start, end)
      lo, hi = f.get("columns", (len(fields), len(fields) + 1))
      fields += [f["name"]] * (hi - lo)
    fields += [""] * (int(x["shape"][1]) - len(fields))
    vocab = tuple(int(v) for v in x["vocab_sizes"]) if "vocab_sizes" in x else None
    out.append(InputColumns(x["name"], x["dtype"], tuple(fields), vocab))
  return tuple(out)


def id_fields(schema) -> tuple[str, ...]:
  """The fields whose ids are counted, in the column order of the `STRAYS_KEY` counts."""
  return tuple(f.name for f in schema.sparse) + tuple(f.name for f in schema.multi)


def check_values(col: InputColumns, a: np.ndarray, where: str) -> None:
  """Refuses what no id / weight / dense value can be; a ValueError names the input, column,
  field and value. Ids must be integers (integral floats pass); weights and dense values finite."""
  if a.dtype.kind not in "biuf":
    raise ValueError(f"{where}: {col.name} has dtype {a.dtype}; expected numbers ({col.dtype})")
  if col.vocab is None:  # checked as cast: a float64 beyond the float32 range is not finite
    with np.errstate(over="ignore"):
      bad = ~np.isfinite(a.astype(col.dtype, copy=False))
    what = f"a value that is not a finite {col.dtype}"
  elif a.dtype.kind == "f":
    with np.errstate(invalid="ignore"):
      bad = ~np.isfinite(a) | (a != np.round(a))
    what = "a value that is not an integer id"
  else:
    return
  if bad.any():
    row, c = (int(i) for i in np.argwhere(bad)[0])
    raise ValueError(
      f"{where}: {col.name} column {c} (field {col.fields[c]!r}) holds "
      f"{a[row, c].item()!r} at row {row}, {what}"
    )


def strays(col: InputColumns, a: np.ndarray) -> np.ndarray:
  """Bool [n, width]: the ids of `a` outside [0, vocab) of their column, compared in a's dtype."""
  vocab = np.asarray(col.vocab, np.int64)
  if a.dtype.kind == "u":
    return a >= vocab.astype(np.uint64)
  return (a < 0) | (a >= vocab)


def describe_stray(col: InputColumns, a: np.ndarray, mask: np.ndarray, where: str) -> str:
  """One line naming the first stray id of `a` (for callers that refuse strays)."""
  row, c = (int(i) for i in np.argwhere(mask)[0])
  v = a[row, c]
  return (
    f"{where}: {col.name} column {c} has ids outside [0, {col.vocab[c]}) of field "
    f"{col.fields[c]!r} ({v.item()!r} at row {row}); map unseen values to OOV = 1"
  )


def map_strays(col: InputColumns, a: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
  """(ids as `col.dtype` with strays replaced by OOV, {field: strays mapped}) on the host."""
  mask = strays(col, a)
  counts: dict[str, int] = {}
  if mask.any():
    for c in np.flatnonzero(mask.any(0)):
      counts[col.fields[c]] = counts.get(col.fields[c], 0) + int(mask[:, c].sum())
    a = np.where(mask, OOV, a)
  return a.astype(col.dtype), counts


def map_strays_in_graph(schema, batch: dict[str, Any]):
  """(batch with stray ids replaced by OOV, int32 [b, len(id_fields)] strays per row and field),
  traced: per field, before any lookup, so a stray never reaches another field's rows."""
  import jax.numpy as jnp

  sparse, mv = columns(schema)[:2]
  out, counts = dict(batch), []
  for col in (sparse, mv):
    if not col.width:
      continue
    ids = batch[col.name].astype(jnp.int32)
    bad = (ids < 0) | (ids >= jnp.asarray(col.vocab, jnp.int32))
    out[col.name] = jnp.where(bad, jnp.int32(OOV), ids)
    bad = bad.astype(jnp.int32)
    if col.name == "sparse":
      counts.append(bad)
    else:
      lo = 0
      for f in schema.multi:
        counts.append(bad[:, lo : lo + f.max_len].sum(1, keepdims=True))
        lo += f.max_len
  n = batch["sparse"].shape[0]
  return out, (jnp.concatenate(counts, 1) if counts else jnp.zeros((n, 0), jnp.int32))


def add_counts(total: dict[str, int], more: dict[str, int]) -> dict[str, int]:
  for k, v in more.items():
    if v:
      total[k] = total.get(k, 0) + int(v)
  return total
