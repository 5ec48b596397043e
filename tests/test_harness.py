"""benchmarks/harness: the options dataclass that is a benchmark's command line, the median of
timed windows (on a fake clock), worker processes (environment, JSON result, timeout) and the one
result record."""

import dataclasses
import json
import os
import sys
import textwrap
import time

import psutil
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import harness  # noqa: E402


@dataclasses.dataclass
class Opts(harness.Timed):
  quick: bool = False
  rows: str = harness.opt("1e5,1e7", "table sizes")
  batch: int = harness.opt(4096, "examples per step")
  malloc: str = harness.opt("huge", "allocator", choices=("huge", "os"))
  windows: int = 11  # a shared option with its own default


def test_options_dataclass_is_the_command_line():
  o = harness.parse(Opts, [])
  assert o == Opts() and o.windows == 11 and o.rounds == 1 and not o.quick
  assert o.out_dir == str(harness.RESULTS)
  o = harness.parse(
    Opts, ["--quick", "--windows", "5", "--window_s=0.5", "--rows=1e5", "--batch", "1e3"]
  )
  assert (o.quick, o.windows, o.window_s, o.rows, o.batch) == (True, 5, 0.5, "1e5", 1000)
  assert vars(o)["malloc"] == "huge"  # a record stores vars(options) as its "args"
  help_ = harness.parser(Opts).format_help()
  assert "timed windows per measurement" in help_ and "table sizes (default '1e5,1e7')" in help_


@pytest.mark.parametrize(
  "argv, line",
  [
    (["--windows", "x"], "error: argument --windows: takes an integer, not 'x'"),
    (["--window_s", "fast"], "error: argument --window_s: takes a number, not 'fast'"),
    (["--malloc", "big"], "argument --malloc: invalid choice: 'big' (choose from 'huge', 'os')"),
    (["--rwos", "1"], "error: unrecognized arguments: --rwos 1"),
  ],
)
def test_a_bad_flag_is_one_line_naming_it(argv, line, capsys):
  with pytest.raises(SystemExit) as e:
    harness.parse(Opts, argv)
  err = capsys.readouterr().err
  assert e.value.code == 2 and line in err and err.count("\n") == 1


def test_a_subset_flag_names_the_unknown_and_the_allowed(capsys):
  assert harness.subset("sets", "b,,a", ["a", "b", "c"]) == ["b", "a"]
  with pytest.raises(SystemExit) as e:
    harness.subset("sets", "a,x", ["a", "b"])
  err = capsys.readouterr().err
  assert e.value.code == 2 and "argument --sets: unknown ['x']; allowed: a,b" in err
  assert err.count("\n") == 1


class FakeClock:
  """Time moves only when a step runs: step i takes durations(i) seconds."""

  def __init__(self, durations):
    self.t, self.durations, self.ran = 0.0, durations, []

  def __call__(self):
    return self.t

  def step(self, i):
    self.ran.append(i)
    self.t += self.durations(i)


def test_median_of_windows_on_a_fake_clock():
  # 0.25 s a step, except steps 7 and 8 (the second window) at 0.5 s: the first step is timed
  # apart, 0.5 s of warm-up runs steps 1-2, then windows of 1 s: 4, 2 and 4 steps.
  clock = FakeClock(lambda i: 0.5 if i in (7, 8) else 0.25)
  cpu = []
  first, rates, steps = harness.timed_windows(
    clock.step, lambda: None, 100, warmup_s=0.5, windows=3, window_s=1.0,
    cpu_rates=cpu, clock=clock, cpu_clock=clock,
  )  # fmt: skip
  assert first == 0.25 and steps == 13 and clock.ran == list(range(13))
  assert rates == [400.0, 200.0, 400.0] and cpu == rates
  s = harness.spread(rates)
  assert (s["median"], s["min"], s["max"], s["n"]) == (400.0, 200.0, 400.0, 3)
  assert s["rel_half_range"] == 0.25


def test_alternating_windows_cancel_the_load():
  # Two variants on one clock, b twice as slow as a; a "load" doubles every step's time from the
  # end of the second window pair (t = 5.375 s). Window by window b/a stays 0.5 while the raw
  # rates halve.
  clock = FakeClock(lambda i: 0.0)
  load = {"x": 1.0}

  def stepper(cost):
    def step(i):
      clock.t += cost * load["x"]
      if clock.t >= 5.375:
        load["x"] = 2.0

    return step

  out = harness.alternate(
    {"a": (stepper(0.125), lambda: None), "b": (stepper(0.25), lambda: None)}, 10,
    warmup_s=0.5, windows=4, window_s=1.0, clock=clock, cpu_clock=clock,
  )  # fmt: skip
  assert out["a"]["ex_per_s"] == [80.0, 80.0, 40.0, 40.0] and out["a"]["first_step_s"] == 0.125
  assert harness.ratios(out["b"]["ex_per_s"], out["a"]["ex_per_s"]) == [0.5] * 4


