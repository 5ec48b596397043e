"""A workdir is owned by one run at a time, and a run that cannot use or save to it says so in one
line with the documented exit code (2: the user's workdir; 3: a checkpoint that cannot be saved)."""

import functools
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import tiny
from test_checkpoint import jit_cache  # noqa: F401  (autouse: one compilation per program)

import esmjax
from esmjax.checkpoints import checkpoint as ckpt_lib
from esmjax.core import workdir as workdir_lib
from esmjax.training import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The error a failed save raises (a checkpoint.CheckpointError: exit 3).
SAVE_ERROR = getattr(ckpt_lib, "CheckpointSaveError", ckpt_lib.CheckpointError)


def cli_flags(data, **overrides):
  o = {
    "data.train_dir": data / "train",
    "data.eval_dir": data / "eval",
    "model.embed_dim": 4,
    "model.hidden": "8,4",
    "train.batch_size": 64,
    "train.eval_batch_size": 128,
    "train.num_steps": 20,
    "train.log_every": 5,
    "checkpoint.every_steps": 10,
    **overrides,
  }
  return ["--config=configs/esmm.py", *(f"--config.{k}={v}" for k, v in o.items())]


def start_cli(args, step_delay_s=0.0, prelude="", log=None):
  """The command line on one CPU device (`tests/slow_cli.py`: with a sleep after each dispatch),
  started through `python -c "<prelude>; exec"` (limits set there hold after the exec); its output
  goes to pipes, or to the file `log` (for a run that goes on while the test waits)."""
  env = tiny.cli_env(ESMJAX_TEST_STEP_DELAY_S=step_delay_s)
  out = open(log, "w") if log else subprocess.PIPE
  launch = f"{prelude}\nimport os, sys\nos.execv(sys.executable, [sys.executable] + sys.argv[1:])"
  cmd = [sys.executable, "-c", launch, os.path.join(REPO, "tests", "slow_cli.py"), *args]
  return subprocess.Popen(
    cmd,
    cwd=REPO,
    env=env,
    stdout=out,
    text=True,
    stderr=subprocess.STDOUT if log else subprocess.PIPE,
  )


def finish(proc, timeout=300):
  """-> (exit code, stdout, the error line: stderr's last line; or all of stderr if it has a
  traceback or more than one error line)."""
  out, err = proc.communicate(timeout=timeout)
  errors = [line for line in err.splitlines() if line.startswith("esmjax: error: ")]
  one_line = len(errors) == 1 and err.rstrip().endswith(errors[0]) and "Traceback" not in err
  return proc.returncode, out, errors[0] + "\n" if one_line else err


def wait_for_owner(workdir, proc, log, timeout=120) -> str:
  """The owner line a running CLI wrote into its lock file."""
  path = os.path.join(workdir, "run-p0.lock")
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(path) and open(path).read().startswith(f"pid {proc.pid} "):
      return open(path).read().strip()
    time.sleep(0.05)
  raise AssertionError(
    f"the run never locked {workdir}: exit {proc.poll()}; {open(log).read()[-2000:]}"
  )


# -- one run per workdir --------------------------------------------------------------------------


def test_second_run_on_a_workdir_is_refused_and_a_killed_runs_lock_does_not_block(data, tmp_path):
  workdir, log = str(tmp_path / "wd"), str(tmp_path / "first.log")
  # The owner: endless, slowed down, without checkpoints (a rerun starts from scratch).
  first = start_cli(
    cli_flags(data, **{"train.num_steps": 10**6, "checkpoint.enabled": False})
    + [f"--workdir={workdir}"],
    step_delay_s=0.05,
    log=log,
  )
  try:
    owner = wait_for_owner(workdir, first, log)
    assert owner.startswith(f"pid {first.pid} on host ")
    # Another seed, same workdir: refused before it reads or writes anything there.
    second = start_cli(cli_flags(data, **{"train.seed": 1}) + [f"--workdir={workdir}"])
    code, out, err = finish(second)
    assert code == 2, err[-3000:]
    assert err.startswith(
      f"esmjax: error: --workdir={workdir} is in use by another run: pid {first.pid} on host "
    )
    assert err.endswith(
      f"holds {workdir}/run-p0.lock; wait for it to finish, stop it, or use another --workdir\n"
    )
    # The Python API takes the same lock.
    cfg = tiny.tiny_config(
      "esmm", **{"data.train_dir": str(data / "train"), "data.eval_dir": str(data / "eval")}
    )
    with pytest.raises(
      workdir_lib.WorkdirError, match=f"is in use by another run: pid {first.pid} on host "
    ):
      esmjax.train(cfg, workdir)
    assert first.poll() is None  # the owner trains on
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  # Killed: the kernel released its lock; the file (naming it) stays and does not block a rerun.
  assert open(os.path.join(workdir, "run-p0.lock")).read().startswith(f"pid {first.pid} ")
  code, out, err = finish(start_cli(cli_flags(data) + [f"--workdir={workdir}"]))
  assert code == 0, err[-3000:]
  assert "20 steps" in out


