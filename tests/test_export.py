"""The jax.export serving artifact: same outputs as the in-process model, a documented signature,
a standalone script that needs neither esmjax nor the config, and the CLI's --mode=export."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tiny

from esmjax import api
from esmjax.serving import export as export_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What a serving process must not need: the training code and its configuration machinery.
BLOCK = (
  "import sys\n"
  "for m in ('esmjax', 'flax', 'optax', 'orbax', 'grain', 'ml_collections'):\n"
  "  sys.modules[m] = None\n"
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny ESM2 (all four outputs) trained 3 steps on a 2-device mesh, checkpointed."""
  root = tmp_path_factory.mktemp("export")
  tiny.tiny_dataset(str(root / "train"), n=1024)
  tiny.tiny_dataset(str(root / "eval"), n=256, seed=1)
  cfg = tiny.tiny_config("esm2", **{"train.num_steps": 3, "mesh.num_devices": 2})
  cfg.data.train_dir, cfg.data.eval_dir = str(root / "train"), str(root / "eval")
  wd = str(root / "wd")
  api.train(cfg, wd)
  model = api.load(wd)
  path = str(root / "esm2.jaxexport")
  sig = model.export(path)
  return model, path, sig, root


def _rows(n, seed):
  b = tiny.random_block(tiny.tiny_schema(), n, seed=seed)
  return {k: b[k] for k in api.INPUT_KEYS}


def test_exported_equals_in_process_model(trained):
  model, path, _, _ = trained
  served = export_lib.load_exported(path)
  for n, seed in ((1, 3), (37, 4)):  # one artifact, any batch size
    rows = _rows(n, seed)
    got, want = served(rows), model.predict(rows)
    assert sorted(got) == sorted(want) == ["pctavr", "pctcvr", "pctr", "pcvr"]
    for k in want:
      assert got[k].shape == (n,) and got[k].dtype == np.float32
      np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=0, err_msg=k)
  # The in-process model on a whole dataset gives the same numbers too (row order = file order).
  ev = tiny.tiny_dataset(str(trained[3] / "eval2"), n=200, seed=6)
  full = model.predict(ev)
  np.testing.assert_allclose(served(ev.read_all())["pcvr"], full["pcvr"], rtol=1e-6)


def test_signature_documents_inputs_and_outputs(trained):
  model, path, sig, _ = trained
  s = tiny.tiny_schema()
  assert export_lib.load_exported(path).signature == sig
  assert (
    sig["format"] == "esmjax-export" and sig["model"] == "esm2" and sig["step"] == model.step == 3
  )
  assert [x["name"] for x in sig["inputs"]] == ["sparse", "mv_ids", "mv_w", "dense"]
  assert [x["dtype"] for x in sig["inputs"]] == ["int32", "int32", "float32", "float32"]
  assert [x["shape"] for x in sig["inputs"]] == [["b", 3], ["b", 5], ["b", 5], ["b", 2]]
  sparse, mv_ids, _, dense = sig["inputs"]
  assert [(f["name"], f["vocab_size"]) for f in sparse["fields"]] == [
    ("user", 12),
    ("item", 9),
    ("ctx", 4),
  ]
  assert [(f["name"], f["columns"], f["pooling"]) for f in mv_ids["fields"]] == [
    ("hist", [0, 3], "sum"),
    ("tags", [3, 5], "mean"),
  ]
  assert mv_ids["vocab_sizes"] == [9, 9, 9, 6, 6]
  assert [f["name"] for f in dense["fields"]] == [f.name for f in s.dense]
  assert [o["name"] for o in sig["outputs"]] == ["pctr", "pcvr", "pctcvr", "pctavr"]
  assert "cpu" in sig["platforms"] and sig["batch_size"] is None


def test_fixed_batch_size_and_input_errors(trained):
  model, _, _, root = trained
  path = str(root / "fixed.jaxexport")
  sig = model.export(path, batch_size=8, platforms=("cpu",))
  assert sig["inputs"][0]["shape"] == [8, 3] and sig["platforms"] == ["cpu"]
  served = export_lib.load_exported(path)
  rows = _rows(8, 7)
  np.testing.assert_allclose(served(rows)["pctr"], model.predict(rows)["pctr"], rtol=1e-6)
  with pytest.raises(ValueError, match=r"sparse has shape \(5, 3\), expected \(8, 3\)"):
    served(_rows(5, 7))
  bad = {**rows, "sparse": rows["sparse"].copy()}
  bad["sparse"][2, 1] = 9  # field 'item' has 9 ids
  with pytest.raises(ValueError, match=r"sparse column 1 has ids outside \[0, 9\)"):
    served(bad)
  with pytest.raises(ValueError, match="lacks 'dense'"):
    served({k: v for k, v in rows.items() if k != "dense"})


