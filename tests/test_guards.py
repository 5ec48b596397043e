"""Guards: the NaN guard, config errors before compilation, incompatible or corrupt checkpoints,
and the best checkpoint kept by an eval metric."""

import dataclasses
import functools
import glob
import json
import logging
import os
import shutil

import jax
import numpy as np
import pytest
import tiny
from test_checkpoint import jit_cache  # noqa: F401  (autouse: one compilation per program)

from esmjax.checkpoints import checkpoint as ckpt_lib
from esmjax.config import defaults as config_lib
from esmjax.core import feed as loop_data
from esmjax.core import guard as guard_lib
from esmjax.data.format import dataset as D
from esmjax.evaluation import metrics_io
from esmjax.training import trainer


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
  """A workdir with checkpoints at steps 5 and 10 -> (workdir, summary)."""
  workdir = str(tmp_path_factory.mktemp("trained"))
  return workdir, trainer.train_and_evaluate(tiny.run_config(data), workdir)


@pytest.fixture(scope="module")
def unfinished(trained, tmp_path_factory):
  """`trained`'s workdir without its summary.json: a run stopped after its step-10 checkpoint (a
  finished one of another config is refused before its checkpoints are read: test_workdir.py)."""
  workdir = str(tmp_path_factory.mktemp("unfinished") / "run")
  shutil.copytree(trained[0], workdir)
  os.remove(os.path.join(workdir, "summary.json"))
  return workdir


def saved_steps(workdir):
  return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())


# -- config errors: named keys, before anything is read or compiled --------------------------------


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"train.batch_size": 60}, "train.batch_size=60 is not divisible by the 8 devices"),
    (
      {"embedding.optimizer": "adamax"},
      "embedding.optimizer='adamax' is not a sparse optimizer; allowed",
    ),
    ({"optimizer.name": "rmsprop"}, "optimizer.name='rmsprop' is not allowed; allowed"),
    ({"model.name": "esmmm"}, "model.name='esmmm' is not a model; allowed"),
    ({"model.hidden": ()}, "model.hidden=(): tower sizes are missing"),
    (
      {"data.train_dir": "/nonexistent/train"},
      "data.train_dir='/nonexistent/train': directory does not exist",
    ),
    ({"data.eval_dir": ""}, "data.train_dir is set but data.eval_dir is empty"),
    (
      {"checkpoint.best_metric": "ctr/acu"},
      "checkpoint.best_metric='ctr/acu' is not an eval metric",
    ),
    ({"checkpoint.best_mode": "largest"}, "checkpoint.best_mode='largest' is not allowed"),
    ({"train.steps_per_dispatch": 0}, "train.steps_per_dispatch=0 is out of range"),
  ],
)
def test_config_errors_name_the_key(data, overrides, message):
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(tiny.run_config(data, **overrides))
  assert message in str(e.value)


