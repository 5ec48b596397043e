"""The Python API: the README's example, run as written; load / predict / evaluate; a cheap
import."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tiny

import esmjax
from esmjax import api

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The README's "Python API" example, verbatim (test_readme_shows_this_example keeps them equal).
README_EXAMPLE = """\
import esmjax
from esmjax.config import defaults as config_lib

config = config_lib.default_config()  # ESMM on the synthetic world; or any configs/*.py get_config()
config.data.synthetic.update(num_train=20_000, num_eval=4_000, calibration_rows=20_000)  # small world
config.train.update(batch_size=512, num_steps=40)
summary = esmjax.train(config, workdir="workdirs/notebook")
print(summary["metrics"]["ctr/auc"], summary["metrics"]["cvr/auc"])

model = esmjax.load("workdirs/notebook")    # config and schema come from the workdir
preds = model.predict(summary["eval_dir"])  # a dataset directory, a Dataset, or a dict of arrays
print(preds["pctr"][:3], preds["pcvr"][:3], preds["pctcvr"][:3])
"""  # noqa: E501 (verbatim from README.md, whose example has two lines of 101 and 102 columns)


def test_readme_example_runs_as_written(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("HOME", str(tmp_path))  # the synthetic cache (~/.cache/esmjax) goes here
  ns: dict = {}
  exec(compile(README_EXAMPLE, "README.md", "exec"), ns)
  summary, model, preds = ns["summary"], ns["model"], ns["preds"]
  assert summary["steps"] == 40 and summary["workdir"] == "workdirs/notebook"
  assert 0.5 < summary["metrics"]["ctr/auc"] <= 1.0
  assert model.step == 40 and model.config.model.name == "esmm"
  assert model.config.data.synthetic.num_train == 20_000  # the saved config, rebuilt
  assert isinstance(model.config.model.hidden, tuple)
  assert len(preds["pctr"]) == 4_000 and preds["pctr"].dtype == np.float32
  np.testing.assert_allclose(preds["pctcvr"], preds["pctr"] * preds["pcvr"], rtol=1e-5)
  # The loaded model evaluates to the metrics the run reported (same checkpoint, same data).
  m = model.evaluate(summary["eval_dir"])
  assert m["ctr/auc"] == pytest.approx(summary["metrics"]["ctr/auc"], abs=1e-9)
  assert m["cvr/auc"] == pytest.approx(summary["metrics"]["cvr/auc"], abs=1e-9)


def test_readme_shows_this_example():
  path = os.path.join(REPO, "README.md")
  text = open(path).read() if os.path.exists(path) else ""
  if "## Python API" not in text:
    pytest.skip("README.md has no 'Python API' section yet")
  blocks = re.findall(r"```python\n(.*?)```", text.split("## Python API", 1)[1], re.S)
  assert blocks and blocks[0] == README_EXAMPLE, (
    "README's Python API example differs from the tested one"
  )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("api")
  tiny.tiny_dataset(str(root / "train"), n=1024)
  tiny.tiny_dataset(str(root / "eval"), n=300, seed=1)
  cfg = tiny.tiny_config("esmm", **{"train.num_steps": 3})
  cfg.data.train_dir, cfg.data.eval_dir = str(root / "train"), str(root / "eval")
  return root, cfg, esmjax.train(cfg, str(root / "wd"))


def test_predict_rows_match_dataset(run_dir):
  root, _, summary = run_dir
  model = esmjax.load(summary["workdir"])
  full = model.predict(str(root / "eval"))
  assert {"pctr", "pcvr", "pctcvr", "sample_id", "labels"} <= set(full)
  assert list(full["sample_id"]) == list(range(300))  # file order
  rows = tiny.random_block(tiny.tiny_schema(), 300, seed=1)  # the eval set's rows
  part = model.predict({k: rows[k][17:50] for k in ("sparse", "mv_ids", "mv_w", "dense", "labels")})
  assert sorted(part) == ["pctcvr", "pctr", "pcvr"]
  for k in part:
    np.testing.assert_allclose(part[k], full[k][17:50], rtol=1e-6)
  empty = model.predict({k: rows[k][:0] for k in api.INPUT_KEYS})
  assert sorted(empty) == ["pctcvr", "pctr", "pcvr"] and all(len(v) == 0 for v in empty.values())


def test_load_without_summary_uses_checkpoint_config_and_explicit_config(run_dir):
  root, cfg, summary = run_dir
  wd = summary["workdir"]
  os.rename(os.path.join(wd, "summary.json"), os.path.join(wd, "summary.moved"))
  try:
    from_ckpt = api.saved_config(wd)
  finally:
    os.rename(os.path.join(wd, "summary.moved"), os.path.join(wd, "summary.json"))
  assert (
    from_ckpt.model.hidden == cfg.model.hidden and from_ckpt.model.embed_dim == cfg.model.embed_dim
  )
  model = esmjax.load(wd, config=cfg)
  assert model.step == 3 and model.schema == tiny.tiny_schema()


def test_a_workdir_saved_without_model_dtype_is_scored_in_float32(run_dir, tmp_path):
  # A run saved before the key existed trained in f32: the default 'auto' must not score it in bf16.
  import shutil

  from esmjax.common import digest

  wd = str(tmp_path / "old")
  shutil.copytree(run_dir[2]["workdir"], wd)
  path = os.path.join(wd, "summary.json")
  summary = digest.read_json(path, "test")
  assert summary["config"]["model"]["dtype"] == "float32"  # tiny configs pin f32
  del summary["config"]["model"]["dtype"]
  digest.write_json(path, summary)
  assert api.saved_config(wd).model.dtype == "float32"
  summary["config"]["model"]["dtype"] = "bfloat16"  # a key the run saved is taken as saved
  digest.write_json(path, summary)
  assert api.saved_config(wd).model.dtype == "bfloat16"


def test_clear_errors(run_dir, tmp_path):
  _, _, summary = run_dir
  model = esmjax.load(summary["workdir"])
  rows = tiny.random_block(tiny.tiny_schema(), 4)
  with pytest.raises(ValueError, match=r"batch\['sparse'\] has shape \(4, 2\), expected \(4, 3\)"):
    model.predict({**rows, "sparse": rows["sparse"][:, :2]})
  with pytest.raises(ValueError, match="lacks \\['mv_w'\\]"):
    model.predict({k: v for k, v in rows.items() if k != "mv_w"})
  with pytest.raises(TypeError, match="dataset directory"):
    model.predict([1, 2, 3])
  with pytest.raises(FileNotFoundError, match="config"):
    esmjax.load(str(tmp_path))


def test_import_is_cheap_and_versioned():
  code = (
    "import sys, esmjax; assert 'jax' not in sys.modules, 'jax imported'; "
    "assert callable(esmjax.train) and callable(esmjax.load); print(esmjax.__version__)"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  import importlib.metadata

  assert out.stdout.strip() == esmjax.__version__ == importlib.metadata.version("esmjax")
  assert json.loads(json.dumps(sorted(esmjax.__all__))) == ["__version__", "load", "train"]
