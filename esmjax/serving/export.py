"""A trained model as a serving artifact: serialized StableHLO (jax.export) + a JSON signature.

    python -m esmjax.main --config=configs/esmm.py --workdir=DIR --mode=export \
        --export_path=m.jaxexport

writes two files:

  m.jaxexport       `jax.export.Exported.serialize()` bytes of `predict(batch) -> probabilities`.
                    The trained tower params and embedding tables are closed over, i.e. baked into
                    the module as constants: no params file, no esmjax, no config is needed to run
                    it.
  m.jaxexport.json  the signature: inputs (name, dtype, shape with "b" the batch dimension, the
                    fields behind each column with their vocab sizes), outputs, model, step, and
                    `artifact_sha256`, the SHA-256 of m.jaxexport's bytes; sealed with its own
                    digest (`esmjax.common.digest`). `load_exported` verifies both before
                    deserializing:
                    a changed byte in either file is refused (a flipped constant would otherwise
                    score silently with other weights).

The function takes ONE argument, a dict of four arrays (the dataset's input columns; see
`esmjax.common.inputs`)

    sparse  int32   [b, F]  single-valued ids, field order of the signature; 0 = PAD, 1 = OOV
    mv_ids  int32   [b, L]  multi-valued ids, each field's `max_len` slots side by side; 0 = PAD
    mv_w    float32 [b, L]  their weights (0 in empty slots)
    dense   float32 [b, Dn] raw dense values (the model normalises / bucketises them)

and returns a dict of float32 [b] arrays: pctr, pcvr, pctcvr (and pctavr for ESM2). An id outside
[0, vocab_size) of its column (negative ones included) is scored as its field's OOV row (id 1)
inside the function, per field, before the lookup: it never reads another field's rows. The
function returns no count of such ids (its outputs are the probabilities alone); a server that
wants one compares the ids with the signature's `vocab_sizes`. `load_exported` is stricter: it
refuses such ids, and values that are not ids at all, with a ValueError naming the input, the
field and the value, before anything is cast to int32. The batch dimension is symbolic by default
(any b >= 1 with one artifact); `batch_size=N` fixes it.

Load it with `jax.export.deserialize(open(path, "rb").read()).call(batch)`, as
`examples/serve_exported.py` does, or with `load_exported(path)` here.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from esmjax.common import digest, inputs
from esmjax.config.defaults import ConfigError
from esmjax.core import outputs

FORMAT = "esmjax-export"
VERSION = 1
STRAYS_DOC = (
  "ids outside [0, vocab_size) of their column are scored as OOV = 1 inside the "
  "function (never another field's rows); load_exported refuses them"
)
SIDECAR_SUFFIX = ".json"
DEFAULT_PLATFORMS = ("cpu", "cuda")  # lowered for both: the same file serves on CPU and NVIDIA GPUs
OUTPUTS_DOC = {
  "pctr": "p(click | impression)",
  "pcvr": "p(buy | click)",
  "pctcvr": "p(click and buy | impression) = pctr * pcvr",
  "pctavr": "p(click and DAction | impression) (ESM2 only)",
}


class ExportError(ConfigError, ValueError):
  """An export option that cannot be honoured (a batch size below 1); names the value."""


def export(
  workdir: str,
  out_path: str,
  batch_size: int | None = None,
  config=None,
  platforms: Sequence[str] | None = None,
  step: int | None = None,
) -> dict[str, Any]:
  """Exports checkpoint `step` (default: the latest; one that cannot be read is an error, never
  replaced by an older one) of `workdir` to `out_path` (+ `out_path.json`); returns the signature.

  `config` defaults to the one saved in the workdir (see `esmjax.serving.predict.saved_config`).
  """
  from esmjax.serving import predict

  check_batch_size(batch_size)  # before any work
  outputs.check_target(out_path, "export")
  run, state = predict.load(workdir, config, step)
  return export_state(
    run, state, out_path, batch_size=batch_size, platforms=platforms, workdir=workdir
  )


def serving_fn(run, state):
  """`predict(batch) -> {pctr, …}` on one device, closing over host copies of params and tables.

  It is `esmjax.serving.predict.predict_step` (stray ids scored as OOV) with the plain single-device
  engine (a gather), whatever engine the run trained with: the serving function must not carry
  the training mesh's collectives. The stray counts are dropped: the outputs are probabilities.
  """
  from esmjax.core import state as state_lib
  from esmjax.embedding import engine as engine_lib
  from esmjax.serving import predict

  if jax.process_count() > 1:
    raise RuntimeError("export runs in a single process (it gathers the whole model to the host)")
  c = state_lib.build(
    run.config, run.schema, row_multiple=run.mesh.size, engine_factory=engine_lib.Engine
  )
  params, tables = jax.device_get((state.params, state.tables))
  for name, t in tables.items():
    want = (c.layout.padded_rows, c.engine.dim)
    if tuple(t.shape) != want:
      raise ValueError(f"table {name!r} has shape {t.shape}, the model's layout expects {want}")

  def serve(batch):
    # jnp.asarray inside the trace: the host arrays become the module's constants.
    serve_state = state_lib.TrainState(
      step=jnp.zeros((), jnp.int32),
      params=jax.tree_util.tree_map(jnp.asarray, params),
      opt_state=(),
      tables={k: jnp.asarray(v) for k, v in tables.items()},
      slots={},
      scratch=jnp.zeros((0,), jnp.int32),
      rng=jnp.zeros((2,), jnp.uint32),
    )
    out = predict.predict_step(c, serve_state, batch)
    del out[inputs.STRAYS_KEY]
    return out

  return serve


def input_signature(schema, batch_size: int | None = None) -> list[dict[str, Any]]:
  """The inputs, in argument order, with the fields behind their columns."""
  b = "b" if batch_size is None else int(batch_size)
  mv_cols, off = [], 0
  for f in schema.multi:
    mv_cols.append(
      {
        "name": f.name,
        "vocab_size": int(f.vocab_size),
        "columns": [off, off + int(f.max_len)],
        "pooling": f.pooling,
      }
    )
    off += int(f.max_len)
  cols = {c.name: c for c in inputs.columns(schema)}
  fields = {
    "sparse": {
      "fields": [{"name": f.name, "vocab_size": int(f.vocab_size)} for f in schema.sparse],
      "vocab_sizes": list(cols["sparse"].vocab),
      "doc": "one id per field; 0 = PAD, 1 = OOV",
      "out_of_range": STRAYS_DOC,
    },
    "mv_ids": {
      "fields": mv_cols,
      "vocab_sizes": list(cols["mv_ids"].vocab),
      "doc": "each field's slots side by side (columns [start, end)); 0 = PAD",
      "out_of_range": STRAYS_DOC,
    },
    "mv_w": {"fields": mv_cols, "doc": "weight of each mv_ids slot; 0 in empty slots"},
    "dense": {
      "fields": [
        {"name": f.name, "mean": float(f.mean), "std": float(f.std)} for f in schema.dense
      ],
      "doc": "raw values; the model normalises them",
    },
  }
  return [
    {"name": c.name, "dtype": c.dtype, "shape": [b, c.width], **fields[c.name]}
    for c in cols.values()
  ]


def export_state(
  run,
  state,
  out_path: str,
  batch_size: int | None = None,
  platforms: Sequence[str] | None = None,
  workdir: str = "",
) -> dict[str, Any]:
  """Exports `state` of `run` (see the module docstring); returns the signature it wrote."""
  from jax import export as jex

  inputs = input_signature(run.schema, batch_size)
  check_batch_size(batch_size)
  outputs.check_target(out_path, "export")
  if batch_size is None:
    (b,) = jex.symbolic_shape("b")
  else:
    b = int(batch_size)
  args = {x["name"]: jax.ShapeDtypeStruct((b, x["shape"][1]), np.dtype(x["dtype"])) for x in inputs}
  platforms = tuple(platforms or _default_platforms())
  exported = jex.export(jax.jit(serving_fn(run, state)), platforms=platforms)(args)
  produced = exported.out_tree.unflatten(range(len(exported.out_avals)))
  out_names = [k for k in OUTPUTS_DOC if k in produced] + sorted(set(produced) - set(OUTPUTS_DOC))
  signature = {
    "format": FORMAT,
    "version": VERSION,
    "model": run.config.model.name,
    "step": int(jax.device_get(state.step)),
    "workdir": os.path.abspath(workdir) if workdir else "",
    "platforms": list(platforms),
    "batch_size": None if batch_size is None else int(batch_size),
    "call": "jax.export.deserialize(bytes).call({name: array for each input}) -> {output: array}",
    "inputs": inputs,
    "outputs": [
      {
        "name": k,
        "dtype": "float32",
        "shape": ["b" if batch_size is None else int(batch_size)],
        "doc": OUTPUTS_DOC.get(k, ""),
      }
      for k in out_names
    ],
    "labels": list(run.schema.labels),
    "jax_version": jax.__version__,
  }
  artifact = bytes(exported.serialize())
  signature["artifact_sha256"] = f"{digest.FILE_METHOD}:{hashlib.sha256(artifact).hexdigest()}"
  outputs.atomic_write(out_path, artifact, "export")
  sealed = digest.seal(signature)  # the signature names the artifact's digest and seals itself
  outputs.atomic_write(
    out_path + SIDECAR_SUFFIX, (json.dumps(sealed, indent=1) + "\n").encode(), "export signature"
  )
  return signature


def check_batch_size(batch_size: int | None) -> None:
  """A fixed batch size is >= 1 (None: any batch); a ConfigError naming the value otherwise."""
  if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
    raise ExportError(
      f"export batch size {batch_size} must be >= 1 (--export_batch_size=0 or "
      "batch_size=None: any batch)"
    )


def _default_platforms() -> tuple[str, ...]:
  here = jax.default_backend()
  here = "cuda" if here == "gpu" else here
  return tuple(dict.fromkeys((*DEFAULT_PLATFORMS, here)))


class ExportedModel:
  """A deserialized artifact: `model(batch) -> {output: np.ndarray [b]}`, inputs checked, then cast.

  Checked before the cast to the signature's dtypes: every input present with its shape; ids
  integers inside [0, vocab_size) of their column (an int64 2**32 + 5 is refused, never read as
  5); weights and dense values finite. Each refusal is a ValueError naming the input, the column's
  field and the value.
  """

  def __init__(self, exported, signature: dict[str, Any]):
    self.exported, self.signature = exported, signature
    self.columns = inputs.columns_from_signature(signature["inputs"])

  def __call__(self, batch) -> dict[str, np.ndarray]:
    where = "exported model"
    args = {}
    for col, x in zip(self.columns, self.signature["inputs"], strict=True):
      if col.name not in batch:
        names = [c.name for c in self.columns]
        raise ValueError(f"{where}: batch lacks {col.name!r}; inputs are {names}")
      a = np.asarray(batch[col.name])
      rows = x["shape"][0]
      if a.ndim != 2 or a.shape[1] != col.width or (rows != "b" and a.shape[0] != rows):
        raise ValueError(f"{where}: {col.name} has shape {a.shape}, expected {tuple(x['shape'])}")
      inputs.check_values(col, a, where)
      if col.vocab is not None and a.size:
        stray = inputs.strays(col, a)
        if stray.any():
          raise ValueError(inputs.describe_stray(col, a, stray, where))
      args[col.name] = a.astype(col.dtype)
    return {k: np.asarray(v) for k, v in self.exported.call(args).items()}


def load_exported(path: str) -> ExportedModel:
  """Reads `path` and its `.json` signature (no training code or config involved), both verified
  against their digests (`digest.IntegrityError` naming the file otherwise)."""
  from jax import export as jex

  fix = "export the model again (--mode=export, or Model.export)"
  signature = digest.read_json(path + SIDECAR_SUFFIX, fix)
  with open(path, "rb") as f:
    artifact = f.read()
  if "artifact_sha256" not in signature:
    raise digest.IntegrityError(f"{path + SIDECAR_SUFFIX} records no digest of {path}: {fix}")
  digest.check_file(path, signature["artifact_sha256"], fix, data=artifact)
  return ExportedModel(jex.deserialize(bytearray(artifact)), signature)