@pytest.mark.parametrize(
  "overrides, message",
  [
    (
      {"optimizer.learning_rate": -1e-4},
      "optimizer.learning_rate=-0.0001 is out of range; allowed: a finite number in (0, ∞)",
    ),
    ({"optimizer.learning_rate": float("nan")}, "optimizer.learning_rate=nan is out of range"),
    (
      {"optimizer.weight_decay": -0.1},
      "optimizer.weight_decay=-0.1 is out of range; allowed: a finite number in [0, ∞)",
    ),
    (
      {"optimizer.grad_clip": -1.0},
      "optimizer.grad_clip=-1.0 is out of range; allowed: a finite number in [0, ∞)",
    ),
    (
      {"train.num_steps": -1, "train.num_epochs": 0.0},
      "train.num_epochs=0.0 is out of range; allowed: a finite number in (0, ∞)",
    ),
    (
      {"train.num_epochs": -2.0},
      "train.num_epochs=-2.0 is out of range; allowed: a finite number in [0, ∞)",
    ),
    (
      {"train.num_steps": 0},
      "train.num_steps=0 is out of range; allowed: an integer in [1, ∞), or -1 "
      "(from train.num_epochs)",
    ),
    ({"train.batch_size": 0}, "train.batch_size=0 is out of range; allowed: an integer in [1, ∞)"),
    ({"train.eval_batch_size": -8}, "train.eval_batch_size=-8 is out of range"),
    ({"train.log_every": 0}, "train.log_every=0 is out of range; allowed: an integer in [1, ∞)"),
    (
      {"train.eval_every": 0},
      "train.eval_every=0 is out of range; allowed: an integer in [1, ∞), or -1 (at the end only)",
    ),
    (
      {"train.max_eval_rows": 0},
      "train.max_eval_rows=0 is out of range; allowed: an integer in [1, ∞), or -1 (all rows)",
    ),
    ({"train.seed": -1}, "train.seed=-1 is out of range; allowed: an integer in [0, 4294967295]"),
    ({"checkpoint.every_steps": 0}, "checkpoint.every_steps=0 is out of range"),
    ({"checkpoint.keep": 0}, "checkpoint.keep=0 is out of range; allowed: an integer in [1, ∞)"),
    (
      {"mesh.num_devices": 0},
      "mesh.num_devices=0 is out of range; allowed: an integer in [1, ∞), or -1 (all devices)",
    ),
    (
      {"distributed.process_id": 1},
      "distributed.process_id=1 is out of range; allowed: an integer in [0, 0]",
    ),
    (
      {"distributed.num_processes": 2, "distributed.process_id": 1},
      "distributed.num_processes=2 needs distributed.coordinator (host:port)",
    ),
    (
      {"distributed.coordinator": "localhost"},
      "distributed.coordinator='localhost' is not HOST:PORT",
    ),
  ],
)
def test_numeric_keys_out_of_range_name_key_value_and_range(data, overrides, message):
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(tiny.run_config(data, **overrides))
  assert message in str(e.value)


def test_data_dir_without_manifest_is_named(data, tmp_path):
  with pytest.raises(config_lib.ConfigError, match="data.eval_dir=.*no manifest.json"):
    config_lib.validate(tiny.run_config(data, **{"data.eval_dir": str(tmp_path)}))


@pytest.mark.parametrize(
  "overrides, message",
  [
    (
      {"mesh.num_devices": -1, "train.batch_size": 60},
      "train.batch_size=60 is not divisible by the 8 devices",
    ),
    (
      {"mesh.num_devices": 16, "train.batch_size": 64},
      "mesh.num_devices=16 but only 8 device(s) are visible",
    ),
  ],
)
def test_device_errors_come_before_data_and_compilation(
  data, tmp_path, monkeypatch, overrides, message
):
  def built(*args, **kw):
    raise AssertionError("the run got past the config checks")

  monkeypatch.setattr(loop_data, "resolve_datasets", built)
  monkeypatch.setattr(trainer, "Run", built)
  with pytest.raises(config_lib.ConfigError) as e:
    trainer.train_and_evaluate(tiny.run_config(data, **overrides), str(tmp_path))
  assert message in str(e.value)


def test_cli_config_error_is_one_line_and_exit_2(data, tmp_path, monkeypatch, capsys):
  code, _, err = tiny.run_main(
    tiny.run_config(data, **{"train.batch_size": 60}), str(tmp_path), monkeypatch, capsys
  )
  assert code == 2
  assert (
    err.startswith("esmjax: error: train.batch_size=60 is not divisible") and err.count("\n") == 1
  )


# -- the NaN guard ---------------------------------------------------------------------------------


def test_nan_loss_stops_the_run_naming_step_and_tasks_without_saving_it(
  data, tmp_path, monkeypatch, capsys
):
  # NaN input at step 7; no log step before 20, so the check before the save at step 10 catches it.
  cfg = tiny.run_config(data, **{"train.num_steps": 20, "train.log_every": 100})
  workdir = str(tmp_path)
  monkeypatch.setattr(
    trainer,
    "train_and_evaluate",
    functools.partial(trainer.train_and_evaluate, hooks=tiny.nan_at_step(7)),
  )
  code, _, err = tiny.run_main(cfg, workdir, monkeypatch, capsys)
  assert code == 3
  assert err.startswith(
    "esmjax: error: non-finite loss, loss/ctcvr, loss/ctr at step 7 (found at step 10); "
    "stopped without checkpointing this state (the last checkpoint is step 5 in "
  )
  assert err.count("\n") == 1
  assert saved_steps(workdir) == [5]  # step 10's state is NaN: never written


