"""Hyperparameters declared once, as frozen-dataclass fields that carry their own checks.

A model (`esmjax.models`) or a sparse optimizer (`esmjax.embedding.optimizers`) declares its
hyperparameters as fields of a frozen dataclass, each with `field(default, doc, <range>)`. The
config section reaches them by field name (`from_section`), the default config is assembled from
the declarations (`defaults`), and `check` validates a value against the range declared next to it,
so a new hyperparameter is documented, configurable and checked where it is written.

    @dataclasses.dataclass(frozen=True)
    class Hparams:
      aman_rate: float = hparams.field(0.1, "fraction of unclicked rows sampled", gt=0, le=1)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Range:
  """The values a hyperparameter allows: bounds (open or closed), choices, tuple length."""

  ge: float | None = None
  gt: float | None = None
  le: float | None = None
  lt: float | None = None
  choices: tuple[Any, ...] | None = None
  length: int | None = None  # a tuple of exactly this many numbers, each within the bounds
  not_all_zero: bool = False  # for weight tuples: at least one weight is positive

  def describe(self) -> str:
    if self.choices is not None:
      return f"one of {list(self.choices)}"
    lo = (
      f"[{self.ge:g}"
      if self.ge is not None
      else f"({self.gt:g}"
      if self.gt is not None
      else "(-inf"
    )
    hi = (
      f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else "inf)"
    )
    interval = f"in {lo}, {hi}"
    if self.length is not None:
      return f"{self.length} numbers, each {interval}" + (
        ", not all 0" if self.not_all_zero else ""
      )
    return interval

  def allows(self, value) -> bool:
    if self.choices is not None:
      return value in self.choices
    if self.length is not None:
      if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return False
      items = tuple(value)
      return (
        len(items) == self.length
        and all(self._number_ok(v) for v in items)
        and not (self.not_all_zero and all(float(v) == 0.0 for v in items))
      )
    return self._number_ok(value)

  def _number_ok(self, v) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
      return False
    return (
      (self.ge is None or v >= self.ge)
      and (self.gt is None or v > self.gt)
      and (self.le is None or v <= self.le)
      and (self.lt is None or v < self.lt)
    )


def field(
  default,
  doc: str,
  *,
  ge=None,
  gt=None,
  le=None,
  lt=None,
  choices=None,
  length=None,
  not_all_zero: bool = False,
):
  """A hyperparameter: its default, a one-line description and the values it allows."""
  rng = Range(ge, gt, le, lt, tuple(choices) if choices is not None else None, length, not_all_zero)
  if not rng.allows(default):
    raise ValueError(f"default {default!r} is outside its own range ({rng.describe()})")
  return dataclasses.field(default=default, metadata={"doc": doc, "range": rng})


def fields(cls) -> tuple[dataclasses.Field, ...]:
  """The hyperparameter fields of a dataclass (those declared with `field`)."""
  return tuple(f for f in dataclasses.fields(cls) if "range" in f.metadata)


def describe(f: dataclasses.Field) -> tuple[Any, str, Range]:
  return f.default, f.metadata["doc"], f.metadata["range"]


def check(section: str, name: str, value, f: dataclasses.Field) -> None:
  """ValueError naming `section.name`, the value and the allowed values, if `value` is outside."""
  rng = f.metadata["range"]
  if not rng.allows(value):
    raise ValueError(f"{section}.{name}={value!r} is not allowed: {rng.describe()}")


def _coerce(value, default):
  if isinstance(default, tuple):
    if len(value) != len(default):
      return tuple(value)
    return tuple(type(d)(v) for d, v in zip(default, value, strict=True))
  if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  return value


def from_section(cls, section: Mapping[str, Any], name: str):
  """An instance of dataclass `cls` with each hyperparameter read from `section` by field name
  (checked; absent keys keep the declared default; other keys of the section are ignored)."""
  kwargs = {}
  for f in fields(cls):
    if f.name in section:
      value = section[f.name]
      check(name, f.name, value, f)
      kwargs[f.name] = _coerce(value, f.default)
  return cls(**kwargs)


def merge_declarations(
  owners: Iterable[tuple[str, type]], what: str
) -> dict[str, dataclasses.Field]:
  """{key: field} over several dataclasses sharing one flat config section. A key declared by two
  owners must be declared alike (same default and range), or the section would be ambiguous."""
  out: dict[str, tuple[str, dataclasses.Field]] = {}
  for owner, cls in owners:
    for f in fields(cls):
      if f.name in out:
        other, g = out[f.name]
        if (g.default, g.metadata["range"]) != (f.default, f.metadata["range"]):
          raise TypeError(
            f"{what} hyperparameter {f.name!r} is declared differently by {other!r} "
            f"and {owner!r}: give one of them another name"
          )
      else:
        out[f.name] = (owner, f)
  return {k: f for k, (_, f) in out.items()}
