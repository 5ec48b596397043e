"""Confusing cases a user meets, each ending in one line (and its exit code), never a traceback:
undecodable inputs, bad synthetic keys, a model's missing label, bad export and prediction
targets, full disks, Ctrl-C while starting, flags given twice, a failing config argument; and the
leftovers of a killed world generation removed at the next start."""

import errno
import gzip
import os
import signal
import socket
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import tiny
from test_checkpoint import jit_cache  # noqa: F401  (autouse: one compilation per program)

from esmjax import exits
from esmjax.checkpoints import orbax_errors
from esmjax.common.schema import DatasetError
from esmjax.config import defaults as config_lib
from esmjax.core import outputs
from esmjax.data.ingest.csv import ingest as csv_ingest
from esmjax.data.synthetic import cache as synthetic
from esmjax.evaluation import metrics_io
from esmjax.serving import export as export_lib
from esmjax.training import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(
  REPO,
  "tests/data/public-samples/torch-rechub/examples/ranking/data/ali-ccp/ali_ccp_train_sample.csv",
)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
  """A finished tiny run (checkpoints at steps 5 and 10) -> workdir."""
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  trainer.train_and_evaluate(tiny.run_config(data), workdir)
  return workdir


run_mode = tiny.run_mode  # esmjax.main.main in a mode, in-process


def _cli(args, timeout=120):
  return tiny.run_cli(args, timeout=timeout)


def _no_temporaries(directory) -> None:
  left = [n for n in os.listdir(directory) if ".tmp" in n]
  assert left == [], left


# -- inputs pyarrow cannot decode --------------------------------------------------------------


