"""Checkpoints that prove their bytes: per-leaf digests recorded at save and verified on restore.

Bytes changed inside the latest checkpoint's array data (same size, still decodable) restore as
another state unless verified; with the digests the checkpoint is moved aside, the previous one
is restored, and the run ends where an uninterrupted one does.
"""

import glob
import json
import logging
import os
import shutil
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny

from esmjax.checkpoints import checkpoint as ckpt_lib
from esmjax.common import digest as digest_lib
from esmjax.core import state as state_lib
from esmjax.training import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_config(data, **overrides):
  # embed_dim 64: a table shard (6 rows) is 1.5 KB, above the 1 KB up to which OCDBT inlines a chunk
  # into its checksummed b-tree nodes; larger chunks are stored raw, unchecked, as in real models.
  return tiny.run_config(data, **{"model.embed_dim": 64, **overrides})


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
  """A workdir with checkpoints at steps 5 and 10 (tables row-sharded over 8 devices)."""
  workdir = str(tmp_path_factory.mktemp("trained"))
  return workdir, trainer.train_and_evaluate(run_config(data), workdir)


def restore(data, workdir, verify=True):
  """(state, restored step) of the latest usable checkpoint in `workdir`."""
  config = run_config(data)
  run = trainer.Run(config, tiny.tiny_schema())
  ck = ckpt_lib.Checkpointer(workdir, config, run)
  if not verify:
    ck._verify = lambda *args: None
  try:
    return ck.restore_latest(), ck.restored_step
  finally:
    ck.close()


def flip_silently(data, workdir, step, fingerprint):
  """XORs 16 bytes inside the largest array data file of `step` (same size) at the first of a few
  places where the checkpoint still decodes, unverified, into a state other than `fingerprint`'s.

  The chunks are zstd frames without checksums: most changed bytes decode into other values. The
  first few places are tried because a change in a frame's header does fail to decode.
  """
  pattern = os.path.join(workdir, "checkpoints", str(step), "state", "**", "d", "*")
  files = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
  path = max(files, key=os.path.getsize)
  with open(path, "rb") as f:
    pristine = f.read()
  for where in (0.5, 0.3, 0.7, 0.4, 0.6):
    at = int(len(pristine) * where)
    changed = pristine[:at] + bytes(b ^ 0x5A for b in pristine[at : at + 16]) + pristine[at + 16 :]
    with open(path, "wb") as f:
      f.write(changed)
    state, restored = restore(data, workdir, verify=False)
    if restored == step and state_lib.state_fingerprint(state) != fingerprint:
      return
    # It did not decode: restore_latest moved the step aside; put it back for the next place.
    moved = glob.glob(os.path.join(workdir, "checkpoints.corrupt", f"{step}-*"))
    shutil.move(moved[0], os.path.join(workdir, "checkpoints", str(step)))
    shutil.rmtree(os.path.join(workdir, "checkpoints.corrupt"))
  raise AssertionError(f"no place in {path} decodes into another state")


def test_flipped_bytes_fall_back_to_the_previous_checkpoint_and_the_run_ends_the_same(
  data, trained, tmp_path, caplog
):
  source, straight = trained
  workdir, only5 = str(tmp_path / "run"), str(tmp_path / "only5")
  shutil.copytree(source, workdir)
  shutil.copytree(source, only5)
  shutil.rmtree(os.path.join(only5, "checkpoints", "10"))
  step5, _ = restore(data, only5)
  step10, _ = restore(data, source)
  # Unverified, step 10 comes back as a state nobody trained (flip_silently checks that).
  flip_silently(data, workdir, 10, state_lib.state_fingerprint(step10))

  with caplog.at_level(logging.WARNING):
    state, at = restore(data, workdir)
  assert at == 5
  assert state_lib.state_fingerprint(state) == state_lib.state_fingerprint(step5)
  assert (
    f"checkpoint step 10 in {workdir}/checkpoints is corrupt (CorruptCheckpointError: "
    in caplog.text
  )
  assert "state arrays differ from the digests recorded at save: state." in caplog.text
  assert "resuming from the previous checkpoint, step 5, instead" in caplog.text
  assert len(glob.glob(os.path.join(workdir, "checkpoints.corrupt", "10-*"))) == 1

  summary = trainer.train_and_evaluate(run_config(data), workdir)  # steps 6..10 again from step 5
  assert summary["resumed_from_step"] == 5 and summary["steps"] == 10
  assert summary["state_fingerprint"] == straight["state_fingerprint"]
  np.testing.assert_equal(summary["metrics"], straight["metrics"])


def test_meta_records_a_digest_of_every_leaf_that_the_saved_state_has(data, trained):
  workdir, _ = trained
  with open(os.path.join(workdir, "checkpoints", "10", "meta", "metadata")) as f:
    meta = json.load(f)
  state, _ = restore(data, workdir)
  assert meta["digest"] == digest_lib.METHOD
  assert meta["digests"] == digest_lib.digests(state)
  assert set(meta["digests"]) == set(meta["leaves"])


def test_a_checkpoint_without_digests_restores_with_a_warning(data, trained, tmp_path, caplog):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained[0], workdir)
  path = os.path.join(workdir, "checkpoints", "10", "meta", "metadata")
  with open(path) as f:
    meta = json.load(f)
  for key in ("digest", "digests", "config_digest", "data_digests", digest_lib.KEY):
    del meta[key]
  with open(path, "w") as f:
    json.dump(meta, f)
  with caplog.at_level(logging.WARNING):
    state, at = restore(data, workdir)
  assert at == 10 and "checkpoint step 10 in " in caplog.text
  assert "records no state digest (esmjax-digest-1): restored unverified" in caplog.text
  assert "records no digest of its meta, config and data position" in caplog.text
  intact, _ = restore(data, trained[0])
  assert state_lib.state_fingerprint(state) == state_lib.state_fingerprint(intact)


