"""The Ali-CCP converter's field configuration, validated and compiled to arrays, and the kinds of
bad lines it reports.

Fields (defaults in `default_config`, overridable by `--config`): single-valued fields become
`sparse` columns; multi-valued ones (behaviour lists 109_14/110_14/127_14/150_14, item intention
210, and 853 = 150_14 x 210, which repeats within a row) keep every value as ids + their float
values as weights. The combination fields 508/509/702 carry values: the id is a sparse column and
the value is also a dense feature `<field>_value` (0 where absent).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from esmjax.common.schema import DenseField, MultiField, Schema, SparseField
from esmjax.data.format import ids as ids_lib
from esmjax.data.ingest.shared import IngestError

BAD_KINDS = {
  "empty_file": "the file has no data lines",
  "column_count": "wrong number of comma-separated columns",
  "bad_label": "click or buy is not 0 or 1",
  "buy_without_click": "click=0 with buy=1",
  "bad_sample_id": "sample_id is not a non-negative integer",
  "bad_feature_item": (
    "a feature item is not field\\x02id\\x03value (missing separator or empty/non-numeric part)"
  ),
  "unknown_common_feature_index": "common_feature_index not found in the common-features file",
  "duplicate_common_feature_index": (
    "common_feature_index already defined earlier in the common-features file"
  ),
  "nonfinite_value": (
    "a feature value is not a finite float32 number (nan, inf, or beyond ±3.4e38)"
  ),
}
WARN_KINDS = {  # the row is kept
  "feature_num_mismatch": "feature_num differs from the number of items in feature_list",
  "duplicate_single_value": "a single-valued field occurs twice in a row (first value kept)",
}
ALL_KINDS = {**BAD_KINDS, **WARN_KINDS}
FIELD_KINDS = ("sparse", "multi")
SKELETON_COLS, COMMON_COLS = 6, 3
KIND_CODES = {k: i + 1 for i, k in enumerate(BAD_KINDS)}  # a parsed line's reason: 0 = good
CODE_KINDS = {v: k for k, v in KIND_CODES.items()}


class ConversionError(IngestError):
  """Stops a conversion; the message names the file and line, or the config key."""


_HUGE = 1 << 20
# name: (kind, buckets, max_len, group, value_as_dense)
_DEFAULT_FIELDS = {
  "101": ("sparse", _HUGE, 1, "user", False),
  "121": ("sparse", 4096, 1, "user", False),
  "122": ("sparse", 1024, 1, "user", False),
  "124": ("sparse", 1024, 1, "user", False),
  "125": ("sparse", 1024, 1, "user", False),
  "126": ("sparse", 1024, 1, "user", False),
  "127": ("sparse", 1024, 1, "user", False),
  "128": ("sparse", 1024, 1, "user", False),
  "129": ("sparse", 1024, 1, "user", False),
  "109_14": ("multi", _HUGE, 16, "user", False),
  "110_14": ("multi", _HUGE, 16, "user", False),
  "127_14": ("multi", _HUGE, 16, "user", False),
  "150_14": ("multi", _HUGE, 16, "user", False),
  "205": ("sparse", _HUGE, 1, "item", False),
  "206": ("sparse", _HUGE, 1, "item", False),
  "207": ("sparse", _HUGE, 1, "item", False),
  "210": ("multi", _HUGE, 8, "item", False),
  "216": ("sparse", _HUGE, 1, "item", False),
  "508": ("sparse", _HUGE, 1, "combo", True),
  "509": ("sparse", _HUGE, 1, "combo", True),
  "702": ("sparse", _HUGE, 1, "combo", True),
  "853": ("multi", _HUGE, 4, "combo", False),
  "301": ("sparse", 1024, 1, "context", False),
}
_FIELD_KEYS = ("kind", "buckets", "max_len", "group", "value_dense", "pooling")


def default_config():
  """The Ali-CCP field layout as an ml_collections ConfigDict (configs/data/aliccp_raw.py)."""
  import ml_collections

  c = ml_collections.ConfigDict()
  c.fields = {
    n: dict(kind=k, buckets=b, max_len=m, group=g, value_dense=v, pooling="sum")
    for n, (k, b, m, g, v) in _DEFAULT_FIELDS.items()
  }
  c.user_field = "101"
  c.dense_buckets = 16  # quantile buckets for DenseField.boundaries
  return c


@dataclasses.dataclass(frozen=True)
class Spec:
  """The config compiled to arrays indexed by field number (what the vectorised code needs)."""

  names: tuple[str, ...]
  kinds: tuple[str, ...]
  buckets: np.ndarray  # uint64 [Fall]
  salts: np.ndarray  # uint64 [Fall]
  is_multi: np.ndarray  # bool [Fall]
  col: np.ndarray  # int64 [Fall]: sparse column or multi index
  dense_col: np.ndarray  # int64 [Fall], -1 if none
  max_len: np.ndarray  # int64 [M]
  mv_off: np.ndarray  # int64 [M]
  user_field: int  # field number, -1 if none
  codes: np.ndarray  # sorted uint64 packed names
  code_field: np.ndarray  # field number for each sorted code
  schema: Schema
  dense_buckets: int
  config_json: str

  @property
  def n_sparse(self):
    return len(self.schema.sparse)

  @property
  def n_multi(self):
    return len(self.schema.multi)


def _pack_name(name: bytes) -> np.uint64:
  return np.frombuffer(name.ljust(8, b"\0"), np.uint64)[0]


def compile_config(config) -> Spec:
  """Validates a config (ConfigDict or dict) and compiles it; errors name the key."""
  cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  fields = cfg.get("fields")
  if not fields:
    raise ConversionError("config.fields is empty: nothing to convert")
  names, kinds, buckets, salts, cols, dcols = [], [], [], [], [], []
  sparse, multi, dense = [], [], []
  for name, f in fields.items():
    key = f"config.fields[{name!r}]"
    unknown = set(f) - set(_FIELD_KEYS)
    if unknown:
      raise ConversionError(
        f"{key}: unknown key(s) {sorted(unknown)}; allowed: {', '.join(_FIELD_KEYS)}"
      )
    if len(name.encode()) > 8:
      raise ConversionError(f"{key}: field names longer than 8 bytes are not supported")
    kind = f.get("kind", "sparse")
    if kind not in FIELD_KINDS:
      raise ConversionError(f"{key}.kind={kind!r}; allowed: {list(FIELD_KINDS)}")
    b = int(f.get("buckets", _HUGE))
    if not 1 <= b < 2**31 - 2:
      raise ConversionError(f"{key}.buckets={b}; allowed: 1 .. 2**31-3")
    group = f.get("group", "user")
    names.append(name)
    kinds.append(kind)
    buckets.append(b)
    salts.append(ids_lib.field_salt(name))
    if kind == "sparse":
      cols.append(len(sparse))
      sparse.append(SparseField(name, b + ids_lib.NUM_RESERVED, group))
    else:
      ml = int(f.get("max_len", 1))
      if ml < 1:
        raise ConversionError(f"{key}.max_len={ml}; must be >= 1")
      pooling = f.get("pooling", "sum")
      if pooling not in ("sum", "mean"):
        raise ConversionError(f"{key}.pooling={pooling!r}; allowed: ['sum', 'mean']")
      cols.append(len(multi))
      multi.append(MultiField(name, b + ids_lib.NUM_RESERVED, ml, pooling, group))
    if f.get("value_dense", False):
      dcols.append(len(dense))
      dense.append(DenseField(f"{name}_value"))
    else:
      dcols.append(-1)
  user_field = cfg.get("user_field", "101")
  if user_field and user_field not in names:
    raise ConversionError(f"config.user_field={user_field!r} is not one of config.fields {names}")
  dense_buckets = int(cfg.get("dense_buckets", 16))
  if dense_buckets < 1:
    raise ConversionError(f"config.dense_buckets={dense_buckets}; must be >= 1")
  unknown = set(cfg) - {"fields", "user_field", "dense_buckets"}
  if unknown:
    raise ConversionError(
      f"config has unknown key(s) {sorted(unknown)}; allowed: fields, user_field, dense_buckets"
    )
  packed = np.array([_pack_name(n.encode()) for n in names], np.uint64)
  order = np.argsort(packed)
  schema = Schema(
    sparse=tuple(sparse), multi=tuple(multi), dense=tuple(dense), labels=("click", "buy")
  )
  return Spec(
    names=tuple(names),
    kinds=tuple(kinds),
    buckets=np.array(buckets, np.uint64),
    salts=np.array(salts, np.uint64),
    is_multi=np.array([k == "multi" for k in kinds], bool),
    col=np.array(cols, np.int64),
    dense_col=np.array(dcols, np.int64),
    max_len=np.array([f.max_len for f in multi], np.int64),
    mv_off=np.array(schema.mv_offsets, np.int64),
    user_field=names.index(user_field) if user_field else -1,
    codes=packed[order],
    code_field=order.astype(np.int64),
    schema=schema,
    dense_buckets=dense_buckets,
    config_json=json.dumps(cfg, sort_keys=True),
  )
