"""Every file esmjax writes and later reads back is verified on read (`esmjax.common.digest`): a
changed
workdir schema, checkpoint data position, dataset manifest, export, vocabulary or converter state
stops the reader with one line naming the file (exit 4), never a result computed from it; paths
inside a manifest stay inside its directory and name regular files."""

import glob
import json
import logging
import os
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import tiny
from test_aliccp import build_raw

from esmjax import api, cli, seal
from esmjax.checkpoints import checkpoint as ckpt_lib
from esmjax.common import digest
from esmjax.core import feed as data_lib
from esmjax.data.format import dataset as D
from esmjax.data.ingest.aliccp import convert as aliccp
from esmjax.data.ingest.csv import ingest as csv_ingest
from esmjax.serving import export as export_lib
from esmjax.serving import predict as predict_lib
from esmjax.training import trainer

REPO = Path(__file__).resolve().parents[1]
RECHUB_TRAIN = REPO / "tests/data/public-samples/torch-rechub/examples/ranking/data/ali-ccp"


def _edit_json(path, change):
  """Rewrites the JSON file `path` with `change(obj)` applied, its digest left as it was."""
  with open(path) as f:
    obj = json.load(f)
  change(obj)
  with open(path, "w") as f:
    json.dump(obj, f, indent=1)


def _exit_code(fn):
  """The exit code the command line gives when `fn` raises (cli.exit_codes), and its line."""
  with pytest.raises(SystemExit) as e:
    with cli.exit_codes():
      fn()
  return e.value.code


@pytest.fixture(scope="module")
def workdir(data, tmp_path_factory):
  """A tiny ESMM trained 4 steps on one device, checkpoints at steps 2 and 4."""
  wd = str(tmp_path_factory.mktemp("wd"))
  api.train(_config(data), wd)
  return wd


def _config(data):
  return tiny.run_config(
    data, **{"mesh.num_devices": 1, "train.num_steps": 4, "checkpoint.every_steps": 2}
  )


# -- the workdir ----------------------------------------------------------------------------------


def test_an_edited_dense_mean_in_schema_json_stops_load_predict_and_export(workdir, tmp_path):
  wd = str(tmp_path / "wd")
  shutil.copytree(workdir, wd)
  rows = tiny.random_block(tiny.tiny_schema(), 5, seed=2)
  rows = {k: rows[k] for k in api.INPUT_KEYS}
  before = api.load(wd).predict(rows)
  path = os.path.join(wd, "schema.json")

  def shift_mean(obj):
    obj["dense"][0]["mean"] += 0.5

  _edit_json(path, shift_mean)
  for what in (
    lambda: api.load(wd),
    lambda: predict_lib.load_schema(wd),
    lambda: export_lib.export(wd, str(tmp_path / "m.jaxexport")),
  ):
    with pytest.raises(digest.IntegrityError, match=rf"{path} changed after esmjax wrote it"):
      what()
  assert _exit_code(lambda: predict_lib.load_schema(wd)) == 4
  assert not os.path.exists(tmp_path / "m.jaxexport")
  # Re-indenting changes no value: still accepted, with the same predictions.
  _edit_json(path, lambda obj: obj["dense"][0].update(mean=obj["dense"][0]["mean"] - 0.5))
  np.testing.assert_array_equal(api.load(wd).predict(rows)["pctr"], before["pctr"])
  # Without a digest (an older esmjax): refused, saying how to seal it.
  _edit_json(path, lambda obj: obj.pop(digest.KEY))
  with pytest.raises(digest.IntegrityError, match=r"has no digest .*python -m esmjax.seal"):
    api.load(wd)
  assert seal.main([path]) == 0
  np.testing.assert_array_equal(api.load(wd).predict(rows)["pctr"], before["pctr"])


def test_the_cli_export_of_an_edited_schema_exits_4_with_one_line(workdir, tmp_path):
  wd = str(tmp_path / "wd")
  shutil.copytree(workdir, wd)
  path = os.path.join(wd, "schema.json")
  _edit_json(path, lambda obj: obj["dense"][0].update(mean=obj["dense"][0]["mean"] + 0.5))
  cfg_file = tmp_path / "saved_config.py"
  cfg_file.write_text(
    f"from esmjax import api\n\n\ndef get_config():\n  return api.saved_config({wd!r})\n"
  )
  out = tiny.run_cli(
    [
      f"--config={cfg_file}",
      f"--workdir={wd}",
      "--mode=export",
      f"--export_path={tmp_path / 'm.jaxexport'}",
    ]
  )
  assert out.returncode == 4, out.stderr[-2000:]
  errors = [ln for ln in out.stderr.splitlines() if ln.startswith("esmjax: error:")]
  assert len(errors) == 1
  assert errors[0].startswith(f"esmjax: error: {path} changed after esmjax wrote it")
  assert "Traceback" not in out.stderr and not os.path.exists(tmp_path / "m.jaxexport")