WORKER = """
import os, subprocess, sys, time
import harness, marker_mod

def sleep(spec):
  child = subprocess.Popen(["sleep", "60"])
  open(spec["pid_file"], "w").write(str(child.pid))
  time.sleep(60)

def echo(spec):
  time.sleep(0.3)  # long enough for the parent to sample the running interpreter's RSS
  return {"x": 2 * spec["x"], "marker": marker_mod.VALUE}

harness.worker_main({"echo": echo, "sleep": sleep})
"""


def test_worker_inherits_pythonpath_and_returns_json(tmp_path, monkeypatch):
  (tmp_path / "deps").mkdir()
  (tmp_path / "deps" / "marker_mod.py").write_text("VALUE = 'from PYTHONPATH'\n")
  (tmp_path / "w.py").write_text(textwrap.dedent(WORKER))
  monkeypatch.setenv("PYTHONPATH", str(tmp_path / "deps"))
  env = harness.worker_env()
  assert env["PYTHONPATH"].split(os.pathsep) == [
    harness.ROOT.as_posix(), harness.BENCH.as_posix(), str(tmp_path / "deps")
  ]  # fmt: skip
  spec = {"kind": "echo", "x": 21}
  r = harness.run_worker(tmp_path / "w.py", spec, env=env, timeout=60, sample_s=0.02)
  assert (r["x"], r["marker"]) == (42, "from PYTHONPATH") and "error" not in r
  assert r["peak_tree_rss_mb"] > 5 and r["wall_s"] > 0.3  # a Python interpreter's RSS


def test_worker_timeout_is_reported_and_its_tree_killed(tmp_path, monkeypatch):
  (tmp_path / "deps").mkdir()
  (tmp_path / "deps" / "marker_mod.py").write_text("VALUE = 1\n")
  (tmp_path / "w.py").write_text(textwrap.dedent(WORKER))
  monkeypatch.setenv("PYTHONPATH", str(tmp_path / "deps"))
  pid_file = tmp_path / "child.pid"
  t = time.perf_counter()
  spec = {"kind": "sleep", "pid_file": str(pid_file)}
  r = harness.run_worker(tmp_path / "w.py", spec, env=harness.worker_env(), timeout=3)
  assert r["error"] == "timed out after 3s" and r["spec"] == spec
  assert time.perf_counter() - t < 15
  child = int(pid_file.read_text())
  for _ in range(50):  # the orphaned `sleep 60` is reaped by init once killed
    if not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE:
      break
    time.sleep(0.1)
  else:
    pytest.fail(f"the worker's child {child} outlived the timeout")


def test_an_interrupted_parent_takes_the_command_group_down(tmp_path, monkeypatch):
  # Ctrl-C (or any error) while the parent waits: the command runs in a session of its own, so
  # the parent kills its process group on the way out instead of leaving it running.
  pid_file = tmp_path / "pid"
  script = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
  real = harness.workers._peaks

  def interrupt(proc, peaks):
    real(proc, peaks)
    if pid_file.exists():
      raise KeyboardInterrupt

  monkeypatch.setattr(harness.workers, "_peaks", interrupt)
  with pytest.raises(KeyboardInterrupt):
    harness.run_command([sys.executable, "-c", script], sample_s=0.05, timeout=30)
  child = int(pid_file.read_text())
  assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


def test_record_holds_machine_load_options_and_writes_both_files(tmp_path):
  o = harness.parse(Opts, ["--out_dir", str(tmp_path), "--quick"])
  rec = harness.Record("bench", o, command="python benchmarks/bench.py --quick", rows=[1])
  m = rec["machine"]
  assert {"cpu", "cpu_bf16_flags", "cores", "mem_available_gb", "gpus"} <= set(m)
  assert m["cpu"] and set(m["cpu_bf16_flags"]) <= {"avx512_bf16", "amx_bf16"}
  assert isinstance(rec["load_before"], list) and rec["args"]["quick"] is True
  rec["checks"] = [harness.check("rate ≥ 1", True, "2 ≥ 1")]
  paths = rec.write(f"# bench\n\n`{rec['command']}`, load before {rec['load_before']}\n")
  assert [p.name for p in paths] == ["bench.md", "bench.json"]
  back = json.loads((tmp_path / "bench.json").read_text())
  assert back["command"] == "python benchmarks/bench.py --quick" and back["rows"] == [1]
  assert isinstance(back["load_after"], list) and back["elapsed_s"] >= 0
  assert back["args"]["out_dir"] == str(tmp_path) and back["checks"][0]["holds"] is True
  md = (tmp_path / "bench.md").read_text()
  assert md.startswith("# bench\n\n`python benchmarks/bench.py --quick`, load before [")


