r"""What users run, measured against PyTorch and against esmjax at a baseline commit, in one run.

    python benchmarks/user_path.py            # full: 3 rounds, 150 measurements (1–2 h, 2-core CPU)
    python benchmarks/user_path.py --quick    # smoke test: 1 round, 34 short runs (17 min, load 12)

Users run `python -m esmjax.main --config=configs/esm2.py` (or esmm.py): the default synthetic world
(18 single-valued fields, 5 weighted multi-valued fields with 39 slots, 4 dense features: 57
looked-up rows per example) through the whole input pipeline. For ESMM and ESM2 at batch 1,024 (the
shipped configs') and 4,096, three systems are measured:

  new       esmjax in this checkout;
  baseline  esmjax at --baseline_ref (default 284dab9), from a temporary `git worktree add --detach`
            with PYTHONPATH pointing there, removed afterwards (the default commit, when this
            checkout lacks it, is left out with one line saying so);
  torch-V   benchmarks/torch_reference.py, the same models (weighted multi-valued pooling, dense
            tanh embeddings, the same optimizers), variant V (see below).

and three things:

  e2e       end to end, as the trainer runs it: dataset on disk → grain reader → step → logging.
            esmjax: the CLI with the shipped config, only train.batch_size and train.num_steps
            changed; rate = examples over the training wall time of its summary.json
            (common.read_run), compilation left out, the final evaluation and checkpoint after
            it. PyTorch: the same rows in the same order,
            read from esmjax's grain pipeline (the trainer's iterator, same seed: the reader is
            common to both), the loss logged every train.log_every steps to metrics.jsonl and
            TensorBoard by esmjax's own writer, the same rate definition.
  step      the train step alone on pre-made batches (the first --n_batches the pipeline yields,
            on the device), timed windows after the compile and a warm-up. e2e / step is the share
            of the step's rate the input pipeline and logging leave.
  pipeline  the input pipeline alone (this checkout) at each batch size.

PyTorch variants: eager or torch.compile, sparse or dense table gradients, the configured row-wise
optimizer (row-wise Adagrad; compile-dense-rowwise_adagrad is its dense equivalent) or dense Adam on
the tables too (compile-dense-adam: what a PyTorch user writes first). At every point the best
variant is the comparator.

Every measurement runs in a fresh subprocess that inherits this process's environment, PYTHONPATH
included (the measured tree and benchmarks/ go first). Rounds interleave the systems (new, baseline,
torch, …, the order rotated each round) so the machine's load falls on all alike; rates are medians
over rounds and the ratios are of those medians, computed within this run; the load average is
recorded before and after. Targets, printed met / not met: end to end at batch 1,024 ESMM and ESM2 ≥
1.5× the best PyTorch; ESM2 ≥ 2× the baseline, ESMM ≥ 1.5× the baseline; the pipeline ≥ 5× what the
step consumes (this checkout's faster model) at every batch size.

Writes benchmarks/results/user_path.{json,md} (or --out_dir). Exit codes: 0 measured (met or not),
2 bad arguments (an unknown baseline ref, model or variant), 3 a measurement failed (the results
are written, listing it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import harness

ME = Path(__file__).resolve()
ROOT = harness.ROOT
DEFAULT_BASELINE = "284dab9"  # the commit the targets are stated against (--baseline_ref)
MODELS = ("esmm", "esm2")
BATCHES = (1024, 4096)
TORCH_VARIANTS = (
  *("eager-sparse-rowwise_adagrad", "compile-sparse-rowwise_adagrad"),
  *("compile-dense-rowwise_adagrad", "compile-dense-adam"),
  # bf16 autocast (torch_reference.Variant.bf16)
  *("compile-sparse-rowwise_adagrad-bf16", "compile-dense-adam-bf16"),
)
QUICK_TORCH = ("eager-sparse-rowwise_adagrad", "compile-dense-adam", "compile-dense-adam-bf16")
TARGET_BATCH = 1024  # the shipped configs' batch: the end-to-end targets are judged there
VS_TORCH = 1.5  # e2e at TARGET_BATCH, new / best PyTorch, every model
VS_BASELINE = {"esm2": 2.0, "esmm": 1.5}  # e2e at TARGET_BATCH, new / baseline
PIPELINE_OVER_STEP = 5.0  # pipeline alone / the faster model's step, every batch size
NAN = float("nan")


class UsageError(ValueError):
  """A bad argument; the message names it and the allowed values (exit 2)."""


# ---------------------------------------------------------------------------------------------
# Workers, each in its own process. A worker may run another checkout's esmjax (the baseline's):
# it uses only `common` and what both checkouts have.


def _first_batches(cfg, train_ds, n: int) -> list[dict]:
  it = common.train_batches(cfg, train_ds)
  try:
    return [next(it) for _ in range(n)]
  finally:
    getattr(it, "close", lambda: None)()


def _windows(spec, step, sync) -> dict:
  first, rates, n = harness.spec_windows(spec, step, sync)
  return {"ex_per_s": rates, "first_step_s": first, "steps": n}


def jax_step(spec) -> dict:
  """esmjax's train step (state.build, steps.train_step, jitted with the state donated, as the
  trainer compiles it) on pre-made device batches of the shipped config."""
  import jax

  from esmjax.core import sharding as sh
  from esmjax.core import state as state_lib
  from esmjax.core import steps

  cfg = common.shipped_config(spec["tree"], spec["model"], spec["batch"])
  train_ds, _ = common.datasets(cfg)
  host = _first_batches(cfg, train_ds, spec["n_batches"])
  mesh = sh.make_mesh(cfg.mesh.num_devices)
  c = state_lib.build(cfg, train_ds.schema, row_multiple=mesh.size, mesh=mesh)
  init = jax.jit(functools.partial(state_lib.init_state, c, cfg.train.seed))
  train = jax.jit(functools.partial(steps.train_step, c), donate_argnums=0)
  batches = [sh.put_batch({k: b[k] for k in steps.BATCH_KEYS}, mesh) for b in host]
  box = {"state": init(), "m": None}

  def step(i):
    box["state"], box["m"] = train(box["state"], batches[i % len(batches)])

  out = _windows(spec, step, lambda: jax.block_until_ready(box["m"]))
  out.update(peak_rss_mb=harness.peak_rss_mb(), backend=jax.default_backend())
  return {**out, "final_loss": float(jax.device_get(box["m"]["loss"]))}


def _torch_trainer(spec):
  torch, dev, _ = common.torch_setup(spec["threads"])
  import torch_reference as tr

  cfg = common.shipped_config(ROOT, spec["model"], spec["batch"], spec.get("steps", -1))
  train_ds, _ = common.datasets(cfg)
  variant = tr.Variant.parse(spec["variant"])
  torch.manual_seed(cfg.train.seed)
  model = tr.TorchMultiTask.from_config(cfg, train_ds.schema, sparse=variant.sparse).to(dev)
  return torch, tr, dev, cfg, train_ds, tr.Trainer(model, cfg, variant)


def torch_e2e(spec) -> dict:
  """PyTorch end to end: the trainer's batch iterator → step → loss logged by esmjax's writer."""
  torch, tr, dev, cfg, train_ds, trainer = _torch_trainer(spec)
  from esmjax.evaluation import metrics_io

  with tempfile.TemporaryDirectory(prefix="esmjax-torch-run-") as work:
    writer = metrics_io.MetricWriter(work, config=cfg)
    batches = common.train_batches(cfg, train_ds)
    try:
      t = cfg.train
      run = tr.train_loop(trainer, batches, t.num_steps, t.batch_size, t.log_every, dev, writer)
    finally:
      getattr(batches, "close", lambda: None)()
      writer.close()
  losses = run["losses"]
  out = {k: run[k] for k in ("ex_per_s", "first_step_s", "train_s", "steps")}
  out["final_loss"] = losses[-1][1] if losses else float("nan")
  return {**out, "peak_rss_mb": harness.peak_rss_mb(), "torch": torch.__version__, "device": dev}


def torch_step(spec) -> dict:
  """The PyTorch train step alone on pre-made batches (already tensors on the device)."""
  torch, tr, dev, cfg, train_ds, trainer = _torch_trainer(spec)
  batches = [tr.to_torch(b, dev) for b in _first_batches(cfg, train_ds, spec["n_batches"])]
  box = {"loss": None}

  def step(i):
    box["loss"] = trainer.step(batches[i % len(batches)])

  sync = torch.cuda.synchronize if dev == "cuda" else lambda: float(box["loss"])
  out = _windows(spec, step, sync)
  out.update(peak_rss_mb=harness.peak_rss_mb(), final_loss=float(box["loss"]))
  return {**out, "torch": torch.__version__}


def prepare(spec) -> dict:
  """Opens the shipped configs' datasets (generated once into the shared cache if missing)."""
  del spec
  t = time.perf_counter()
  train_ds, eval_ds = common.datasets(common.shipped_config(ROOT, "esmm", 1024))
  return dict(
    seconds=time.perf_counter() - t, train_rows=train_ds.num_rows, eval_rows=eval_ds.num_rows,
    train_dir=str(train_ds.directory),
  )  # fmt: skip