def _ingest_config():
  import importlib.util

  spec = importlib.util.spec_from_file_location(
    "c", os.path.join(REPO, "configs/data/rechub_aliccp.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_inputs_that_cannot_be_decoded_are_named_in_one_line(tmp_path):
  import pyarrow.csv as pcsv
  import pyarrow.parquet as pq

  with open(SAMPLE, "rb") as f:
    text = f.read()
  lines = text.split(b"\n")
  lines[5] = lines[5][:2] + b"\xff" + lines[5][2:]  # one byte that is not UTF-8
  latin = tmp_path / "latin.csv"
  latin.write_bytes(b"\n".join(lines))
  packed = gzip.compress(text)
  cut_gz = tmp_path / "cut.csv.gz"
  cut_gz.write_bytes(packed[: len(packed) // 2])
  pq.write_table(pcsv.read_csv(SAMPLE), str(tmp_path / "whole.parquet"))
  whole = (tmp_path / "whole.parquet").read_bytes()
  cut_pq = tmp_path / "cut.parquet"
  cut_pq.write_bytes(whole[: len(whole) // 2])
  for path, message in (
    (latin, "is not UTF-8 text; re-encode it (e.g. `iconv -f latin1 -t utf-8`) (In CSV column"),
    (cut_gz, "is a gzip stream that cannot be decompressed (cut short or corrupt); copy it again"),
    (cut_pq, "is not a readable Parquet file (cut short or corrupt); write or copy it again ("),
  ):
    with pytest.raises(csv_ingest.IngestError) as e:
      csv_ingest.ingest(_ingest_config(), [str(path)], str(tmp_path / f"o-{path.name}"))
    assert str(e.value).startswith(f"{path} {message}"), str(e.value)
    assert "\n" not in str(e.value)


# -- config and data that cannot train ---------------------------------------------------------


@pytest.mark.parametrize(
  "key, value, message",
  [
    ("num_users", -5, "data.synthetic.num_users=-5 is out of range: must be >= 1"),
    ("ctr", 1.5, "data.synthetic.ctr=1.5 is out of range: must be in (0, 1)"),
    ("num_train", 0, "data.synthetic.num_train=0 is out of range: must be >= 1 to train"),
  ],
)
def test_synthetic_values_out_of_range_are_config_errors(key, value, message):
  cfg = tiny.tiny_config()
  cfg.data.synthetic[key] = value
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(cfg)
  assert str(e.value).startswith(message)
  cfg.data.train_dir = cfg.data.eval_dir = "/nonexistent"  # not read: no synthetic data
  with pytest.raises(config_lib.ConfigError, match="directory does not exist"):
    config_lib.validate(cfg)


def test_esm2_on_data_without_daction_is_a_dataset_error_before_any_write(tmp_path):
  schema = tiny.tiny_schema(labels=("click", "buy"), truth=())
  from esmjax.data.format import dataset as D

  for split, seed in (("train", 0), ("eval", 1)):
    D.write_dataset(
      str(tmp_path / split), schema, [tiny.random_block(schema, 600, seed=seed)], block_rows=256
    )
  cfg = tiny.run_config(tmp_path, **{"model.name": "esm2"})
  with pytest.raises(DatasetError) as e:
    trainer.train_and_evaluate(cfg, str(tmp_path / "wd"))
  assert str(e.value) == (
    "model.name='esm2' needs a DAction label: a 'daction' column, or 'cart' and/or 'wish' "
    "(DAction = cart ∨ wish), but the dataset has only ['click', 'buy']"
  )
  assert os.listdir(tmp_path / "wd") == ["run-p0.lock"]


# -- export and prediction targets ---------------------------------------------------------------


def test_export_batch_below_one_is_refused_before_anything_is_read(
  data, trained, tmp_path, monkeypatch, capsys
):
  with pytest.raises(export_lib.ExportError, match=r"^export batch size -4 must be >= 1"):
    export_lib.export("/nonexistent", str(tmp_path / "m.jaxexport"), batch_size=-4)
  code, out, err = run_mode(
    "export", tiny.run_config(data), trained, monkeypatch, capsys, _EXPORT_BATCH=-4
  )
  assert code == 2 and err.startswith("esmjax: error: export batch size -4 must be >= 1")
  assert err.count("\n") == 1


def test_predict_output_that_is_a_directory_is_one_line_and_leaves_nothing(
  data, trained, tmp_path, monkeypatch, capsys
):
  target = tmp_path / "out"
  target.mkdir()
  flags = {"_PREDICT_INPUT": str(data / "eval"), "_PREDICT_OUTPUT": str(target)}
  code, out, err = run_mode("predict", tiny.run_config(data), trained, monkeypatch, capsys, **flags)
  assert (
    code == 2
    and err == f"esmjax: error: --predict_output {target} is a directory; give a file path\n"
  )
  assert os.listdir(target) == [] and os.listdir(tmp_path) == ["out"]


def _failing_open(code):
  """An `open` that fails writes with `code` (a full disk, a read-only file system) after
  creating nothing, as the kernel does for ENOSPC on the first block."""
  real = open

  def fake(path, mode="r", *args, **kwargs):
    if any(c in mode for c in "wa"):
      f = real(path, mode, *args, **kwargs)

      class Failing:
        def __enter__(self):
          return self

        def __exit__(self, *exc):
          f.close()

        def write(self, data):
          raise OSError(code, os.strerror(code))

        def __getattr__(self, name):
          return getattr(f, name)

      return Failing()
    return real(path, mode, *args, **kwargs)

  return fake


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_disk_while_writing_predictions_or_an_export_is_one_line(
  data, trained, tmp_path, monkeypatch, capsys, code
):
  monkeypatch.setattr(outputs, "open", _failing_open(code), raising=False)
  name = errno.errorcode[code]
  exit_code = exits.CANNOT_GO_ON if code == errno.ENOSPC else exits.USER_ERROR
  preds = tmp_path / "p.csv"
  flags = {"_PREDICT_INPUT": str(data / "eval"), "_PREDICT_OUTPUT": str(preds)}
  got, _, err = run_mode("predict", tiny.run_config(data), trained, monkeypatch, capsys, **flags)
  assert got == exit_code and err.count("\n") == 1, err
  assert err.startswith(f"esmjax: error: cannot write predictions {preds}: ") and f"({name})" in err
  model = tmp_path / "m.jaxexport"
  flags = {"_EXPORT_PATH": str(model)}
  got, _, err = run_mode("export", tiny.run_config(data), trained, monkeypatch, capsys, **flags)
  assert got == exit_code and err.count("\n") == 1, err
  assert err.startswith(f"esmjax: error: cannot write export {model}: ") and f"({name})" in err
  assert os.listdir(tmp_path) == []  # no file, no temporary


def test_a_full_disk_while_writing_metrics_stops_the_run_in_one_line(
  data, tmp_path, monkeypatch, capsys
):
  monkeypatch.setattr(metrics_io, "open", _failing_open(errno.ENOSPC), raising=False)
  workdir = str(tmp_path / "wd")
  code, _, err = tiny.run_main(tiny.run_config(data), workdir, monkeypatch, capsys)
  assert code == 3 and err.count("\n") == 1, err
  assert err == (
    f"esmjax: error: cannot write metrics {workdir}/metrics.jsonl: No space left on device "
    "(ENOSPC); free space or write elsewhere, then rerun\n"
  )
  assert not os.path.exists(os.path.join(workdir, "summary.json"))


def test_any_machine_os_error_in_a_command_is_one_line_naming_the_file(capsys):
  from esmjax import cli

  with pytest.raises(SystemExit) as e:
    with cli.exit_codes():
      raise OSError(errno.ENOSPC, "No space left on device", "/w/tensorboard/events")
  assert e.value.code == 3
  assert capsys.readouterr().err == (
    "esmjax: error: /w/tensorboard/events: No space left on device (ENOSPC)\n"
  )


# -- the command line: flags, config arguments, Ctrl-C ---------------------------------------------


def test_an_override_given_twice_quotes_the_value_that_failed(tmp_path):
  for args, bad in (
    (["--config.train.batch_size=64", "--config.train.batch_size=abc"], "abc"),
    (["--config.train.batch_size=abc", "--config.train.batch_size=64"], "abc"),
  ):
    r = _cli(["--config=configs/esmm.py", f"--workdir={tmp_path}", *args])
    assert r.returncode == 2 and r.stderr == (
      f"esmjax: error: --config.train.batch_size='{bad}' is not a valid value: config key "
      "train.batch_size takes an int\n"
    )


def test_a_config_argument_that_fails_is_its_error_line_not_a_flattened_traceback(tmp_path):
  r = _cli(["--config=configs/esmm.py:nosuchworld", f"--workdir={tmp_path}"])
  assert r.returncode == 2 and r.stderr == (
    "esmjax: error: --config=configs/esmm.py:nosuchworld: ValueError: synthetic world "
    "'nosuchworld' is not defined; allowed: ['default', 'paper']\n"
  )


def test_ctrl_c_while_starting_is_one_line_and_exit_130(tmp_path):
  # A config file that takes its time (as an import of JAX does): Ctrl-C arrives while it runs.
  ready = tmp_path / "ready"
  cfg = tmp_path / "slow.py"
  cfg.write_text(
    "import time, pathlib\n"
    "def get_config():\n"
    f"  pathlib.Path({str(ready)!r}).touch()\n"
    "  time.sleep(60)\n"
  )
  env = tiny.cli_env()
  p = subprocess.Popen(
    [sys.executable, "-m", "esmjax.main", f"--config={cfg}", f"--workdir={tmp_path / 'wd'}"],
    cwd=REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal has it
  )
  deadline = time.time() + 60
  while not ready.exists() and time.time() < deadline and p.poll() is None:
    time.sleep(0.05)
  p.send_signal(signal.SIGINT)
  out, err = p.communicate(timeout=60)
  assert p.returncode == exits.INTERRUPTED and out == ""
  assert err == exits.INTERRUPTED_LINE + "\n"


# -- leftovers ------------------------------------------------------------------------------------


def test_a_killed_world_generations_temporary_is_removed_at_the_next_start(tmp_path):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()  # its pid no longer runs
  host = socket.gethostname()
  names = {
    "killed": f"synthetic-0123abcd.tmp-{dead.pid}-{host}",
    "killed_old_name": f"synthetic-0123abcd.tmp-{dead.pid}",
    "running": f"synthetic-0123abcd.tmp-{os.getpid()}-{host}",
    "other_host": f"synthetic-0123abcd.tmp-{dead.pid}-not-{host}",
    "finished": "synthetic-0123abcd",
  }
  for name in names.values():
    os.makedirs(tmp_path / name / "train")
    (tmp_path / name / "train" / "shard").write_bytes(b"x" * 1000)
  removed = synthetic.remove_stale_temporaries(str(tmp_path))
  assert sorted(removed) == sorted(str(tmp_path / names[k]) for k in ("killed", "killed_old_name"))
  assert sorted(os.listdir(tmp_path)) == sorted(
    names[k] for k in ("running", "other_host", "finished")
  )


def test_aborted_reads_of_an_unreadable_checkpoint_are_counted_not_printed(capsys):
  async def read_chunk():
    return 0

  orbax_errors.contain_aborted_reads()
  before = orbax_errors.dropped_reads()
  coro = read_chunk()
  report = types.SimpleNamespace(
    exc_type=RuntimeError,
    exc_value=RuntimeError("aborted read"),
    exc_traceback=None,
    err_msg="Exception ignored in",
    object=coro,
  )
  for _ in range(1500):
    sys.unraisablehook(report)
  coro.close()
  assert orbax_errors.dropped_reads() == before + 1500
  assert capsys.readouterr().err == ""
  # Anything else is passed on to the previous hook (pytest's, here), not counted.
  other = types.SimpleNamespace(**{**vars(report), "object": np.zeros(1)})
  sys.unraisablehook(other)
  assert orbax_errors.dropped_reads() == before + 1500