def test_an_edited_summary_config_stops_load(workdir, tmp_path):
  wd = str(tmp_path / "wd")
  shutil.copytree(workdir, wd)
  path = os.path.join(wd, "summary.json")
  _edit_json(path, lambda obj: obj["config"]["model"].update(name="esm2"))
  with pytest.raises(digest.IntegrityError, match=rf"{path} changed after esmjax wrote it"):
    api.load(wd)


# -- the checkpoint's data position, config and meta ----------------------------------------------


def _restore_with_position(data, wd):
  """(restored step, the data iterator's position) of the latest usable checkpoint."""
  config = _config(data)
  run = trainer.Run(config, tiny.tiny_schema())
  train_ds, _ = data_lib.resolve_datasets(config)
  it = data_lib.make_train_iter(config, train_ds)
  ck = ckpt_lib.Checkpointer(wd, config, run)
  try:
    ck.restore_latest(it)
    return ck.restored_step, it.get_state()
  finally:
    ck.close()
    data_lib.close_iter(it)


def _position_file(wd, step):
  (path,) = glob.glob(os.path.join(wd, "checkpoints", str(step), "data", "*.json"))
  return path


def test_an_edited_data_position_is_never_resumed_from(data, workdir, tmp_path, caplog):
  wd = str(tmp_path / "wd")
  shutil.copytree(workdir, wd)
  step, intact = _restore_with_position(data, workdir)
  assert step == 4
  path = _position_file(wd, 4)
  text = open(path).read()
  digits = [i for i, c in enumerate(text) if c.isdigit()]
  at = digits[-1]  # one digit of the saved position
  open(path, "w").write(text[:at] + str((int(text[at]) + 1) % 10) + text[at + 1 :])
  with caplog.at_level(logging.WARNING):
    step, position = _restore_with_position(data, wd)
  assert step == 2 and position != intact  # the previous checkpoint, at its own position
  assert "data iterator position of process 0 differs from the digest" in caplog.text
  # With no other checkpoint left, resuming stops (exit 3) instead of training from elsewhere.
  shutil.rmtree(os.path.join(wd, "checkpoints", "2"))
  shutil.copytree(os.path.join(workdir, "checkpoints", "4"), os.path.join(wd, "checkpoints", "4"))
  open(_position_file(wd, 4), "w").write(text[:at] + str((int(text[at]) + 1) % 10) + text[at + 1 :])
  with pytest.raises(ckpt_lib.CheckpointError, match="no readable checkpoint"):
    _restore_with_position(data, wd)


@pytest.mark.parametrize("item", ["config", "meta"])
def test_an_edited_checkpoint_config_or_meta_falls_back_and_is_named(
  data, workdir, tmp_path, caplog, item
):
  wd = str(tmp_path / "wd")
  shutil.copytree(workdir, wd)
  path = os.path.join(wd, "checkpoints", "4", item, "metadata")
  if item == "config":
    _edit_json(path, lambda obj: obj["train"].update(seed=obj["train"]["seed"] + 1))
  else:
    _edit_json(path, lambda obj: obj.update(num_devices=obj["num_devices"] + 0, step=3))
  with caplog.at_level(logging.WARNING):
    step, _ = _restore_with_position(data, wd)
  assert step == 2
  assert f"its {item} item differs from" in caplog.text


# -- datasets ------------------------------------------------------------------------------------


@pytest.fixture
def ds(tmp_path):
  """2000 rows in blocks of 128, 3 blocks per shard: shards 00000 .. 00005."""
  return tiny.tiny_dataset(str(tmp_path / "d"), n=2000, block_rows=128)


