"""What a dataset feeds a model: its fields, vocabulary sizes, dense statistics and labels.

A leaf module (NumPy only): `data/` writes and reads schemas, `embedding/` lays its tables out from
them, `models/` sizes their inputs from them, and none of those needs another to know a schema.

Ids of every field are in [0, vocab_size): 0 = PAD (an empty slot), 1 = OOV (a value not seen when
the dataset's vocabulary was built).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

PAD = 0
OOV = 1
LABELS = ("click", "buy", "cart", "wish", "daction")


class DatasetError(ValueError):
  """A dataset (or its schema) is missing, incomplete or inconsistent; the message names the
  path."""


@dataclasses.dataclass(frozen=True)
class SparseField:
  name: str
  vocab_size: int  # ids in [0, vocab_size); includes PAD and OOV
  group: str = "user"  # user | item | context | combo | dense_bucket: informational


@dataclasses.dataclass(frozen=True)
class MultiField:
  name: str
  vocab_size: int
  max_len: int  # slots per row; longer lists are truncated (counted in the manifest)
  pooling: str = "sum"  # sum | mean: weighted sum of rows, or weighted mean
  group: str = "user"


@dataclasses.dataclass(frozen=True)
class DenseField:
  name: str
  mean: float = 0.0
  std: float = 1.0
  boundaries: tuple[float, ...] = ()  # bucket edges for the bucketised variant (len = buckets - 1)


@dataclasses.dataclass(frozen=True)
class Schema:
  sparse: tuple[SparseField, ...] = ()
  multi: tuple[MultiField, ...] = ()
  dense: tuple[DenseField, ...] = ()
  labels: tuple[str, ...] = ("click", "buy")
  truth: tuple[str, ...] = ()

  def __post_init__(self):
    unknown = [l for l in self.labels if l not in LABELS]
    if unknown:
      raise DatasetError(f"schema.labels has unknown label(s) {unknown}; allowed: {list(LABELS)}")
    for f in self.multi:
      if f.pooling not in ("sum", "mean"):
        raise DatasetError(
          f"multi-valued field {f.name!r}: pooling={f.pooling!r}; allowed: ['sum', 'mean']"
        )
    names = [f.name for f in (*self.sparse, *self.multi, *self.dense)]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
      raise DatasetError(f"schema has duplicate field names {dup}")

  @property
  def mv_offsets(self) -> tuple[int, ...]:
    """Column offset of each multi-valued field inside `mv_ids` / `mv_w`."""
    return tuple(int(x) for x in np.cumsum([0] + [f.max_len for f in self.multi])[:-1])

  @property
  def mv_total_len(self) -> int:
    return int(sum(f.max_len for f in self.multi))

  def label_index(self, name: str) -> int:
    if name not in self.labels:
      raise DatasetError(f"label {name!r} is not in this dataset; it has {list(self.labels)}")
    return self.labels.index(name)

  def input_difference(self, other: Schema) -> str | None:
    """The first difference between this schema's model inputs and `other`'s, or None.

    Inputs are what a trained model reads: the fields in order, each field's vocabulary size (an
    id means a row of its table), the multi-valued layouts and poolings, and the dense fields with
    the statistics and bucket edges that normalise them. Labels and ground truth are not inputs.
    """
    for kind, mine, theirs in (
      ("single-valued", self.sparse, other.sparse),
      ("multi-valued", self.multi, other.multi),
      ("dense", self.dense, other.dense),
    ):
      names, other_names = [f.name for f in mine], [f.name for f in theirs]
      if names != other_names:
        return f"{kind} fields differ: {names} vs {other_names}"
      for a, b in zip(mine, theirs, strict=True):
        for key in [f.name for f in dataclasses.fields(a) if f.name not in ("name", "group")]:
          va, vb = getattr(a, key), getattr(b, key)
          both_float = isinstance(va, float) and isinstance(vb, float)
          if both_float and (va == vb or (va != va and vb != vb)):
            continue
          if va != vb:
            return f"{kind} field {a.name!r}: {key} {va!r} vs {vb!r}"
    return None

  def to_json(self) -> dict[str, Any]:
    return {
      "sparse": [dataclasses.asdict(f) for f in self.sparse],
      "multi": [dataclasses.asdict(f) for f in self.multi],
      "dense": [dict(dataclasses.asdict(f), boundaries=list(f.boundaries)) for f in self.dense],
      "labels": list(self.labels),
      "truth": list(self.truth),
    }

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> Schema:
    return cls(
      sparse=tuple(SparseField(**f) for f in d.get("sparse", [])),
      multi=tuple(MultiField(**f) for f in d.get("multi", [])),
      dense=tuple(
        DenseField(**dict(f, boundaries=tuple(f.get("boundaries", ())))) for f in d.get("dense", [])
      ),
      labels=tuple(d.get("labels", ("click", "buy"))),
      truth=tuple(d.get("truth", ())),
    )
