"""The label-leakage guard: a feature column that gives a label away.

A user of another framework left the CTCVR label among the features and got a CVR AUC of 1.0; here
such a column is reported when the data is ingested. From running statistics of the written
blocks (mergeable across workers; no second pass):

  * a dense column separates a label perfectly: every row with the label 1 lies above (or below)
    every row with the label 0 — a copy of the label, or a count that is non-zero only for buyers;
  * a single-valued id column with at most `MAX_VALUES` distinct values is a function of a label
    (each value seen with one label value only), and every value seen with the label 1 holds at
    least `MIN_ROWS` rows (a value seen once or twice is pure by chance).

Both need at least `MIN_ROWS` rows with the label 1 and as many with 0: on fewer, a perfect split
happens by chance (one buyer is always above or below everyone else), and the guard must not cry
wolf on small samples. High-cardinality ids (a user id) are dropped from the check as soon as
they exceed MAX_VALUES values: they identify rows rather than predict labels, and tracking them
would cost memory. A column declared both as a label and as a feature (`csv_ingest`) is reported
from the config alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MAX_VALUES = 64  # distinct ids an id column may have and still be checked
MIN_ROWS = 5  # rows with the label 1, and with 0, before a perfect split counts
LEAKAGE_MODES = ("warn", "fail")


class LeakageStats:
  """Per label: min and max of every dense column over the rows with the label 1 and with 0, and
  per low-cardinality id column the rows and label-1 rows of each value."""

  def __init__(self, labels: Sequence[str], sparse: Sequence[str], dense: Sequence[str]):
    self.labels, self.sparse, self.dense = list(labels), list(sparse), list(dense)
    k, d = len(self.labels), len(self.dense)
    self.rows = np.zeros((k, 2), np.int64)  # [label, 0 or 1]
    self.lo = np.full((k, 2, d), np.inf)
    self.hi = np.full((k, 2, d), -np.inf)
    # id column -> (sorted values, rows per value [V], label-1 rows per value [V, K]); None: dropped
    self.ids: dict[str, Any] = {
      name: (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, k), np.int64))
      for name in self.sparse
    }

  def add(self, block: dict[str, np.ndarray]) -> None:
    labels = block["labels"].astype(bool)
    if not len(labels):
      return
    dense = block["dense"]
    for li in range(len(self.labels)):
      y = labels[:, li]
      for cls, rows in ((1, y), (0, ~y)):
        if rows.any():
          self.rows[li, cls] += int(rows.sum())
          if dense.shape[1]:
            self.lo[li, cls] = np.minimum(self.lo[li, cls], dense[rows].min(0))
            self.hi[li, cls] = np.maximum(self.hi[li, cls], dense[rows].max(0))
    for j, name in enumerate(self.sparse):
      if self.ids[name] is not None:
        values, inverse = np.unique(block["sparse"][:, j], return_inverse=True)
        if len(values) > MAX_VALUES:
          self.ids[name] = None
          continue
        pos = np.bincount(inverse, minlength=len(values))
        ones = np.stack(
          [
            np.bincount(inverse, weights=labels[:, li], minlength=len(values))
            for li in range(len(self.labels))
          ],
          1,
        ).astype(np.int64)
        self._merge_ids(name, values.astype(np.int64), pos, ones)

  def _merge_ids(self, name, values, rows, ones) -> None:
    have = self.ids[name]
    if have is None:
      return
    allv = np.concatenate([have[0], values])
    uniq, inv = np.unique(allv, return_inverse=True)
    if len(uniq) > MAX_VALUES:
      self.ids[name] = None
      return
    r = np.zeros(len(uniq), np.int64)
    o = np.zeros((len(uniq), len(self.labels)), np.int64)
    np.add.at(r, inv, np.concatenate([have[1], rows]))
    np.add.at(o, inv, np.concatenate([have[2], ones]))
    self.ids[name] = (uniq, r, o)

  def merge(self, other: LeakageStats) -> None:
    self.rows += other.rows
    self.lo, self.hi = np.minimum(self.lo, other.lo), np.maximum(self.hi, other.hi)
    for name in self.sparse:
      if other.ids[name] is None:
        self.ids[name] = None
      else:
        self._merge_ids(name, *other.ids[name])

  def findings(self) -> list[dict[str, str]]:
    """[{column, label, kind, detail}] for every column that gives a label away."""
    out = []
    for li, label in enumerate(self.labels):
      n0, n1 = int(self.rows[li, 0]), int(self.rows[li, 1])
      if min(n0, n1) < MIN_ROWS:
        continue
      for j, col in enumerate(self.dense):
        lo0, hi0 = self.lo[li, 0, j], self.hi[li, 0, j]
        lo1, hi1 = self.lo[li, 1, j], self.hi[li, 1, j]
        if hi0 < lo1 or hi1 < lo0:
          side = "above" if hi0 < lo1 else "below"
          detail = (
            f"equals {label}"
            if (lo0, hi0, lo1, hi1) == (0, 0, 1, 1)
            else f"every row with {label}=1 ({n1:,}) lies {side} every row with {label}=0 ({n0:,})"
          )
          out.append({"column": col, "label": label, "kind": "dense", "detail": detail})
      for col, have in self.ids.items():
        if have is None or not len(have[0]):
          continue
        values, rows, ones = have[0], have[1], have[2][:, li]
        pure = (ones == 0) | (ones == rows)
        v1, v0 = int((ones > 0).sum()), int((ones < rows).sum())
        if pure.all() and rows[ones > 0].min() >= MIN_ROWS:
          out.append(
            {
              "column": col,
              "label": label,
              "kind": "ids",
              "detail": f"its {len(values)} values each occur with one {label} value only "
              f"({v1} with {label}=1, {v0} with {label}=0)",
            }
          )
    return out

  def to_json(self) -> dict[str, Any]:
    return {
      "labels": self.labels,
      "sparse": self.sparse,
      "dense": self.dense,
      "rows": self.rows.tolist(),
      "lo": np.where(np.isfinite(self.lo), self.lo, 0).tolist(),
      "hi": np.where(np.isfinite(self.hi), self.hi, 0).tolist(),
      "ids": {
        k: None if v is None else [v[0].tolist(), v[1].tolist(), v[2].tolist()]
        for k, v in self.ids.items()
      },
    }

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> LeakageStats:
    out = cls(d["labels"], d["sparse"], d["dense"])
    out.rows = np.asarray(d["rows"], np.int64).reshape(out.rows.shape)
    seen = out.rows[:, :, None] > 0  # min/max of a class with no rows stay at +-inf
    out.lo = np.where(seen, np.asarray(d["lo"], np.float64).reshape(out.lo.shape), np.inf)
    out.hi = np.where(seen, np.asarray(d["hi"], np.float64).reshape(out.hi.shape), -np.inf)
    for k, v in d["ids"].items():
      out.ids[k] = (
        None
        if v is None
        else (
          np.asarray(v[0], np.int64),
          np.asarray(v[1], np.int64),
          np.asarray(v[2], np.int64).reshape(-1, len(out.labels)),
        )
      )
    return out


def config_findings(
  label_columns: dict[str, str], feature_columns: dict[str, str]
) -> list[dict[str, str]]:
  """Columns declared both as a label and as a feature: {label: column}, {column: kind}."""
  return [
    {
      "column": col,
      "label": label,
      "kind": "config",
      "detail": f"declared as the label {label!r} and as a {feature_columns[col]} feature",
    }
    for label, col in label_columns.items()
    if col in feature_columns
  ]


def describe(finding: dict[str, str]) -> str:
  return (
    f"label leakage: feature column {finding['column']!r} gives the label "
    f"{finding['label']!r} away: {finding['detail']}"
  )