def test_one_flipped_bit_in_the_manifest_is_refused(ds):
  mpath = os.path.join(ds.directory, "manifest.json")
  raw = open(mpath, "rb").read()
  at = raw.index(b"shard-00002.esb") + len("shard-0000")
  open(mpath, "wb").write(raw[:at] + bytes([raw[at] ^ 1]) + raw[at + 1 :])  # -> shard-00003
  assert b"shard-00003.esb" in open(mpath, "rb").read()
  with pytest.raises(digest.IntegrityError, match=rf"{mpath} changed after esmjax wrote it"):
    D.open_dataset(ds.directory)
  assert _exit_code(lambda: D.open_dataset(ds.directory)) == 4


def test_a_sealed_manifest_naming_another_shard_is_refused(ds):
  # A tool that rewrites the manifest (and seals it) cannot make shard 3 stand in for shard 2.
  mpath = os.path.join(ds.directory, "manifest.json")
  m = json.load(open(mpath))
  m["shards"][2]["path"] = m["shards"][3]["path"]
  digest.write_json(mpath, m)
  shard3 = re.escape(os.path.join(ds.directory, "shard-00003.esb"))
  with pytest.raises(digest.IntegrityError, match=rf"{shard3} is not the shard .* lists"):
    D.open_dataset(ds.directory)


def test_a_manifest_without_digest_is_refused_until_sealed(ds):
  mpath = os.path.join(ds.directory, "manifest.json")
  want = ds.read_all()
  _edit_json(mpath, lambda obj: obj.pop(digest.KEY))
  with pytest.raises(digest.IntegrityError, match="has no digest"):
    D.open_dataset(ds.directory)
  assert seal.main([ds.directory]) == 0
  np.testing.assert_array_equal(D.open_dataset(ds.directory).read_all()["sparse"], want["sparse"])


def _alarm(seconds):
  def handler(*_):
    raise TimeoutError("blocked")

  signal.signal(signal.SIGALRM, handler)
  signal.alarm(seconds)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "fifo", "directory"])
def test_shard_paths_stay_inside_the_directory_and_name_regular_files(ds, tmp_path, kind):
  mpath = os.path.join(ds.directory, "manifest.json")
  outside = tmp_path / "x.esb"
  shutil.copy(ds.shard_paths[0], outside)
  name = {
    "dotdot": "../x.esb",
    "absolute": "/etc/passwd",
    "symlink": "link.esb",
    "fifo": "fifo.esb",
    "directory": "sub.esb",
  }[kind]
  if kind == "symlink":
    os.symlink(outside, os.path.join(ds.directory, name))
  elif kind == "fifo":
    os.mkfifo(os.path.join(ds.directory, name))
  elif kind == "directory":
    os.mkdir(os.path.join(ds.directory, name))
  m = json.load(open(mpath))
  m["shards"][0]["path"] = name
  digest.write_json(mpath, m)  # sealed: the path itself is what is refused
  why = {
    "dotdot": "a path outside its directory",
    "absolute": "a path outside its directory",
    "symlink": "a link to .* outside",
    "fifo": "not a regular file",
    "directory": "not a regular file",
  }[kind]
  _alarm(10)
  try:
    with pytest.raises(digest.IntegrityError, match=rf"{re.escape(mpath)} names .*{why}"):
      D.open_dataset(ds.directory)
    assert _exit_code(lambda: D.open_dataset(ds.directory)) == 4
  finally:
    signal.alarm(0)


def test_a_symlink_inside_the_directory_is_read(ds):
  src = ds.shard_paths[0]
  os.rename(src, src + ".real")
  os.symlink(os.path.basename(src) + ".real", src)
  assert D.open_dataset(ds.directory).num_rows == 2000


# -- exports -------------------------------------------------------------------------------------


def test_single_byte_flips_of_an_export_or_its_signature_are_refused(workdir, tmp_path):
  path = str(tmp_path / "m.jaxexport")
  export_lib.export(workdir, path)
  good = open(path, "rb").read()
  export_lib.load_exported(path)  # intact: loads
  for at in np.linspace(0, len(good) - 1, 12).astype(int):
    open(path, "wb").write(good[:at] + bytes([good[at] ^ 0x10]) + good[at + 1 :])
    with pytest.raises(digest.IntegrityError, match=rf"{path} changed after esmjax wrote it"):
      export_lib.load_exported(path)
  open(path, "wb").write(good)
  sig = path + ".json"
  _edit_json(sig, lambda obj: obj["inputs"][3]["fields"][0].update(mean=9.0))
  with pytest.raises(digest.IntegrityError, match=rf"{sig} changed after esmjax wrote it"):
    export_lib.load_exported(path)


# -- vocabularies and statistics reused by --stats_from ------------------------------------------


