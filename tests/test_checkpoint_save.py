"""Saves that fail loudly: a checkpoint that cannot be written raises CheckpointSaveError, one line
naming its path and the OS error, at the next save, wait or close; the CLI exits 3 with that line.

The failing file system is real: subprocesses whose file size limit (RLIMIT_FSIZE) is lowered with
SIGXFSZ ignored, so writes past it fail with EFBIG, as root too.
"""

import os
import subprocess
import sys

import pytest
import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
# Above every small file of a run; below the array data file of an embed_dim-512 checkpoint.
LIMIT = 48 * 1024

SCRIPT = f"""
import os, resource, signal, sys
sys.path.insert(0, {TESTS!r})
from esmjax.common import absl_flags
absl_flags.ensure_parsed()
import tiny
from esmjax.checkpoints import checkpoint as ckpt_lib
from esmjax.training import trainer

config = tiny.tiny_config("esmm", **{{"model.embed_dim": 512}})
run = trainer.Run(config, tiny.tiny_schema())
state = run.init_fn()
ck = ckpt_lib.Checkpointer(sys.argv[1], config, run)
ck.save(1, state, None)
ck.wait()
print("saved 1", flush=True)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({LIMIT}, resource.RLIM_INFINITY))

def attempt(what, call):
  try:
    call()
    print(what, "returned", flush=True)
  except ckpt_lib.CheckpointSaveError as e:
    assert isinstance(e, ckpt_lib.CheckpointError) and "\\n" not in str(e)
    print(what, "raised", e, flush=True)

ck.save(2, state, None)
print("save 2 returned", flush=True)  # written in the background
attempt("wait", ck.wait)
ck.save(3, state, None)
attempt("save 4", lambda: ck.save(4, state, None))
ck.save(5, state, None)
attempt("close", ck.close)
print("steps on disk", sorted(s for s in os.listdir(ck.directory) if s.isdigit()), flush=True)
"""


def _limited(argv):
  """`argv` run under the file size limit: set in a fresh interpreter that then execs it (the
  limit and the ignored SIGXFSZ survive exec; no preexec_fn in this multithreaded process)."""
  return [
    sys.executable,
    "-c",
    "import os, resource, signal, sys\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
    f"resource.setrlimit(resource.RLIMIT_FSIZE, ({LIMIT}, resource.RLIM_INFINITY))\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n",
    *argv,
  ]


def test_a_failed_background_save_raises_at_the_next_wait_save_and_close(tmp_path):
  workdir = str(tmp_path / "wd")
  r = subprocess.run(
    [sys.executable, "-c", SCRIPT, workdir],
    env=tiny.cli_env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
  ckpts = os.path.join(workdir, "checkpoints")
  assert r.stdout.splitlines() == [
    "saved 1",
    "save 2 returned",
    f"wait raised checkpoint step 2 could not be saved to {ckpts}/2: EFBIG (File too large)",
    f"save 4 raised checkpoint step 3 could not be saved to {ckpts}/3: EFBIG (File too large)",
    f"close raised checkpoint step 5 could not be saved to {ckpts}/5: EFBIG (File too large)",
    "steps on disk ['1']",
  ]
  # orbax's own error logs of those saves (a traceback per background thread) are not shown.
  assert "Traceback" not in r.stderr and "File too large" not in r.stderr, r.stderr[-3000:]


@pytest.fixture
def data(tmp_path):
  tiny.tiny_dataset(str(tmp_path / "train"), n=1000)
  tiny.tiny_dataset(str(tmp_path / "eval"), n=200, seed=1)
  return tmp_path


def test_cli_stops_with_one_line_and_exit_3(data, tmp_path):
  workdir = tmp_path / "wd"
  flags = [
    f"--config.data.train_dir={data / 'train'}",
    f"--config.data.eval_dir={data / 'eval'}",
    "--config.model.embed_dim=512",
    "--config.model.hidden=8,4",
    "--config.train.batch_size=64",
    "--config.train.eval_batch_size=128",
    "--config.train.num_steps=12",
    "--config.train.log_every=1",
    "--config.checkpoint.every_steps=5",
    "--config.mesh.num_devices=1",
  ]
  command = [
    sys.executable,
    "-m",
    "esmjax.main",
    "--config=configs/esmm.py",
    f"--workdir={workdir}",
    *flags,
  ]
  r = subprocess.run(
    _limited(command), cwd=REPO, env=tiny.cli_env(), capture_output=True, text=True, timeout=300
  )
  assert r.returncode == 3, r.stderr[-3000:]
  errors = [l for l in r.stderr.splitlines() if l.startswith("esmjax: error:")]
  assert errors == [
    f"esmjax: error: checkpoint step 5 could not be saved to "
    f"{workdir}/checkpoints/5: EFBIG (File too large)"
  ], r.stderr[-3000:]
  assert "Traceback" not in r.stderr and r.stderr.count("File too large") == 1, r.stderr[-3000:]
  assert not (workdir / "summary.json").exists()