def test_flag_set_pays_only_when_every_round_says_so():
  # Each round runs every flag set in its own process: a load spike during one round's `none`
  # run lifts that round's ratio of every other set (the Xeon record of 2026-12-04: 2.9× in a
  # spiked round, 0.95× in a quiet one). The median of two rounds would call that 1.9×.
  import xla_flags

  rounds = [
    {"none": {"ex_per_s": {"s": [40.0]}}, "w512": {"ex_per_s": {"s": [116.0]}},
     "xnn": {"ex_per_s": {"s": [44.0]}}},
    {"none": {"ex_per_s": {"s": [120.0]}}, "w512": {"ex_per_s": {"s": [114.0]}},
     "xnn": {"ex_per_s": {"s": [132.0]}}},
  ]  # fmt: skip
  steps = xla_flags.summarize(rounds, ["none", "w512", "xnn"])
  assert steps["s"]["w512"]["ratio_to_none"] == pytest.approx((2.9 + 0.95) / 2)
  lines = xla_flags.verdict(steps, ["none", "w512", "xnn"], 1.05)
  assert lines[0].startswith("`w512`: pays on no step") and "0.95–0.95×" in lines[0]
  assert lines[1].startswith("`xnn`: pays on s;")


def test_step_profile_sums_ops_by_kind_and_leaves_runtime_spans_out():
  import step_profile

  ev = lambda name, dur: {"ph": "X", "name": name, "dur": dur, "args": {"hlo_op": name}}  # noqa: E731
  span = lambda name: {"ph": "X", "name": name, "dur": 9e9, "args": {"_src": "x.cc"}}  # noqa: E731
  trace = {
    "traceEvents": [
      ev("ynn_fusion.3", 4000.0), ev("ynn_fusion.3", 2000.0), ev("dot.4", 1000.0),
      ev("ynn_fusion.1", 20.0),
      ev("transpose_copy_fusion.1", 500.0), ev("bitcast_gather_fusion.7", 300.0),
      ev("wrapped_scatter.1", 200.0), ev("wrapped_broadcast", 100.0), ev("wrapped_iota", 60.0),
      ev("maximum_convert_fusion", 40.0),
      span("ThunkExecutor::Execute"), span("PjitFunction(train_step)"),
      span("CommonPjRtLoadedExecutable::ExecuteHelperOnSingleDevice"),
      {"ph": "X", "name": "$api.py:2479 block_until_ready", "dur": 9e9},
      {"ph": "M", "name": "thread_name", "dur": 9e9},
    ]
  }  # fmt: skip
  hlo = """HloModule m

%fused_computation.3 (p0: bf16[8,4], p1: bf16[4,2]) -> f32[8,2] {
  %p0 = bf16[8,4]{1,0} parameter(0)
  %p1 = bf16[4,2]{1,0} parameter(1)
  ROOT %dot_general.0 = f32[8,2]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}
}

%fused_computation.1 (p0: f32[8], p1: f32[]) -> f32[] {
  %p0 = f32[8]{0} parameter(0)
  %p1 = f32[] parameter(1)
  ROOT %r = f32[] reduce(%p0, %p1), dimensions={0}, to_apply=%add
}

ENTRY %main (a: bf16[8,4], b: bf16[4,2]) -> f32[8,2] {
  %ynn_fusion.3 = f32[8,2]{1,0} fusion(%a, %b), kind=kCustom, calls=%fused_computation.3
  %ynn_fusion.1 = f32[] fusion(%c, %z), kind=kCustom, calls=%fused_computation.1
  ROOT %dot.4 = f32[8,2]{1,0} dot(%a, %b), lhs_contracting_dims={1}
}
"""
  dots = step_profile.dot_ops(hlo)
  assert {"ynn_fusion.3", "dot.4"} <= dots and "ynn_fusion.1" not in dots  # a library reduction
  ops = step_profile.op_times(trace, steps=2)
  assert ops["ynn_fusion.3"] == 3.0 and "ThunkExecutor::Execute" not in ops  # ms per step
  kinds = step_profile.by_kind(ops, dots)
  assert kinds == pytest.approx(
    {"dots": 3.5, "transposes": 0.25, "gathers": 0.15, "scatters": 0.1, "fills": 0.08,
     "other": 0.03}
  )  # fmt: skip