@pytest.mark.parametrize("target", ["vocab", "stats", "swapped_vocab"])
def test_stats_from_refuses_changed_vocabularies_and_statistics(tmp_path, target):
  cfg = tiny.repo_config("configs/data/rechub_aliccp.py")
  train = str(RECHUB_TRAIN / "ali_ccp_train_sample.csv")
  test = str(RECHUB_TRAIN / "ali_ccp_test_sample.csv")
  tr = tmp_path / "train"
  csv_ingest.ingest(cfg, [train], str(tr), progress=False)
  if target == "vocab":
    path = str(tr / "vocabs.json")

    def swap(v):  # two ids of the longest vocabulary trade places
      values = max((v[k]["values"] for k in v if k != digest.KEY), key=len)
      values[0], values[1] = values[1], values[0]

    _edit_json(path, swap)
  elif target == "stats":
    path = str(tr / "manifest.json")
    _edit_json(path, lambda m: m["schema"]["dense"][0].update(mean=1.5))
  else:  # another ingestion's vocabulary, sealed and intact, in its place
    other = tmp_path / "other"
    csv_ingest.ingest(cfg, [test], str(other), progress=False)
    shutil.copy(other / "vocabs.json", tr / "vocabs.json")
    path = str(tr / "vocabs.json")
  with pytest.raises(digest.IntegrityError, match=re.escape(path)):
    csv_ingest.ingest(cfg, [test], str(tmp_path / "test"), stats_from=str(tr), progress=False)
  assert not os.path.exists(tmp_path / "test" / "manifest.json")


# -- the Ali-CCP converter's resume state ---------------------------------------------------------


@pytest.mark.parametrize("target", ["sidecar", "common_npy", "common_meta", "shard"])
def test_a_changed_converter_state_stops_the_resume(tmp_path, target):
  sk, cf, _ = build_raw(tmp_path)
  out = tmp_path / "out"

  def convert():
    return aliccp.convert(
      str(sk),
      str(cf),
      str(out),
      workers=1,
      range_mb=4 / 1024,
      progress=False,
      keep_common_index=True,
    )

  convert()
  if target == "sidecar":
    path = str(out / "shard-00000.done.json")
    _edit_json(path, lambda s: s.update(clicks=s["clicks"] + 1))
  elif target == "common_meta":
    path = str(out / "_common" / "meta.json")
    _edit_json(path, lambda m: m.update(n_rows=m["n_rows"] + 1))
  elif target == "common_npy":
    path = str(out / "_common" / "keys.npy")
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[:-1] + bytes([raw[-1] ^ 1]))
  else:
    path = str(out / "shard-00000.esb")
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[:-40] + bytes([raw[-40] ^ 1]) + raw[-39:])
  os.remove(out / "manifest.json")  # an interrupted conversion: the next run resumes
  with pytest.raises(digest.IntegrityError, match=re.escape(path)):
    convert()


def test_stats_from_an_older_ingestion_works_once_sealed(tmp_path):
  cfg = tiny.repo_config("configs/data/rechub_aliccp.py")
  train = str(RECHUB_TRAIN / "ali_ccp_train_sample.csv")
  test = str(RECHUB_TRAIN / "ali_ccp_test_sample.csv")
  tr = tmp_path / "train"
  csv_ingest.ingest(cfg, [train], str(tr), progress=False)
  want = csv_ingest.ingest(cfg, [test], str(tmp_path / "t1"), stats_from=str(tr), progress=False)
  # As an older esmjax wrote them: no digests anywhere.
  _edit_json(str(tr / "vocabs.json"), lambda v: v.pop(digest.KEY))

  def unseal(m):
    m.pop(digest.KEY)
    m["ingest"].pop("vocab_digest")

  _edit_json(str(tr / "manifest.json"), unseal)
  with pytest.raises(digest.IntegrityError, match="has no digest"):
    csv_ingest.ingest(cfg, [test], str(tmp_path / "t2"), stats_from=str(tr), progress=False)
  assert seal.main([str(tr)]) == 0
  got = csv_ingest.ingest(cfg, [test], str(tmp_path / "t2"), stats_from=str(tr), progress=False)
  assert got["schema"] == want["schema"] and got["num_rows"] == want["num_rows"]
  np.testing.assert_array_equal(
    D.open_dataset(str(tmp_path / "t2")).read_all()["sparse"],
    D.open_dataset(str(tmp_path / "t1")).read_all()["sparse"],
  )
