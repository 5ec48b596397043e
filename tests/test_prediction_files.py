"""Prediction files: the NumPy CSV formatter writes csv.writer's bytes; Parquet holds the same
predictions."""

import csv
import io

import ml_dtypes
import numpy as np
import pyarrow.parquet as pq
import pytest
import tiny

from esmjax.serving import predict
from esmjax.serving import prediction_files as pf

EDGES = np.array(
  [
    0.0, -0.0, 1.0, -1.0, 0.5, 0.1, 1e-5, 9.999999e-6, 1.0000001e-5, 1e-6, 1e-7, 1e-30,
    1.4e-45, 3e-39, 1e-4, 9.9999997e-5, 1e-3, 0.9999999, 0.99999994, 0.10546875, 27 / 256,
    0.12345675, 999999.94, 1e6, 1e7, 1234567.5, 3.4028235e38, np.inf, -np.inf, np.nan,
  ],
  np.float32,
)  # fmt: skip


def reference(ids, cols) -> bytes:
  """The CSV lines as predict_to_csv wrote them one row at a time with csv.writer."""
  f = io.StringIO(newline="")
  w = csv.writer(f)
  vals = np.stack(cols, 1)
  for i in range(len(ids)):
    w.writerow([int(ids[i]), *(f"{v:.7g}" for v in vals[i])])
  return f.getvalue().encode()


def _rows(n: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  bits = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
  cols = [
    rng.random(n).astype(np.float32),  # probabilities
    (rng.random(n) ** 8).astype(
      np.float32
    ),  # many tiny ones: scientific notation and the slow path
    bits,  # every float32: huge, denormal, nan, inf, negative
  ]
  cols[0][: len(EDGES)] = EDGES
  cols[1][: len(EDGES)] = -EDGES
  cols[2][: len(EDGES)] = EDGES[::-1]
  ids = rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64)
  ids[:6] = [0, 1, -1, 9, 2**63 - 1, -(2**63)]
  return ids, cols


def test_csv_block_is_byte_for_byte_the_csv_writer_format():
  ids, cols = _rows(600)
  got = pf.csv_block(ids, cols)
  assert got.splitlines() == reference(ids, cols).splitlines()  # the first difference shows
  assert got == reference(ids, cols)
  # Narrow ids and probabilities only (the usual case): the same.
  small = np.arange(1, 301, dtype=np.int32)
  probs = [c[:300].clip(0, 1) for c in (cols[0], np.abs(cols[1]))]
  probs = [np.nan_to_num(p) for p in probs]
  assert pf.csv_block(small, probs) == reference(small, probs)
  u = np.array([0, 7, 2**64 - 1], np.uint64)
  assert pf.csv_block(u, [EDGES[:3]]) == reference(u, [EDGES[:3]])
  # Narrower floats (the bf16 towers' dtype) and float64 (the slow path) likewise.
  bf16 = probs[0].astype(ml_dtypes.bfloat16)
  assert pf.csv_block(small, [bf16]) == reference(small, [bf16])
  f64 = cols[0][:300].astype(np.float64) / 3
  assert pf.csv_block(small, [f64]) == reference(small, [f64])


def test_every_float32_decade_and_rounding_tie_formats_as_python():
  # One value per float32 exponent and its neighbours: every decimal exponent, both sides of
  # each power of ten, and ties that round half to even.
  e = np.arange(1, 255, dtype=np.uint32) << 23
  near = np.concatenate([e - 1, e, e + 1, e + 12345]).view(np.float32)
  tens = np.array([10.0**k for k in range(-8, 8)], np.float32)
  ties = (np.arange(1, 256, 2) / 256).astype(np.float32)  # x / 256: 7-digit ties at 1e7
  v = np.concatenate([near, tens, np.nextafter(tens, 0), np.nextafter(tens, 2e7), ties])
  ids = np.arange(len(v))
  assert pf.csv_block(ids, [v]) == reference(ids, [v])


def test_write_csv_blocks_join_into_one_file_and_mismatched_columns_are_refused():
  ids, cols = _rows(100, seed=1)
  f = io.BytesIO()
  pf.write_csv(f, ["a", "b", "c"], ids, cols, block=7)
  assert f.getvalue() == b"sample_id,a,b,c\r\n" + reference(ids, cols)
  with pytest.raises(ValueError, match="a column has 99 rows, the ids 100"):
    pf.csv_block(ids, [cols[0][:99]])
  with pytest.raises(TypeError, match="floating values expected"):
    pf.csv_block(ids, [ids])


def test_predict_writes_the_same_predictions_as_csv_and_as_parquet(tmp_path):
  data = tiny.train_eval_datasets(tmp_path)
  config = tiny.run_config(data, **{"mesh.num_devices": 1, "train.num_steps": 2})
  workdir = str(tmp_path / "run")
  from esmjax.training import trainer

  trainer.train_and_evaluate(config, workdir)
  out_csv, out_pq = str(tmp_path / "p.csv"), str(tmp_path / "p.parquet")
  meta = predict.predict_to_csv(config, workdir, str(data / "eval"), out_csv)
  assert predict.predict_to_csv(config, workdir, str(data / "eval"), out_pq) == meta
  t = pq.read_table(out_pq)
  assert t.column_names == ["sample_id", "pctr", "pcvr", "pctcvr"] and t.num_rows == 300
  ids = t["sample_id"].to_numpy()
  assert ids.tolist() == list(range(10**6, 10**6 + 300))
  cols = [t[c].to_numpy() for c in ("pctr", "pcvr", "pctcvr")]
  assert cols[0].dtype == np.float32
  with open(out_csv, "rb") as f:
    assert f.read() == b"sample_id,pctr,pcvr,pctcvr\r\n" + reference(ids, cols)