# -- several processes -----------------------------------------------------------------------------


def _two_processes(workdir, data, steps):
  """The CLI in 2 processes x 2 CPU devices (gloo on 127.0.0.1) -> their logs."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = tiny.cli_env(2)
  flags = [
    f"--config.data.train_dir={data / 'train'}",
    f"--config.data.eval_dir={data / 'eval'}",
    "--config.model.embed_dim=64",
    "--config.model.hidden=8,4",
    "--config.train.batch_size=64",
    "--config.train.eval_batch_size=128",
    f"--config.train.num_steps={steps}",
    "--config.data.prefetch=0",
    "--config.checkpoint.every_steps=5",
    "--config.distributed.num_processes=2",
    f"--config.distributed.coordinator=127.0.0.1:{port}",
  ]
  command = [
    sys.executable,
    "-m",
    "esmjax.main",
    "--config=configs/esmm.py",
    f"--workdir={workdir}",
    *flags,
  ]
  procs = [
    subprocess.Popen(
      command + [f"--config.distributed.process_id={i}"],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  logs = [p.communicate(timeout=600)[0] for p in procs]
  for p, log in zip(procs, logs, strict=True):
    assert p.returncode == 0, log[-3000:]
  return logs


def test_two_processes_record_and_verify_the_digests_one_process_computes(tmp_path):
  """Each process holds half of the row-sharded tables: the recorded digests are those of the whole
  arrays (one process on 4 devices computes the same), and a 2-process resume verifies them."""
  tiny.tiny_dataset(str(tmp_path / "train"), n=1024, seed=0, block_rows=32)
  tiny.tiny_dataset(str(tmp_path / "eval"), n=256, seed=1, block_rows=64)
  workdir = str(tmp_path / "wd")
  _two_processes(workdir, tmp_path, 10)
  for log in _two_processes(workdir, tmp_path, 15):
    assert "restored checkpoint step 10 from" in log
    assert "corrupt" not in log and "unverified" not in log
  config = run_config(tmp_path, **{"mesh.num_devices": 4, "train.num_steps": 15})
  run = trainer.Run(config, tiny.tiny_schema())
  ck = ckpt_lib.Checkpointer(workdir, config, run)
  try:
    _, meta = ck._read_small_items(10)
    assert meta["num_processes"] == 2
    assert len(meta["data_digests"]) == 2  # each process's position, gathered by process 0
    state = ck._restore_arrays(10, meta, None)  # verifies: raises CorruptCheckpointError otherwise
  finally:
    ck.close()
  assert digest_lib.digests(state) == meta["digests"]


# -- the digest itself -----------------------------------------------------------------------------


def _tree():
  rng = np.random.default_rng(0)
  return {
    "f32": jnp.asarray(rng.normal(size=(48, 4)), jnp.float32),
    "bf16": jnp.asarray(rng.normal(size=(6, 3)), jnp.bfloat16),
    "i32": jnp.asarray(rng.integers(-5, 5, (7,)), jnp.int32),
    "u8": jnp.asarray(rng.integers(0, 255, (2, 3)), jnp.uint8),
    "flag": jnp.asarray([True, False, True]),
    "scalar": jnp.float32(0.25),
    "key": jax.random.key(3),
    "raw_key": jax.random.PRNGKey(3),
  }


def test_digest_depends_on_values_only_not_on_sharding():
  tree = _tree()
  base = digest_lib.digests(tree)
  assert sorted(base) == sorted(jax.tree_util.keystr((jax.tree_util.DictKey(k),)) for k in tree)
  assert all(len(v) == 16 for v in base.values())
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:8]), ("d",))
  by_rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
  rows = jax.device_put(tree["f32"], by_rows)
  assert len(rows.sharding.device_set) == 8
  assert digest_lib.digests({**tree, "f32": rows}) == base


@pytest.mark.parametrize(
  "leaf, change",
  [
    ("f32", lambda x: x.at[17, 2].set(np.nextafter(x[17, 2], np.float32(1e9)))),  # one ulp
    ("f32", lambda x: x.at[jnp.asarray([3, 4])].set(x[jnp.asarray([4, 3])])),  # two rows swapped
    ("f32", lambda x: x.reshape(4, 48)),  # the same bytes in another shape
    ("f32", lambda x: -x),
    ("bf16", lambda x: x.at[5, 2].multiply(2)),
    ("i32", lambda x: x.at[0].add(1)),
    ("u8", lambda x: x.at[1, 1].set(x[1, 1] ^ 1)),
    ("flag", lambda x: ~x),
    ("scalar", lambda x: x + 1),
    ("key", lambda x: jax.random.key(4)),
    ("raw_key", lambda x: x.at[1].add(1)),
  ],
)
def test_digest_changes_with_any_change_of_a_leaf(leaf, change):
  tree = _tree()
  before = digest_lib.digests(tree)
  after = digest_lib.digests({**tree, leaf: change(tree[leaf])})
  key = jax.tree_util.keystr((jax.tree_util.DictKey(leaf),))
  assert [k for k in before if before[k] != after[k]] == [key]