def test_nan_weights_with_finite_losses_are_caught_before_a_save(data):
  # E.g. an update that overflowed: the step's loss was finite, the state it produced is not.
  run = trainer.Run(tiny.run_config(data), tiny.tiny_schema())
  state = run.init_fn()
  params = jax.tree_util.tree_map(lambda x: x, state.params)
  params["tower_cvr"]["Dense_0"]["bias"] = params["tower_cvr"]["Dense_0"]["bias"].at[0].set(np.inf)
  with pytest.raises(
    guard_lib.NonFiniteError,
    match=r"non-finite values in the train state at step 3 "
    r"\(state.params\['tower_cvr'\]\['Dense_0'\]\['bias'\]\), although every loss was finite; "
    "stopped without checkpointing this state \\(no checkpoint was written\\)",
  ):
    guard_lib.NanGuard(run).check(3, state.replace(params=params))
  guard_lib.NanGuard(run).check(3, state)  # a finite state passes


# -- checkpoints that cannot be used ---------------------------------------------------------------


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"model.name": "esm2"}, "model.name='esmm' (checkpoint) vs 'esm2' (this config)"),
    ({"model.hidden": (16, 4)}, "model.hidden=(8, 4) (checkpoint) vs (16, 4) (this config)"),
    ({"model.embed_dim": 8}, "model.embed_dim=4 (checkpoint) vs 8 (this config)"),
    ({"optimizer.grad_clip": 1.0}, "of another state layout: state.opt_state"),
  ],
)
def test_workdir_of_an_incompatible_config_is_refused(data, unfinished, overrides, message):
  workdir = unfinished
  with pytest.raises(ckpt_lib.IncompatibleCheckpointError) as e:
    trainer.train_and_evaluate(
      tiny.run_config(data, **{"train.num_steps": 15, **overrides}), workdir
    )
  assert message in str(e.value) and f"{workdir}/checkpoints holds checkpoint step 10" in str(
    e.value
  )
  assert isinstance(e.value, config_lib.ConfigError)  # so the CLI prints one line and exits 2
  assert saved_steps(workdir) == [5, 10]


def test_workdir_of_other_table_shapes_is_refused(unfinished, tmp_path):
  base = tiny.tiny_schema()
  schema = dataclasses.replace(base, sparse=(D.SparseField("user", 20),) + base.sparse[1:])
  for split in ("train", "eval"):
    D.write_dataset(str(tmp_path / split), schema, [tiny.random_block(schema, 500)], block_rows=256)
  with pytest.raises(
    ckpt_lib.IncompatibleCheckpointError,
    match="with 40 embedding rows, but this dataset's schema needs 48",
  ):
    trainer.train_and_evaluate(tiny.run_config(tmp_path, **{"train.num_steps": 15}), unfinished)


def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(
  data, trained, tmp_path, caplog
):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained[0], workdir)
  for path in glob.glob(os.path.join(workdir, "checkpoints", "10", "state", "d", "*")):
    with open(path, "r+b") as f:  # the array data of step 10, cut in half
      f.truncate(os.path.getsize(path) // 2)
  # A save that was killed mid-write leaves a temporary directory: never a candidate.
  os.makedirs(
    os.path.join(workdir, "checkpoints", "15.orbax-checkpoint-tmp-1764300000000000", "state")
  )
  with caplog.at_level(logging.WARNING):
    summary = trainer.train_and_evaluate(tiny.run_config(data), workdir)
  assert summary["resumed_from_step"] == 5
  assert "checkpoint step 10 in " in caplog.text and "is unreadable" in caplog.text
  assert "resuming from the previous checkpoint, step 5, instead" in caplog.text
  assert len(glob.glob(os.path.join(workdir, "checkpoints.corrupt", "10-*"))) == 1
  assert not glob.glob(
    os.path.join(workdir, "checkpoints", "*tmp*")
  )  # orbax cleans partial saves up
  # Steps 6..10 redone from step 5: the same model as the run that wrote the broken checkpoint.
  assert summary["state_fingerprint"] == trained[1]["state_fingerprint"]
  assert saved_steps(workdir) == [5, 10]
  # The fallback is named in the run's summary.
  (skipped,) = summary["skipped_checkpoints"]
  assert skipped.startswith("step 10 (") and summary["resumed_from_step"] == 5


def _truncate(workdir, step):
  for path in glob.glob(os.path.join(workdir, "checkpoints", str(step), "state", "d", "*")):
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)


