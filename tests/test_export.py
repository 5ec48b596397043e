"""The jax.export serving artifact: same outputs as the in-process model, a documented signature,
a standalone script that needs neither esmjax nor the config, and the CLI's --mode=export."""

import os
import subprocess
import sys

import numpy as np
import pytest

import tiny
from esmjax import api
from esmjax import export as export_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What a serving process must not need: the training code and its configuration machinery.
BLOCK = "import sys\nfor m in ('esmjax', 'flax', 'optax', 'orbax', 'grain', 'ml_collections'):\n  sys.modules[m] = None\n"


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
  assert sig["format"] == "esmjax-export" and sig["model"] == "esm2" and sig["step"] == model.step == 3
  assert [x["name"] for x in sig["inputs"]] == ["sparse", "mv_ids", "mv_w", "dense"]
  assert [x["dtype"] for x in sig["inputs"]] == ["int32", "int32", "float32", "float32"]
  assert [x["shape"] for x in sig["inputs"]] == [["b", 3], ["b", 5], ["b", 5], ["b", 2]]
  sparse, mv_ids, _, dense = sig["inputs"]
  assert [(f["name"], f["vocab_size"]) for f in sparse["fields"]] == [("user", 12), ("item", 9), ("ctx", 4)]
  assert [(f["name"], f["columns"], f["pooling"]) for f in mv_ids["fields"]] == [
      ("hist", [0, 3], "sum"), ("tags", [3, 5], "mean")]
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
  code = BLOCK + f"sys.argv = ['serve', {path!r}, {str(tmp_path / 'rows.npz')!r}]\n" \
                 f"import runpy; runpy.run_path({script!r}, run_name='__main__')\n"
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
  out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
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
  cfg_file.write_text("from esmjax import api\n\n\ndef get_config():\n"
                      f"  return api.saved_config({model.workdir!r})\n")
  path = str(tmp_path / "cli" / "m.jaxexport")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device: restore re-shards
  out = subprocess.run([sys.executable, "-m", "esmjax.main", f"--config={cfg_file}", "--config.mesh.num_devices=1",
                        f"--workdir={model.workdir}", "--mode=export", f"--export_path={path}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"to {path}" in out.stdout
  rows = _rows(9, 9)
  np.testing.assert_allclose(export_lib.load_exported(path)(rows)["pctcvr"], model.predict(rows)["pctcvr"],
                             rtol=1e-6)
