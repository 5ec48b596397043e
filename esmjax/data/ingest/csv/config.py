"""The CSV / Parquet ingester's config: defaults (`base_config`) and validation into `Cfg`.

Every error names the config key and, for enumerations, the allowed values.
"""

from __future__ import annotations

import dataclasses

from esmjax.common.schema import LABELS
from esmjax.data.format import ids as ids_lib
from esmjax.data.ingest.leakage import LEAKAGE_MODES
from esmjax.data.ingest.shared import BAD_LINES_MODES, IngestError

FORMATS = ("auto", "csv", "parquet")
HEADER_MODES = ("auto", "yes", "no")
_KNOWN_KEYS = {
  "format",
  "delimiter",
  "header",
  "columns",
  "labels",
  "sparse",
  "multi",
  "dense",
  "user",
  "sample_id",
  "id_mapping",
  "hash_buckets",
  "min_count",
  "max_vocab",
  "field_overrides",
  "pad_values",
  "dense_buckets",
  "bad_lines",
  "block_rows",
  "blocks_per_shard",
  "read_rows",
  "name",
  "label_leakage",
  "max_cell_bytes",
  "oov_warn_share",
}


def base_config():
  """Defaults every configs/data/*.py starts from."""
  import ml_collections

  c = ml_collections.ConfigDict()
  c.name = ""
  c.format = "auto"  # auto (by extension) | csv | parquet
  c.delimiter = ","
  c.header = "auto"  # auto: line 1 is a header when it equals `columns` (or `columns` is empty)
  c.columns = ()  # names in file order; required for files without a header
  c.labels = {"click": "click", "buy": "buy"}  # dataset label -> column, in dataset order
  c.sparse = ()  # single-valued id columns
  c.multi = {}  # column -> dict(sep="|", weight_sep="", max_len=16, pooling="sum")
  c.dense = ()  # numeric columns
  c.user = ""  # user-key column ("" -> -1)
  c.sample_id = ""  # sample-id column ("" -> running row number)
  c.id_mapping = "vocab"  # vocab | hash, for every id column unless overridden
  c.hash_buckets = 1 << 20
  c.min_count = 1  # vocab: values seen fewer times map to OOV
  c.max_vocab = 0  # vocab: 0 = unlimited, else at most this many ids including PAD and OOV
  c.field_overrides = {}  # column -> dict(mapping=..., buckets=..., min_count=..., max_vocab=...)
  c.pad_values = ("",)
  c.dense_buckets = 16
  c.bad_lines = "skip"  # skip | fail
  c.label_leakage = "warn"  # a feature column that gives a label away: warn (and record) | fail
  c.block_rows = 0  # rows per block; 0: about 1 MB per block (blocks.auto_block_rows)
  c.blocks_per_shard = 64
  c.read_rows = 1 << 16  # rows per parsed batch (bounds memory)
  # The longest cell accepted (bytes); a longer one stops the ingestion naming its file and line
  # (typically an unclosed quote that joined many lines into one cell).
  c.max_cell_bytes = 1 << 20
  # With stats_from: a column whose share of ids that the reused vocabulary maps to OOV is above
  # this gets a warning (the share of every column is in the manifest either way).
  c.oov_warn_share = 0.5
  return c


@dataclasses.dataclass(frozen=True)
class IdCol:
  column: str
  mapping: str
  buckets: int
  min_count: int
  max_vocab: int


@dataclasses.dataclass(frozen=True)
class MultiCol:
  ids: IdCol
  sep: str
  weight_sep: str
  max_len: int
  pooling: str


@dataclasses.dataclass(frozen=True)
class Cfg:
  raw: dict
  labels: tuple[tuple[str, str], ...]
  sparse: tuple[IdCol, ...]
  multi: tuple[MultiCol, ...]
  dense: tuple[str, ...]
  user: str
  sample_id: str

  @property
  def needed(self) -> list[str]:
    cols = [c for _, c in self.labels] + [f.column for f in self.sparse]
    cols += [m.ids.column for m in self.multi] + list(self.dense)
    cols += [c for c in (self.user, self.sample_id) if c]
    return list(dict.fromkeys(cols))


def _check_choice(key, value, allowed):
  if value not in allowed:
    raise IngestError(f"config.{key}={value!r}; allowed: {list(allowed)}")