def pipeline(spec) -> dict:
  """The input pipeline alone: the trainer's batch iterator drained as fast as it yields."""
  cfg = common.shipped_config(ROOT, "esmm", spec["batch"])
  train_ds, _ = common.datasets(cfg)
  it = common.train_batches(cfg, train_ds)
  try:
    out = _windows(spec, lambda i: next(it), lambda: None)
  finally:
    getattr(it, "close", lambda: None)()
  return {**out, "peak_rss_mb": harness.peak_rss_mb()}


# ---------------------------------------------------------------------------------------------
# The CLI end to end, the checkouts measured, the schedule of the measurements.


worker_pythonpath, tree_env = harness.tree_pythonpath, harness.tree_env


def cli_e2e(tree: Path, model: str, batch: int, steps: int, timeout: float) -> dict:
  """`python -m esmjax.main --config=<tree>/configs/<model>.py` with only the batch size and the
  number of steps changed, esmjax from `tree`; its rate from the run's summary."""
  overrides = {"train.batch_size": batch, "train.num_steps": steps}
  with tempfile.TemporaryDirectory(prefix="esmjax-user-path-") as work:
    cmd = [sys.executable, "-m", "esmjax.main", f"--config={tree}/configs/{model}.py"]
    cmd += [f"--workdir={work}/run", *harness.override_flags(overrides)]
    p = harness.run_command(cmd, env=tree_env(tree), cwd=work, timeout=timeout)
    if p.timed_out:
      return {"error": f"timed out after {timeout:.0f}s"}
    wall = p.wall_s
    if p.returncode != 0:
      return {"error": f"exit {p.returncode}: {(p.stderr or p.stdout)[-1500:]}", "wall_s": wall}
    run = common.read_run(Path(work) / "run")
  keep = ("ex_per_s", "first_step_s", "train_s", "steps", "summary_ex_per_s")
  loss = run["losses"][-1][1] if run["losses"] else float("nan")
  return {**{k: run[k] for k in keep}, "wall_s": wall, "final_loss": loss}