def test_the_same_process_cannot_own_a_workdir_twice(data, tmp_path):
  with workdir_lib.claim(str(tmp_path)):
    with pytest.raises(
      workdir_lib.WorkdirError, match=f"is in use by another run: pid {os.getpid()} on host"
    ):
      with workdir_lib.claim(str(tmp_path)):
        pass
  with workdir_lib.claim(str(tmp_path)):  # released on exit: claimed again
    pass


# -- workdirs that cannot be used -----------------------------------------------------------------


def test_workdir_that_is_a_file_is_one_line(data, tmp_path):
  path = tmp_path / "file"
  path.write_text("not a directory")
  code, out, err = finish(start_cli(cli_flags(data) + [f"--workdir={path}"]))
  assert (code, err) == (
    2,
    f"esmjax: error: --workdir={path} is a file, not a directory; give a directory\n",
  )
  code, out, err = finish(start_cli(cli_flags(data) + [f"--workdir={path}/sub"]))
  assert (code, err) == (
    2,
    f"esmjax: error: --workdir={path}/sub: a part of the path is a file, not a directory\n",
  )


# Root loses its power to write where permission bits forbid it: the bounding set drops
# CAP_DAC_OVERRIDE (1) and CAP_DAC_READ_SEARCH (2) (prctl PR_CAPBSET_DROP = 24) before the exec.
WITHOUT_ROOT_OVERRIDES = """
import ctypes, os
libc = ctypes.CDLL(None)
if any(libc.prctl(24, cap, 0, 0, 0) != 0 for cap in (1, 2)):
  os._exit(97)
"""


def test_workdir_that_is_not_writable_is_one_line(data, tmp_path):
  workdir = tmp_path / "read-only"
  workdir.mkdir()
  workdir.chmod(0o555)
  prelude = WITHOUT_ROOT_OVERRIDES if os.geteuid() == 0 else ""
  code, out, err = finish(start_cli(cli_flags(data) + [f"--workdir={workdir}"], prelude=prelude))
  if code == 97:
    pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE here")
  assert code == 2, err[-3000:]
  assert err == (
    f"esmjax: error: --workdir={workdir} is not writable: Permission denied (EACCES) "
    f"creating {workdir}/run-p0.lock\n"
  )
  code, out, err = finish(
    start_cli(cli_flags(data) + [f"--workdir={workdir}/new"], prelude=prelude)
  )
  assert (code, err) == (
    2,
    f"esmjax: error: --workdir={workdir}/new cannot be created: Permission denied (EACCES)\n",
  )


# -- a checkpoint that cannot be saved ------------------------------------------------------------


def test_failed_save_stops_the_run_with_exit_3_and_no_summary(data, tmp_path, monkeypatch, capsys):
  save = ckpt_lib.Checkpointer.save

  def failing_save(self, step, *args, **kwargs):
    if step == 10:
      raise SAVE_ERROR(
        f"cannot save checkpoint step 10 in {self.directory}: [Errno 28] No space left on device"
      )
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(ckpt_lib.Checkpointer, "save", failing_save)
  dispatched = []
  monkeypatch.setattr(
    trainer,
    "train_and_evaluate",
    functools.partial(
      trainer.train_and_evaluate, hooks=trainer.Hooks(after_dispatch=dispatched.append)
    ),
  )
  cfg = tiny.tiny_config(
    "esmm",
    **{
      "data.train_dir": str(data / "train"),
      "data.eval_dir": str(data / "eval"),
      "train.num_steps": 20,
      "checkpoint.every_steps": 5,
    },
  )
  workdir = str(tmp_path)
  code, out, err = tiny.run_main(cfg, workdir, monkeypatch, capsys)
  assert code == 3
  assert err == (
    f"esmjax: error: cannot save checkpoint step 10 in {workdir}/checkpoints: "
    "[Errno 28] No space left on device\n"
  )
  assert dispatched[-1] == 10  # stopped at the failed save: no step after it
  assert out == ""  # no final line
  assert not os.path.exists(os.path.join(workdir, "summary.json"))  # nothing claims success
  saved = os.listdir(os.path.join(workdir, "checkpoints"))
  assert sorted(int(s) for s in saved if s.isdigit()) == [5]


