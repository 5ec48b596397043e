"""benchmarks/user_path.py's pieces on hand-made numbers: the rate it reads from a run, the order
it measures in, the targets it judges, the baseline worktree, and its errors (the benchmark
itself runs for minutes: `python benchmarks/user_path.py --quick`)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import common  # noqa: E402
import harness  # noqa: E402
import user_path as up  # noqa: E402


def test_read_run_rate_leaves_out_the_first_step(tmp_path):
  summary = {
    "steps": 11,
    "train_seconds": 3.0,
    "compile_seconds": 1.0,
    "examples_per_sec": 7.0,
    "config": {"train": {"batch_size": 100}},
    "metrics": {"ctr/auc": 0.7},
  }
  (tmp_path / "summary.json").write_text(json.dumps(summary))
  lines = [
    {"step": 5, "split": "train", "loss": 0.5, "examples_per_sec": 400.0},
    {"step": 10, "split": "train", "loss": 0.25, "examples_per_sec": 600.0},
    {"step": 11, "split": "eval", "ctr/auc": 0.7},
  ]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
  r = common.read_run(tmp_path)
  assert r["ex_per_s"] == 10 * 100 / 2.0  # steps 2..11 over train_seconds − compile_seconds
  assert r["first_step_s"] == 1.0 and r["summary_ex_per_s"] == 7.0
  assert r["windows"] == [400.0, 600.0] and r["losses"] == [(5, 0.5), (10, 0.25)]
  assert r["metrics"] == {"ctr/auc": 0.7}


def test_read_run_rate_of_a_loop_that_compiles_before_timing(tmp_path):
  # The summary of a loop that compiles ahead: train_seconds holds every step and no compile.
  summary = {
    "steps": 11,
    "train_seconds": 2.0,
    "compile_seconds": 1.0,
    "examples_per_sec": 550.0,
    "examples_per_sec_median_window": 500.0,
    "config": {"train": {"batch_size": 100}},
  }
  (tmp_path / "summary.json").write_text(json.dumps(summary))
  (tmp_path / "metrics.jsonl").write_text("")
  assert common.read_run(tmp_path)["ex_per_s"] == 11 * 100 / 2.0 == summary["examples_per_sec"]


def test_schedule_interleaves_and_rotates():
  systems = ["new", "baseline", "torch-a"]
  r0 = up.schedule(["esmm"], [1024], systems, 0)
  assert r0 == [
    ("pipeline", None, 1024, "pipeline"),
    *[("e2e", "esmm", 1024, s) for s in systems],
    *[("step", "esmm", 1024, s) for s in systems],
  ]
  r1 = up.schedule(["esmm"], [1024], systems, 1)
  assert [s for k, _, _, s in r1 if k == "e2e"] == ["baseline", "torch-a", "new"]
  assert len(up.schedule(["esmm", "esm2"], [1024, 4096], systems, 2)) == 2 + 2 * 2 * 6


def _runs(e2e, step, pipe):
  """runs[kind][point][system] from {point: {system: [rates]}} (e2e: one rate per run; step and
  pipeline: windows)."""

  def kind(points, rate):
    return {
      p: {s: [{"ex_per_s": rate(x), "first_step_s": 1.0} for x in xs] for s, xs in ss.items()}
      for p, ss in points.items()
    }

  return {
    "e2e": kind(e2e, lambda x: x),
    "step": kind(step, lambda x: [x, x]),
    "pipeline": kind({p: {"pipeline": xs} for p, xs in pipe.items()}, lambda x: [x]),
  }


def test_targets_on_hand_numbers():
  e2e = {
    "esmm@1024": {
      "new": [60e3, 62e3, 58e3],
      "baseline": [40e3, 41e3, 39e3],
      "torch-x": [30e3, 31e3, 29e3],
      "torch-y": [45e3, 44e3, 46e3],
    },
    "esm2@1024": {
      "new": [50e3, 50e3, 50e3],
      "baseline": [20e3, 26e3, 27e3],
      "torch-x": [30e3, 30e3, 30e3],
    },
  }
  step = {
    "esmm@1024": {"new": [100e3, 100e3, 100e3], "torch-x": [50e3, 50e3, 50e3]},
    "esm2@1024": {"new": [80e3, 80e3, 80e3], "torch-x": [40e3, 40e3, 40e3]},
  }
  runs = _runs(e2e, step, {"pipeline@1024": [450e3, 600e3, 520e3]})
  runs["e2e"]["esm2@1024"]["torch-x"].append({"error": "exit 1: boom"})
  summary = up.summarise(runs)
  assert summary["e2e"]["esm2@1024"]["torch-x"]["errors"] == ["exit 1: boom"]
  rat = up.ratios(summary)
  assert rat["e2e"]["esmm@1024"]["best_torch"] == "torch-y"
  assert rat["e2e"]["esmm@1024"]["vs_torch"] == pytest.approx(60e3 / 45e3)
  assert rat["e2e"]["esmm@1024"]["e2e_over_step"] == pytest.approx(0.6)
  t = {c["claim"]: c for c in up.targets(summary, rat, ["esmm", "esm2"], [1024])}
  at = "end to end at batch 1,024 ≥"
  assert not t[f"ESMM {at} 1.5× the best PyTorch"]["holds"]  # 60 / 45
  assert t[f"ESMM {at} 1.5× the baseline"]["holds"]  # 60 / 40
  assert t[f"ESM2 {at} 1.5× the best PyTorch"]["holds"]  # 50 / 30
  assert not t[f"ESM2 {at} 2× the baseline"]["holds"]  # 50 / 26
  pipe = t["pipeline ≥ 5× the step at batch 1,024"]
  assert pipe["holds"] and pipe["detail"].startswith("5.2× (520.0 k vs 100.0 k ex/s, ESMM's step)")
  res = {
    "when": "now",
    "machine": {"cpu": "cpu", "cores": 2},
    "load_before": [1.0],
    "load_after": [2.0],
    "command": "python benchmarks/user_path.py",
    "baseline": {"ref": "284dab9", "commit": "284dab9"},
    "args": {"torch_threads": 2, "rounds": 3, "examples": 1000, "models": ["esmm", "esm2"]},
    "summary": summary,
    "ratios": rat,
    "targets": list(t.values()),
  }
  md = up.markdown(res)
  assert f"**not met** — ESM2 {at} 2× the baseline: 1.92×" in md
  assert "e2e esm2@1024 torch-x: exit 1: boom" in md
  assert (
    "| ESMM | 1,024 | 60.0 k (58.0–62.0) | 40.0 k (39.0–41.0) | 45.0 k (44.0–46.0) y | 1.33× "
    "| 1.50× | 60 % |"
  ) in md


def test_a_missing_number_fails_its_target():
  runs = _runs({"esmm@1024": {"new": [60e3], "torch-x": [float("nan")]}}, {}, {})
  summary = up.summarise(runs)
  t = up.targets(summary, up.ratios(summary), ["esmm"], [1024])
  assert [c["holds"] for c in t] == [False, False]  # no PyTorch number; no pipeline number


def _git(repo, *args):
  p = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True)
  return p.stdout.strip()


def test_baseline_worktree_at_the_ref_and_removed_after(tmp_path):
  repo = tmp_path / "repo"
  repo.mkdir()
  _git(repo, "init", "-q")
  for i in (1, 2):
    (repo / "a.txt").write_text(str(i))
    _git(repo, "add", "a.txt")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", f"c{i}")
  first = _git(repo, "rev-parse", "HEAD~1")
  with up.baseline_tree("HEAD~1", repo) as (path, commit):
    assert commit == first and (path / "a.txt").read_text() == "1"
    assert len(_git(repo, "worktree", "list").splitlines()) == 2
  assert not path.exists() and len(_git(repo, "worktree", "list").splitlines()) == 1
  assert (repo / "a.txt").read_text() == "2"
  with pytest.raises(up.UsageError, match=r"--baseline_ref='nope' is not a commit of"):
    with up.baseline_tree("nope", repo):
      pass


def test_bad_arguments_exit_2_naming_them(capsys):
  assert up.main(["--models", "esmm,dnn"]) == 2
  err = capsys.readouterr().err
  assert "--models: 'dnn' has no shipped config here; allowed: ['esmm', 'esm2']" in err
  assert up.main(["--torch_variants", "fast"]) == 2
  assert "--torch_variants: 'fast' is not" in capsys.readouterr().err


def test_workers_inherit_pythonpath_with_the_measured_tree_first(tmp_path, monkeypatch):
  deps = str(tmp_path / "deps")  # e.g. a `pip install --target` folder the dependencies live in
  bench = str(harness.BENCH)
  inherited = os.pathsep.join([str(up.ROOT), bench, deps])
  assert up.worker_pythonpath(up.ROOT, inherited).split(os.pathsep) == [str(up.ROOT), bench, deps]
  # A baseline tree: its esmjax first, this checkout's left out, the dependencies kept.
  base = tmp_path / "baseline"
  assert up.worker_pythonpath(base, inherited).split(os.pathsep) == [str(base), bench, deps]
  monkeypatch.setenv("PYTHONPATH", inherited)
  env = up.tree_env(base, torch=True)
  assert env["PYTHONPATH"].split(os.pathsep)[-1] == deps and env["OMP_WAIT_POLICY"] == "PASSIVE"


def test_a_missing_default_baseline_is_skipped_with_one_line(monkeypatch, tmp_path, capsys):
  # A checkout without history: the default baseline is left out, the run goes on (here it stops
  # at the data step, stubbed to fail, so nothing is measured).
  monkeypatch.setattr(up, "_has_commit", lambda repo, ref: False)
  monkeypatch.setattr(harness, "run_worker", lambda *a, **k: {"error": "stub: no data"})
  assert up.main(["--quick", "--out_dir", str(tmp_path)]) == 3
  out, err = capsys.readouterr()
  assert (
    f"user_path: baseline {up.DEFAULT_BASELINE} is not in this checkout (no git history?): "
    "measuring without it" in out
  )
  assert "the datasets cannot be opened" in err
  # An explicitly named commit that is absent stays an error (a typo is not skipped).
  assert up.main(["--quick", "--baseline_ref", "nope123", "--out_dir", str(tmp_path)]) == 2
  assert "--baseline_ref='nope123' is not a commit of" in capsys.readouterr().err