def test_standalone_script_needs_no_esmjax(trained, tmp_path):
  model, path, _, _ = trained
  rows = _rows(6, 8)
  np.savez(tmp_path / "rows.npz", **rows)
  script = os.path.join(REPO, "examples", "serve_exported.py")
  code = (
    BLOCK + f"sys.argv = ['serve', {path!r}, {str(tmp_path / 'rows.npz')!r}]\n"
    f"import runpy; runpy.run_path({script!r}, run_name='__main__')\n"
  )
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
  out = subprocess.run(
    [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
  )
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.split("\n")
  names = lines[0].split()
  assert names == ["pctr", "pcvr", "pctcvr", "pctavr"]
  got = np.asarray([[float(v) for v in line.split()] for line in lines[1:7]], np.float32)
  want = model.predict(rows)
  for j, k in enumerate(names):  # 9 significant digits round-trip float32 exactly
    np.testing.assert_allclose(got[:, j], want[k], rtol=1e-6, err_msg=k)


def test_cli_export_mode(trained, tmp_path):
  model, _, _, _ = trained
  cfg_file = tmp_path / "saved_config.py"
  cfg_file.write_text(
    f"from esmjax import api\n\n\ndef get_config():\n  return api.saved_config({model.workdir!r})\n"
  )
  path = str(tmp_path / "cli" / "m.jaxexport")
  out = tiny.run_cli(  # one device: restore re-shards
    [
      f"--config={cfg_file}",
      "--config.mesh.num_devices=1",
      f"--workdir={model.workdir}",
      "--mode=export",
      f"--export_path={path}",
    ],
    timeout=180,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"to {path}" in out.stdout
  rows = _rows(9, 9)
  np.testing.assert_allclose(
    export_lib.load_exported(path)(rows)["pctcvr"], model.predict(rows)["pctcvr"], rtol=1e-6
  )


# -- stray ids: scored as OOV in the function and the library, refused by load_exported -----------


def _strays(n=12, seed=11):
  """(rows with ids outside their field's vocabulary, int64; the same rows with OOV = 1 there;
  {field: strays}). Tiny schema: sparse user 12, item 9, ctx 4; mv_ids hist 9 x 3, tags 6 x 2."""
  rows = _rows(n, seed)
  bad = {k: v.astype(np.int64) if k in ("sparse", "mv_ids") else v.copy() for k, v in rows.items()}
  oov = {k: v.copy() for k, v in rows.items()}
  for key, r, c, v in (
    ("sparse", 0, 0, 12),
    ("sparse", 1, 1, -1),
    ("sparse", 2, 1, 2**32 + 5),
    ("sparse", 3, 2, 104),
    ("mv_ids", 4, 0, 9),
    ("mv_ids", 5, 2, -(2**40)),
    ("mv_ids", 6, 4, 6),
  ):
    bad[key][r, c] = v
    oov[key][r, c] = 1
    if key == "mv_ids":  # a weighted slot: the row it reads matters
      bad["mv_w"][r, c] = oov["mv_w"][r, c] = 1.5
  return bad, oov, {"user": 1, "item": 2, "ctx": 1, "hist": 2, "tags": 1}


def _as_int32(bad):
  """The stray rows as int32: 2**32 + 5 and -2**40 have no int32 form, so 9 (item's vocabulary
  size) and -2**31 stand in for them."""
  out = {**bad, "sparse": bad["sparse"].astype(np.int32), "mv_ids": bad["mv_ids"].astype(np.int32)}
  out["sparse"][2, 1] = 9
  out["mv_ids"][5, 2] = -(2**31)
  return out


def test_library_predict_scores_stray_ids_as_oov_and_counts_them(trained):
  model, _, _, _ = trained
  bad, oov, counts = _strays()
  want = model.predict(oov)
  assert model.oov_counts == {}
  got = model.predict(bad)  # int64 ids, one of them 2**32 + 5 (5 once cast to int32: a valid id)
  assert model.oov_counts == counts
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  # The device step that scores datasets maps and counts the same.
  from esmjax.common import inputs
  from esmjax.core import sharding as sh

  mesh = model.run.mesh
  out = sh.to_host_local(model._step_fn(model.state, sh.put_batch(_as_int32(bad), mesh)), mesh)
  per_row = np.asarray(out.pop(inputs.STRAYS_KEY))
  assert dict(zip(inputs.id_fields(model.schema), per_row.sum(0).tolist(), strict=True)) == counts
  for k in want:
    np.testing.assert_allclose(out[k], want[k], rtol=1e-6, err_msg=k)


def test_library_predict_refuses_values_that_are_not_ids(trained):
  model, _, _, _ = trained
  rows = _rows(4, 12)
  for value, shown in ((2.5, "2.5"), (np.nan, "nan")):
    bad = {**rows, "mv_ids": rows["mv_ids"].astype(np.float64)}
    bad["mv_ids"][1, 3] = value
    message = rf"predict: mv_ids column 3 \(field 'tags'\) holds {shown} at row 1, a value that"
    with pytest.raises(ValueError, match=message + " is not an integer id"):
      model.predict(bad)
  integral = {**rows, "sparse": rows["sparse"].astype(np.float32)}  # 3.0 is id 3
  np.testing.assert_array_equal(model.predict(integral)["pctr"], model.predict(rows)["pctr"])
  bad = {**rows, "dense": rows["dense"].copy()}
  bad["dense"][2, 1] = np.inf
  with pytest.raises(ValueError, match=r"dense column 1 \(field 'age'\) holds inf at row 2"):
    model.predict(bad)


def test_load_exported_checks_ids_before_the_cast(trained):
  _, path, _, _ = trained
  served = export_lib.load_exported(path)
  rows = _rows(4, 13)
  cases = [
    (
      "sparse",
      np.int64,
      (1, 1),
      2**32 + 5,
      r"sparse column 1 has ids outside \[0, 9\) of field 'item' \(4294967301 at row 1\)",
    ),
    (
      "sparse",
      np.uint64,
      (0, 2),
      2**63,
      r"sparse column 2 has ids outside \[0, 4\) of field 'ctx'",
    ),
    (
      "mv_ids",
      np.int64,
      (3, 0),
      -1,
      r"mv_ids column 0 has ids outside \[0, 9\) of field 'hist' \(-1 at row 3\)",
    ),
    ("mv_ids", np.float64, (2, 4), 2.5, r"mv_ids column 4 \(field 'tags'\) holds 2.5 at row 2"),
    ("sparse", np.float32, (0, 0), np.nan, r"sparse column 0 \(field 'user'\) holds nan at row 0"),
    (
      "mv_w",
      np.float64,
      (1, 1),
      1e39,
      r"mv_w column 1 \(field 'hist'\) holds 1e\+39 at row 1, a value that is not a finite "
      "float32",
    ),
  ]
  for key, dtype, (r, c), value, message in cases:
    bad = {**rows, key: rows[key].astype(dtype)}
    bad[key][r, c] = value
    with pytest.raises(ValueError, match="exported model: " + message):
      served(bad)
  with pytest.raises(ValueError, match="sparse has dtype <U1"):
    served({**rows, "sparse": np.full((4, 3), "1")})
  integral = {
    **rows,
    "sparse": rows["sparse"].astype(np.float64),
    "mv_ids": rows["mv_ids"].astype(np.int64),
  }
  np.testing.assert_array_equal(served(integral)["pctr"], served(rows)["pctr"])


def test_exported_function_scores_stray_ids_as_oov_standalone(trained, tmp_path):
  """The deserialized function alone (no esmjax) maps strays in the graph; the example script maps
  int64 strays before its int32 cast; both equal the OOV rows' scores."""
  model, path, sig, _ = trained
  assert sig["inputs"][0]["out_of_range"] == export_lib.STRAYS_DOC
  assert sig["inputs"][1]["out_of_range"] == export_lib.STRAYS_DOC
  bad, oov, _ = _strays()
  want = model.predict(oov)
  np.savez(tmp_path / "bad.npz", **bad)
  np.savez(tmp_path / "int32.npz", **_as_int32(bad))  # strays the function itself must map
  script = os.path.join(REPO, "examples", "serve_exported.py")
  code = BLOCK + (
    f"sys.argv = ['serve', {path!r}, {str(tmp_path / 'bad.npz')!r}]\n"
    f"import runpy; ns = runpy.run_path({script!r}, run_name='__main__')\n"
    "import numpy as np\n"
    f"rows = dict(np.load({str(tmp_path / 'int32.npz')!r}))\n"
    "names = [x['name'] for x in ns['signature']['inputs']]\n"
    "out = ns['exported'].call({k: rows[k] for k in names})\n"
    f"np.savez({str(tmp_path / 'direct.npz')!r},"
    " **{k: np.asarray(v) for k, v in out.items()})\n"
  )
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
  out = subprocess.run(
    [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
  )
  assert out.returncode == 0, out.stderr[-2000:]
  assert (
    "serve_exported: 4 sparse id(s) outside their field's vocabulary scored as OOV" in out.stderr
  )
  assert "serve_exported: 3 mv_ids id(s) outside" in out.stderr
  lines = out.stdout.split("\n")
  names = lines[0].split()
  got = np.asarray([[float(v) for v in line.split()] for line in lines[1:13]], np.float32)
  direct = dict(np.load(tmp_path / "direct.npz"))
  for j, k in enumerate(names):
    np.testing.assert_allclose(got[:, j], want[k], rtol=1e-6, err_msg=k)
    np.testing.assert_allclose(direct[k], want[k], rtol=1e-6, err_msg=k)
