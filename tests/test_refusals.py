"""A run that is refused touches nothing: every check that can refuse it (the workdir's lock, the
checkpoint's config and layout, the workdir model's inputs, the eval data's inputs) runs before its
first write, so the workdir is byte-identical afterwards (every file hashed before and after)."""

import dataclasses
import hashlib
import os

import pytest
import tiny

import esmjax
from esmjax.checkpoints import checkpoint as ckpt_lib
from esmjax.core import workdir as workdir_lib
from esmjax.data.format import dataset as D


def tree_digest(root) -> dict[str, str]:
  """{relative path: sha256} of every file under `root` (directories by their listing)."""
  out = {}
  for dirpath, dirnames, filenames in os.walk(root):
    rel = os.path.relpath(dirpath, root)
    out[rel + "/"] = ",".join(sorted(dirnames + filenames))
    for name in filenames:
      with open(os.path.join(dirpath, name), "rb") as f:
        out[os.path.join(rel, name)] = hashlib.sha256(f.read()).hexdigest()
  return out


def shifted_dataset(directory: str, n: int, seed: int, start_id: int = 0):
  """The tiny dataset with another mean for the dense field 'price' (same vocabularies)."""
  s = tiny.tiny_schema()
  price = dataclasses.replace(s.dense[0], mean=s.dense[0].mean + 0.25)
  s = dataclasses.replace(s, dense=(price,) + s.dense[1:])
  D.write_dataset(directory, s, [tiny.random_block(s, n, seed, start_id)], block_rows=256)
  return directory


def config(data, **overrides):
  base = {
    "data.train_dir": str(data / "train"),
    "data.eval_dir": str(data / "eval"),
    "train.num_steps": 2,
  }
  return tiny.tiny_config("esmm", **{**base, **overrides})


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
  """A workdir with a finished 2-step run (checkpoints, schema.json, metrics, summary)."""
  workdir = str(tmp_path_factory.mktemp("trained"))
  esmjax.train(config(data), workdir)
  assert os.path.exists(os.path.join(workdir, workdir_lib.SCHEMA_FILE))
  return workdir


@pytest.fixture(scope="module")
def shifted(tmp_path_factory):
  root = tmp_path_factory.mktemp("shifted")
  shifted_dataset(str(root / "train"), 1500, seed=0)
  shifted_dataset(str(root / "eval"), 300, seed=1, start_id=10**6)
  return root


def refused(trained, cfg, error, match):
  before = tree_digest(trained)
  with pytest.raises(error, match=match):
    esmjax.train(cfg, trained)
  assert tree_digest(trained) == before


def test_incompatible_config_leaves_the_workdir_byte_identical(data, trained):
  refused(
    trained,
    config(data, **{"model.embed_dim": 8, "train.num_steps": 4}),
    ckpt_lib.IncompatibleCheckpointError,
    r"holds checkpoint step 2 of an incompatible config: model\.embed_dim=4 \(checkpoint\) vs 8",
  )


def test_data_with_other_inputs_than_the_workdirs_model_is_refused_untouched(
  data, trained, shifted
):
  # Same vocabularies (the checkpoint fits), other dense statistics: resuming would replace the
  # schema.json that predict / load / export normalise the model's inputs with.
  refused(
    trained,
    config(shifted, **{"train.num_steps": 4}),
    workdir_lib.WorkdirError,
    r"holds a model trained on data with other inputs than this run's training data "
    r"\(dense field 'price': mean 1\.0 vs 1\.25;",
  )


def test_eval_data_with_other_inputs_is_refused_untouched(data, trained, shifted):
  cfg = config(data, **{"data.eval_dir": str(shifted / "eval"), "train.num_steps": 4})
  refused(trained, cfg, D.DatasetError, r"its inputs differ from the trained model's")


def test_workdir_owned_by_another_run_is_refused_untouched(data, trained):
  with workdir_lib.claim(trained, announce=False):  # another owner (here: this process)
    refused(trained, config(data, **{"train.num_steps": 4}), workdir_lib.WorkdirError, "in use")


def test_accepted_run_names_itself_after_the_checks(data, trained, tmp_path):
  # The same data and config resume (no refusal): the owner line then names this process.
  workdir = str(tmp_path / "w")
  esmjax.train(config(data), workdir)
  owner = open(os.path.join(workdir, "run-p0.lock")).read()
  assert owner.startswith(f"pid {os.getpid()} on host ")