def validate(config) -> Cfg:
  """A config (ConfigDict or dict) over the defaults -> Cfg; IngestError naming the key."""
  raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  full = base_config().to_dict()
  unknown = sorted(set(raw) - _KNOWN_KEYS)
  if unknown:
    raise IngestError(f"config has unknown key(s) {unknown}; allowed: {sorted(_KNOWN_KEYS)}")
  full.update(raw)
  raw = full
  _check_choice("format", raw["format"], FORMATS)
  _check_choice("header", raw["header"], HEADER_MODES)
  _check_choice("bad_lines", raw["bad_lines"], BAD_LINES_MODES)
  _check_choice("label_leakage", raw["label_leakage"], LEAKAGE_MODES)
  _check_choice("id_mapping", raw["id_mapping"], ids_lib.MAPPINGS)
  if not raw["labels"]:
    raise IngestError("config.labels is empty; give at least {'click': <column>}")
  for lab in raw["labels"]:
    _check_choice(f"labels[{lab!r}] (dataset label)", lab, LABELS)
  if "click" not in raw["labels"]:
    raise IngestError("config.labels needs 'click' (the entire-space models need the click label)")
  for k in ("read_rows", "hash_buckets", "dense_buckets", "blocks_per_shard"):
    if int(raw[k]) < 1:
      raise IngestError(f"config.{k}={raw[k]}; must be >= 1")
  if int(raw["max_cell_bytes"]) < 1:
    raise IngestError(f"config.max_cell_bytes={raw['max_cell_bytes']}; must be >= 1")
  if not 0.0 <= float(raw["oov_warn_share"]) <= 1.0:
    raise IngestError(f"config.oov_warn_share={raw['oov_warn_share']}; must be in [0, 1]")
  if int(raw["block_rows"]) < 0:
    raise IngestError(f"config.block_rows={raw['block_rows']}; must be >= 1, or 0 for automatic")

  overrides = raw.get("field_overrides") or {}
  id_cols = list(raw["sparse"]) + list(raw["multi"])
  for col in overrides:
    if col not in id_cols:
      raise IngestError(
        f"config.field_overrides[{col!r}]: not an id column (sparse or multi): {id_cols}"
      )

  def id_col(col: str) -> IdCol:
    o = dict(overrides.get(col, {}))
    bad = set(o) - {"mapping", "buckets", "min_count", "max_vocab"}
    if bad:
      raise IngestError(
        f"config.field_overrides[{col!r}]: unknown key(s) {sorted(bad)}; allowed: "
        "mapping, buckets, min_count, max_vocab"
      )
    mapping = o.get("mapping", raw["id_mapping"])
    _check_choice(f"field_overrides[{col!r}].mapping", mapping, ids_lib.MAPPINGS)
    return IdCol(
      col,
      mapping,
      int(o.get("buckets", raw["hash_buckets"])),
      int(o.get("min_count", raw["min_count"])),
      int(o.get("max_vocab", raw["max_vocab"])),
    )

  multi = []
  for col, m in (raw["multi"] or {}).items():
    m = dict(m)
    bad = set(m) - {"sep", "weight_sep", "max_len", "pooling"}
    if bad:
      raise IngestError(
        f"config.multi[{col!r}]: unknown key(s) {sorted(bad)}; allowed: sep, "
        "weight_sep, max_len, pooling"
      )
    pooling = m.get("pooling", "sum")
    _check_choice(f"multi[{col!r}].pooling", pooling, ("sum", "mean"))
    if not m.get("sep"):
      raise IngestError(f"config.multi[{col!r}].sep is empty")
    if int(m.get("max_len", 16)) < 1:
      raise IngestError(f"config.multi[{col!r}].max_len={m.get('max_len')}; must be >= 1")
    multi.append(
      MultiCol(id_col(col), m["sep"], m.get("weight_sep", ""), int(m.get("max_len", 16)), pooling)
    )
  # Dataset label order is the canonical one (click, buy, cart, wish, daction): ConfigDict sorts
  # its keys.
  labels = tuple((name, raw["labels"][name]) for name in LABELS if name in raw["labels"])
  cfg = Cfg(
    raw=raw,
    labels=labels,
    sparse=tuple(id_col(c) for c in raw["sparse"]),
    multi=tuple(multi),
    dense=tuple(raw["dense"]),
    user=raw["user"] or "",
    sample_id=raw["sample_id"] or "",
  )
  names = [f.column for f in cfg.sparse] + [m.ids.column for m in cfg.multi] + list(cfg.dense)
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise IngestError(f"config: column(s) {dup} appear in more than one of sparse / multi / dense")
  return cfg