run_mode = tiny.run_mode  # esmjax.main.main in a mode, in-process


def test_serving_and_evaluation_never_fall_back_to_an_older_checkpoint(
  data, trained, tmp_path, monkeypatch, capsys
):
  import esmjax
  from esmjax.serving import export as export_lib
  from esmjax.serving import predict

  workdir = str(tmp_path / "run")
  shutil.copytree(trained[0], workdir)
  _truncate(workdir, 10)
  before = sorted(glob.glob(os.path.join(workdir, "**"), recursive=True))
  message = (
    rf"checkpoint step 10 in {workdir}/checkpoints \(the latest\) is unreadable \(.*\); no older "
    r"checkpoint is used in its place: rerun training in this workdir to resume from the last "
    r"readable one; or name an older one explicitly \(--checkpoint_step=5, "
    r"esmjax.load\(workdir, step=5\)\)"
  )
  config = tiny.run_config(data)
  preds = str(tmp_path / "p.csv")
  for call in (
    lambda: esmjax.load(workdir),
    lambda: predict.evaluate_workdir(config, workdir),
    lambda: predict.predict_to_csv(config, workdir, str(data / "eval"), preds),
    lambda: export_lib.export(workdir, str(tmp_path / "m.jaxexport")),
  ):
    with pytest.raises(ckpt_lib.CheckpointError, match=message):
      call()
  # Nothing was moved aside or written: the workdir is as it was.
  assert sorted(glob.glob(os.path.join(workdir, "**"), recursive=True)) == before
  assert not os.path.exists(preds) and not os.path.exists(str(tmp_path / "m.jaxexport"))
  # On the command line: one line, exit 3.
  code, out, err = run_mode("evaluate", config, workdir, monkeypatch, capsys, _CHECKPOINT_STEP=-1)
  assert code == 3 and err.startswith("esmjax: error: checkpoint step 10 in ")
  assert err.count("\n") == 1 and out == ""
  # An older step asked for by name is served, and every output names it.
  model = esmjax.load(workdir, step=5)
  assert model.step == 5
  meta = predict.predict_to_csv(config, workdir, str(data / "eval"), preds, step=5)
  with open(preds + ".json") as f:
    assert json.load(f) == meta and meta["checkpoint_step"] == 5
  sig = export_lib.export(workdir, str(tmp_path / "m.jaxexport"), step=5, platforms=["cpu"])
  assert sig["step"] == 5
  code, out, err = run_mode("evaluate", config, workdir, monkeypatch, capsys, _CHECKPOINT_STEP=5)
  assert code == 0 and out.startswith(f"checkpoint step 5 of {workdir}\n"), err
  with pytest.raises(
    ckpt_lib.StepNotFoundError,
    match=r"checkpoint step 7 is not in .*/checkpoints; its steps are 5, 10$",
  ):
    esmjax.load(workdir, step=7)


# -- the best checkpoint ---------------------------------------------------------------------------


def test_best_checkpoint_by_eval_metric_is_kept_besides_the_last(data, tmp_path):
  workdir = str(tmp_path)
  cfg = tiny.run_config(
    data,
    **{
      "train.num_steps": 20,
      "train.eval_every": 4,
      "checkpoint.every_steps": 100,
      "checkpoint.keep": 1,
      "checkpoint.best_metric": "ctr/auc",
      "checkpoint.best_mode": "max",
    },
  )
  summary = trainer.train_and_evaluate(cfg, workdir)
  evals = {
    r["step"]: r["ctr/auc"] for r in metrics_io.read_metrics(workdir) if r["split"] == "eval"
  }
  assert sorted(evals) == [4, 8, 12, 16, 20]
  best = max(evals, key=evals.get)
  assert summary["best_checkpoint_step"] == best
  assert saved_steps(workdir) == sorted({best, 20})  # keep=1: the last, plus the best
  assert np.isfinite(evals[best])