@contextlib.contextmanager
def baseline_tree(ref: str, repo: Path | str = ROOT):
  """Yields (path, commit) of a temporary detached worktree of `repo` at `ref`; removes it after."""
  commit = harness.git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
  if not ref or not commit:
    raise UsageError(
      f"--baseline_ref={ref!r} is not a commit of {repo} (a hash, tag or branch "
      "there; '' skips the baseline)"
    )
  with harness.worktree(repo, commit) as path:
    yield path, commit


def _has_commit(repo: Path | str, ref: str) -> bool:
  return bool(harness.git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"))


def systems_of(args) -> list[str]:
  base = ["baseline"] if args.baseline_ref else []
  return ["new", *base, *[f"torch-{v}" for v in args.torch_variants]]


def schedule(models, batches, systems, rnd: int) -> list[tuple]:
  """Round `rnd`'s measurements in order: the pipeline at each batch, then per (model, batch) every
  system end to end, then every system's step; the systems' order rotates by one each round, so
  none always runs first or after the same neighbour."""
  k = rnd % len(systems)
  order = systems[k:] + systems[:k]
  out = [("pipeline", None, b, "pipeline") for b in batches]
  for m in models:
    for b in batches:
      out += [("e2e", m, b, s) for s in order] + [("step", m, b, s) for s in order]
  return out


def measure(item, args, trees: dict) -> dict:
  kind, model, batch, system = item
  spec = dict(batch=batch, n_batches=args.n_batches, model=model, **harness.timing_spec(args))
  steps = max(2, args.examples // batch)
  run = functools.partial(harness.run_worker, ME, timeout=args.worker_timeout)
  if kind == "pipeline":
    return run({"kind": "pipeline", **spec}, env=tree_env(ROOT))
  if system in trees:  # esmjax, this checkout or the baseline's
    if kind == "e2e":
      return cli_e2e(trees[system], model, batch, steps, args.worker_timeout)
    tree = trees[system]
    return run({"kind": "jax_step", "tree": str(tree), **spec}, env=tree_env(tree))
  variant = system[len("torch-") :]
  spec.update(kind=f"torch_{kind}", variant=variant, steps=steps, threads=args.torch_threads)
  return run(spec, env=tree_env(ROOT, torch=True))


# ---------------------------------------------------------------------------------------------
# The numbers: runs[kind][point][system] = [one result dict per round], kind in e2e, step,
# pipeline; point '<model>@<batch>' (pipeline: 'pipeline@<batch>'); system 'new', 'baseline',
# 'torch-<variant>' (pipeline: 'pipeline'). A result holds ex_per_s (e2e: one rate; step and
# pipeline: the rates of timed windows) or an error. Medians over rounds, ratios, targets, the
# Markdown report.


run_rate = harness.rate


def summarise(runs: dict) -> dict:
  """The same keys as `runs`, each with the median over rounds, the range and the errors."""
  out: dict = {}
  for kind, points in runs.items():
    for point, systems in points.items():
      for system, rs in systems.items():
        s = harness.spread([run_rate(r) for r in rs])
        s["first_step_s"] = min([r["first_step_s"] for r in rs if "first_step_s" in r] or [NAN])
        s["errors"] = [harness.error_line(r["error"]) for r in rs if "error" in r]
        out.setdefault(kind, {}).setdefault(point, {})[system] = s
  return out


def best_torch(systems: dict) -> tuple[str | None, float]:
  """(the fastest PyTorch variant by median, its median)."""
  tor = {s: v["median"] for s, v in systems.items() if s.startswith("torch-") and v["n"]}
  if not tor:
    return None, NAN
  best = max(tor, key=tor.get)
  return best, tor[best]


def ratios(summary: dict) -> dict:
  """Per kind and point: new / best PyTorch, new / baseline; e2e also new e2e / new step."""
  out: dict = {}
  for kind in ("e2e", "step"):
    for point, systems in summary.get(kind, {}).items():
      new = systems.get("new", {}).get("median", NAN)
      bt, bt_rate = best_torch(systems)
      base = systems.get("baseline", {}).get("median", NAN)
      out.setdefault(kind, {})[point] = dict(
        new=new, best_torch=bt, best_torch_ex_per_s=bt_rate, baseline=base,
        vs_torch=new / bt_rate, vs_baseline=new / base,
      )  # fmt: skip
  for point, r in out.get("e2e", {}).items():
    r["e2e_over_step"] = r["new"] / out.get("step", {}).get(point, {}).get("new", NAN)
  return out


def fastest_step(rat: dict, models, batch: int) -> tuple[str, float]:
  """(model, rate) of this checkout's faster step at `batch`: what the pipeline must feed."""
  steps = {m: rat.get("step", {}).get(f"{m}@{batch}", {}).get("new", NAN) for m in models}
  m = max(steps, key=lambda k: -1 if math.isnan(steps[k]) else steps[k])
  return m, steps[m]


def targets(summary: dict, rat: dict, models, batches) -> list[dict]:
  """The run's targets, judged on the medians (a missing number fails its target)."""
  ok = lambda x, bound: not math.isnan(x) and x >= bound
  fr, check, out = harness.fmt_rate, harness.check, []
  for m in models:
    r = rat.get("e2e", {}).get(f"{m}@{TARGET_BATCH}")
    if r is None:
      continue
    at, vs, base = f"{m.upper()} end to end at batch {TARGET_BATCH:,}", r["vs_torch"], r["baseline"]
    detail = f"{vs:.2f}× ({fr(r['new'])} vs {fr(r['best_torch_ex_per_s'])} ex/s, {r['best_torch']})"
    out.append(check(f"{at} ≥ {VS_TORCH:g}× the best PyTorch", ok(vs, VS_TORCH), detail))
    if m in VS_BASELINE and not math.isnan(base):
      detail = f"{r['vs_baseline']:.2f}× ({fr(r['new'])} vs {fr(base)} ex/s)"
      holds = ok(r["vs_baseline"], VS_BASELINE[m])
      out.append(check(f"{at} ≥ {VS_BASELINE[m]:g}× the baseline", holds, detail))
  for b in batches:
    pipe = summary.get("pipeline", {}).get(f"pipeline@{b}", {}).get("pipeline", {})
    pipe = pipe.get("median", NAN)
    m, need = fastest_step(rat, models, b)
    detail = f"{pipe / need:.1f}× ({fr(pipe)} vs {fr(need)} ex/s, {m.upper()}'s step)"
    claim = f"pipeline ≥ {PIPELINE_OVER_STEP:g}× the step at batch {b:,}"
    out.append(check(claim, ok(pipe / need, PIPELINE_OVER_STEP), detail))
  return out


def failures(summary: dict) -> list[str]:
  return [
    f"{kind} {point} {system}: {e}"
    for kind, pts in summary.items()
    for point, ss in pts.items()
    for system, v in ss.items()
    for e in v["errors"]
  ]


def _cell(summary: dict, kind: str, point: str, system: str | None) -> str:
  v = summary.get(kind, {}).get(point, {}).get(system or "")
  if not v or not v["n"]:
    return "–"
  rng = f" ({v['min'] / 1e3:,.1f}–{v['max'] / 1e3:,.1f})" if v["n"] > 1 else ""
  return harness.fmt_rate(v["median"]) + rng


def _header(res: dict) -> list[str]:
  a, base, m = res["args"], res.get("baseline") or {}, res["machine"]
  if base.get("skipped"):
    baseline = f"No baseline: `{base['ref']}` {base['skipped']}. "
  else:
    baseline = f"Baseline: `{base['ref']}` = commit {base['commit']}. " if base else "No baseline. "
  return [
    f"# What users run: esmjax end to end against PyTorch and its baseline ({res['when']})",
    "",
    f"Machine: {m['cpu']}, {m['cores']} usable cores; torch {res.get('torch_version', '?')} "
    f"({a['torch_threads']} threads). Load average before/after: {res['load_before']} / "
    f"{res['load_after']} (1, 5, 15 min).",
    "",
    harness.code_line(res) + baseline + f"{a['rounds']} round(s); end-to-end runs of "
    f"{a['examples']:,} examples (steps = examples / batch). Command: `{res['command']}`",
    "",
  ]


HEADERS = {
  "e2e": "model|batch|esmjax (this checkout)|esmjax (baseline)|best PyTorch (variant)|× PyTorch|"
  "× baseline|e2e / step (esmjax)",
  "step": "model|batch|esmjax (this checkout)|esmjax (baseline)|best PyTorch (variant)|× PyTorch|"
  "× baseline",
  "torch": "model|batch|variant|e2e ex/s|step ex/s|first step s (compile)|errors",
  "pipeline": "batch|pipeline ex/s|esmjax step ex/s (faster model)|pipeline / step",
}
TITLES = {
  "e2e": "End to end: dataset on disk → grain → step → logging",
  "step": "The step alone, on pre-made batches",
}
HOW_TO_READ = """\
- Every number is a median over rounds of one fresh process per measurement; ranges are the \
rounds' min–max. Ratios divide medians measured in this same run, interleaved, so the machine's \
load fell on all.
- End to end = examples over the training wall time without the compiling first step (esmjax: \
examples over training time, compilation left out, from summary.json; PyTorch: the same), \
evaluation and checkpointing excluded. PyTorch reads the same batches through esmjax's grain \
pipeline and logs through esmjax's metric writer.
- The step alone cycles the first pre-made batches on the device; e2e / step is what the pipeline \
and logging leave of it."""


def _table(kind: str, rows: list) -> str:
  return harness.markdown_table(HEADERS[kind].split("|"), rows)


def markdown(res: dict) -> str:
  s, rat, models = res["summary"], res["ratios"], res["args"]["models"]
  L = _header(res)
  for kind, title in TITLES.items():
    rows = []
    for point, r in rat.get(kind, {}).items():
      m, b = point.split("@")
      variant = (r["best_torch"] or "")[len("torch-") :]
      row = [
        m.upper(),
        f"{int(b):,}",
        _cell(s, kind, point, "new"),
        _cell(s, kind, point, "baseline"),
      ]
      row += [f"{_cell(s, kind, point, r['best_torch'])} {variant}", f"{r['vs_torch']:.2f}×"]
      row += [f"{r['vs_baseline']:.2f}×"]
      rows.append(row + ([f"{100 * r['e2e_over_step']:.0f} %"] if kind == "e2e" else []))
    L += [f"## {title} (examples/s: median over rounds, range)", "", _table(kind, rows), ""]
  rows = []
  for point, systems in s.get("e2e", {}).items():
    m, b = point.split("@")
    for system in sorted(x for x in systems if x.startswith("torch-")):
      step_errors = s.get("step", {}).get(point, {}).get(system, {}).get("errors", [])
      errors = "; ".join(systems[system]["errors"] + step_errors)
      row = [m.upper(), f"{int(b):,}", system[len("torch-") :], _cell(s, "e2e", point, system)]
      rows.append(row + [_cell(s, "step", point, system), systems[system]["first_step_s"], errors])
  L += ["## Every PyTorch variant", "", _table("torch", rows), ""]
  rows = []
  for point, v in s.get("pipeline", {}).items():
    b = int(point.split("@")[1])
    _, need = fastest_step(rat, models, b)
    pipe = _cell(s, "pipeline", point, "pipeline")
    rows.append([f"{b:,}", pipe, harness.fmt_rate(need), f"{v['pipeline']['median'] / need:.1f}×"])
  L += ["## The input pipeline alone (this checkout)", "", _table("pipeline", rows), ""]
  L += ["## Targets", "", harness.checks_markdown(res["targets"], ("met", "not met")), ""]
  if failures(s):
    L += ["## Failed measurements", "", *[f"- {e}" for e in failures(s)], ""]
  L += ["## How to read this", "", HOW_TO_READ]
  L += [
    f"- Regenerate: `{res['command']}`; re-render: `python benchmarks/user_path.py --render_only`."
  ]
  return "\n".join(L) + "\n"


# ---------------------------------------------------------------------------------------------
# Main.


@dataclasses.dataclass
class Opts(harness.Timed):
  quick: bool = harness.opt(False, "smoke test: 1 round, short runs, 2 PyTorch variants")
  rounds: int = 3
  models: str = harness.opt(",".join(MODELS), f"comma-separated, of {list(MODELS)}")
  batches: str = harness.opt(",".join(map(str, BATCHES)), "comma-separated batch sizes")
  examples: int = harness.opt(0, "examples per end-to-end run (default 524288; --quick 65536)")
  n_batches: int = harness.opt(16, "pre-made batches the step alone cycles")
  windows: int = harness.opt(0, "timed windows per step / pipeline run (default 5; --quick 2)")
  window_s: float = harness.opt(0.0, "seconds per window (default 2; --quick 1)")
  warmup_s: float = harness.opt(0.0, "default 2; --quick 0.5")
  baseline_ref: str = harness.opt(DEFAULT_BASELINE, "git ref of the baseline ('' skips it)")
  torch_variants: str = harness.opt("", f"comma-separated (default: {','.join(TORCH_VARIANTS)})")
  torch_threads: int = os.cpu_count() or 1
  worker_timeout: float = 900
  render_only: bool = harness.opt(False, "rewrite the .md from the .json in --out_dir")


def parse_args(argv=None) -> Opts:
  args = harness.parse(Opts, argv, __doc__)
  if args.quick:
    args.rounds = 1
  args.examples = args.examples or (65_536 if args.quick else 524_288)
  args.windows = args.windows or (2 if args.quick else 5)
  args.window_s = args.window_s or (1.0 if args.quick else 2.0)
  args.warmup_s = args.warmup_s or (0.5 if args.quick else 2.0)
  args.models = [m for m in args.models.split(",") if m]
  args.batches = [int(b) for b in args.batches.split(",") if b]
  default = QUICK_TORCH if args.quick else TORCH_VARIANTS
  args.torch_variants = [v for v in args.torch_variants.split(",") if v] or list(default)
  for m in args.models:
    if m not in MODELS:
      raise UsageError(f"--models: {m!r} has no shipped config here; allowed: {list(MODELS)}")
  for v in args.torch_variants:
    parts = v.removesuffix("-bf16").split("-", 2)
    ok = len(parts) == 3 and parts[0] in ("eager", "compile") and parts[1] in ("sparse", "dense")
    if not ok:
      form = "'{eager|compile}-{sparse|dense}-<optimizer>[-bf16]' (torch_reference.Variant)"
      raise UsageError(f"--torch_variants: {v!r} is not {form}")
  return args


def run_rounds(args, res: dict, trees: dict, log) -> dict:
  """Every round's measurements, in schedule order: runs[kind][point][system] = [results]."""

  runs: dict = {}
  systems = systems_of(args)
  log(f"user_path: {args.models} × batch {args.batches} × {systems}, {args.rounds} round(s); "
      f"load {res['load_before']}")  # fmt: skip
  for rnd in range(args.rounds):
    for item in schedule(args.models, args.batches, systems, rnd):
      kind, model, batch, system = item
      r = measure(item, args, trees)
      res["torch_version"] = r.get("torch", res.get("torch_version"))
      point = f"{model or 'pipeline'}@{batch}"
      runs.setdefault(kind, {}).setdefault(point, {}).setdefault(system, []).append(r)
      done = f"ERROR {harness.error_line(r['error'])}" if "error" in r else (
        f"{run_rate(r) / 1e3:8.1f} k ex/s  (first step {r['first_step_s']:.1f}s)")  # fmt: skip
      log(f"  round {rnd + 1} {kind:<8} {point:<14} {system:<34} {done}")
  return runs


def _error(line: str, code: int) -> int:
  print(f"user_path: error: {line}", file=sys.stderr)
  return code


def main(argv=None) -> int:
  try:
    args = parse_args(argv)
  except UsageError as e:
    return _error(str(e), 2)
  out_dir = Path(args.out_dir)
  if args.render_only:
    res = json.loads((out_dir / "user_path.json").read_text())
    harness.write_results(out_dir, "user_path", res, markdown(res))
    return 0
  log = functools.partial(print, flush=True)
  res = harness.Record("user_path", args)
  with contextlib.ExitStack() as stack:
    trees = {"new": ROOT}
    if args.baseline_ref == DEFAULT_BASELINE and not _has_commit(ROOT, args.baseline_ref):
      # A checkout without history (an archive, a shallow clone) lacks it: measure without it.
      log(f"user_path: baseline {args.baseline_ref} is not in this checkout (no git history?): "
          "measuring without it")  # fmt: skip
      res["baseline"] = {"ref": args.baseline_ref, "skipped": "commit not in the checkout"}
      args.baseline_ref = ""
    if args.baseline_ref:
      try:
        path, commit = stack.enter_context(baseline_tree(args.baseline_ref))
      except UsageError as e:
        return _error(str(e), 2)
      trees["baseline"] = path
      res["baseline"] = {"ref": args.baseline_ref, "commit": commit[:10]}
    prepare_ = {"kind": "prepare"}
    data = harness.run_worker(ME, prepare_, env=tree_env(ROOT), timeout=args.worker_timeout)
    res["data"] = data
    if "error" in data:
      return _error(f"the datasets cannot be opened: {harness.error_line(data['error'])}", 3)
    log(f"data: {data['train_rows']:,} train rows in {data['train_dir']} "
        f"({data['seconds']:.0f}s to open or generate)")  # fmt: skip
    res["runs"] = run_rounds(args, res, trees, log)
  res["summary"] = summarise(res["runs"])
  res["ratios"] = ratios(res["summary"])
  res["targets"] = targets(res["summary"], res["ratios"], args.models, args.batches)
  md = markdown(res.finish())
  res.write(md)
  log("\n" + md)
  log(f"wrote {out_dir}/user_path.{{json,md}} in {res['elapsed_s']:.0f}s")
  failed = failures(res["summary"])
  if failed:
    return _error(f"{len(failed)} measurement(s) failed (listed in user_path.md)", 3)
  return 0


if __name__ == "__main__":
  workers = {"jax_step": jax_step, "torch_e2e": torch_e2e, "torch_step": torch_step}
  if not harness.worker_main({**workers, "pipeline": pipeline, "prepare": prepare}):
    sys.exit(main())