# Files the run writes stop at 256 KB, with EFBIG instead of SIGXFSZ.
SMALL_FILES = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))
"""


@pytest.mark.skipif(
  not hasattr(ckpt_lib, "CheckpointSaveError"),
  reason="needs checkpoint.CheckpointSaveError: a failed save raised as one line",
)
def test_save_that_hits_a_file_size_limit_fails_the_run_with_exit_3(data, tmp_path):
  # Towers of 512-256: the checkpoint's array file passes 256 KB; logs and metrics stay below.
  workdir = tmp_path / "wd"
  args = cli_flags(data, **{"model.hidden": "512,256", "model.embed_dim": 16})
  args.append(f"--workdir={workdir}")
  code, out, err = finish(start_cli(args, prelude=SMALL_FILES))
  assert code == 3, err[-3000:]
  assert err.startswith("esmjax: error: ") and str(workdir / "checkpoints") in err, err[-3000:]
  assert err.count("\n") == 1 and out == ""
  assert not (workdir / "summary.json").exists()
  shutil.rmtree(workdir, ignore_errors=True)


# -- a finished workdir ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
  """A finished tiny run (checkpoints at steps 5 and 10) -> (workdir, summary); tests copy it."""
  workdir = str(tmp_path_factory.mktemp("finished") / "wd")
  return workdir, trainer.train_and_evaluate(tiny.run_config(data), workdir)


def _copy(finished, tmp_path) -> str:
  workdir = str(tmp_path / "wd")
  shutil.copytree(finished[0], workdir)
  return workdir


def _snapshot(workdir):
  """{relative path: bytes} of every file in `workdir` but the lock files (their content names
  the last process that held them)."""
  out = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      if not name.startswith("run-p"):
        with open(path, "rb") as f:
          out[os.path.relpath(path, workdir)] = f.read()
  return out


def test_rerunning_a_finished_workdir_reports_it_and_changes_nothing(
  data, finished, tmp_path, monkeypatch, capsys
):
  workdir = _copy(finished, tmp_path)
  before = _snapshot(workdir)
  again = trainer.train_and_evaluate(tiny.run_config(data), workdir)
  assert again == {**finished[1], "already_finished": True}  # examples_per_sec etc. as they were
  assert _snapshot(workdir) == before  # no record appended, no file rewritten
  code, out, err = tiny.run_main(tiny.run_config(data), workdir, monkeypatch, capsys)
  assert code == 0 and out.startswith(f"esmjax: {workdir} already finished at step 10; nothing")
  assert _snapshot(workdir) == before
  # More steps asked for: the run goes on from its last checkpoint.
  more = trainer.train_and_evaluate(tiny.run_config(data, **{"train.num_steps": 12}), workdir)
  assert more["steps"] == 12 and more["resumed_from_step"] == 10


@pytest.mark.parametrize(
  "overrides, named",
  [
    ({"train.seed": 1}, "train.seed 0 -> 1"),
    ({"optimizer.learning_rate": 0.3}, "optimizer.learning_rate 0.001 -> 0.3"),
  ],
)
def test_a_finished_workdir_of_another_config_is_refused_untouched(
  data, finished, tmp_path, overrides, named
):
  workdir = _copy(finished, tmp_path)
  before = _snapshot(workdir)
  with pytest.raises(workdir_lib.WorkdirError) as e:
    trainer.train_and_evaluate(tiny.run_config(data, **overrides), workdir)
  assert str(e.value) == (
    f"--workdir={workdir} holds another run, finished at step 10 with another config "
    f"({named}); use another --workdir"
  )
  assert _snapshot(workdir) == before


def test_a_finished_run_whose_final_checkpoint_is_unreadable_trains_again(data, finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "10", "state"))
  again = trainer.train_and_evaluate(tiny.run_config(data), workdir)
  assert "already_finished" not in again and again["resumed_from_step"] == 5
  assert again["skipped_checkpoints"][0].startswith("step 10 (")
  assert again["state_fingerprint"] == finished[1]["state_fingerprint"]


def test_a_corrupt_summary_is_one_line_naming_it(data, finished, tmp_path):
  workdir = _copy(finished, tmp_path)
  path = os.path.join(workdir, "summary.json")
  with open(path, "r+b") as f:
    f.seek(10)
    f.write(b"\xff\xfe")
  from esmjax.common import digest

  message = rf"{path} is not readable JSON \(UnicodeDecodeError: .*\): restore it from a copy"
  with pytest.raises(digest.IntegrityError, match=message):
    esmjax.load(workdir)
  with pytest.raises(digest.IntegrityError, match=message):
    trainer.train_and_evaluate(tiny.run_config(data), workdir)


def test_a_batch_larger_than_the_training_rows_is_refused(data, tmp_path):
  from esmjax.config import defaults as config_lib

  cfg = tiny.run_config(data, **{"train.batch_size": 4096})  # the train split: 1 500 rows
  with pytest.raises(config_lib.ConfigError) as e:
    trainer.train_and_evaluate(cfg, str(tmp_path / "wd"))
  assert str(e.value).startswith("train.batch_size=4096 is larger than the 1500 training rows (")
  assert "every batch would hold rows more than once" in str(e.value)
  assert not os.path.exists(tmp_path / "wd" / "schema.json")  # refused before any write
