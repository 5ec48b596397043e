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
            (benchmarks/common.read_run), compilation left out,
            the final evaluation and checkpoint after it. PyTorch: the same rows in the same order,
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

import argparse
import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

ME = Path(__file__).resolve()
ROOT = common.ROOT
DEFAULT_BASELINE = "284dab9"  # the commit the targets are stated against (--baseline_ref)
MODELS = ("esmm", "esm2")
BATCHES = (1024, 4096)
TORCH_VARIANTS = (
  "eager-sparse-rowwise_adagrad",
  "compile-sparse-rowwise_adagrad",
  "compile-dense-rowwise_adagrad",
  "compile-dense-adam",
  "compile-sparse-rowwise_adagrad-bf16",  # bf16 autocast (torch_reference.Variant.bf16)
  "compile-dense-adam-bf16",
)
QUICK_TORCH = ("eager-sparse-rowwise_adagrad", "compile-dense-adam", "compile-dense-adam-bf16")


class UsageError(ValueError):
  """A bad argument; the message names it and the allowed values (exit 2)."""


# ---------------------------------------------------------------------------------------------
# Workers, each in its own process. A worker may run another checkout's esmjax (the baseline's):
# it uses only `common` and what both checkouts have.


def _close(it) -> None:
  getattr(it, "close", lambda: None)()


def _first_batches(cfg, train_ds, n: int) -> list[dict]:
  it = common.train_batches(cfg, train_ds)
  try:
    return [next(it) for _ in range(n)]
  finally:
    _close(it)


def _windows(spec, step, sync) -> dict:
  first, rates, n = common.timed_windows(
    step,
    sync,
    spec["batch"],
    warmup_s=spec["warmup_s"],
    windows=spec["windows"],
    window_s=spec["window_s"],
  )
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
  return {
    **out,
    "peak_rss_mb": common.peak_rss_mb(),
    "backend": jax.default_backend(),
    "final_loss": float(jax.device_get(box["m"]["loss"])),
  }


def _torch_trainer(spec):
  import torch
  import torch_reference as tr

  torch.set_num_threads(spec["threads"])
  dev = "cuda" if torch.cuda.is_available() else "cpu"
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
      run = tr.train_loop(
        trainer,
        batches,
        cfg.train.num_steps,
        cfg.train.batch_size,
        cfg.train.log_every,
        dev,
        writer,
      )
    finally:
      _close(batches)
      writer.close()
  losses = run["losses"]
  return {
    **{k: run[k] for k in ("ex_per_s", "first_step_s", "train_s", "steps")},
    "final_loss": losses[-1][1] if losses else float("nan"),
    "peak_rss_mb": common.peak_rss_mb(),
    "torch": torch.__version__,
    "device": dev,
  }


def torch_step(spec) -> dict:
  """The PyTorch train step alone on pre-made batches (already tensors on the device)."""
  torch, tr, dev, cfg, train_ds, trainer = _torch_trainer(spec)
  batches = [tr.to_torch(b, dev) for b in _first_batches(cfg, train_ds, spec["n_batches"])]
  box = {"loss": None}

  def step(i):
    box["loss"] = trainer.step(batches[i % len(batches)])

  sync = torch.cuda.synchronize if dev == "cuda" else lambda: float(box["loss"])
  out = _windows(spec, step, sync)
  return {
    **out,
    "peak_rss_mb": common.peak_rss_mb(),
    "final_loss": float(box["loss"]),
    "torch": torch.__version__,
  }


def prepare(spec) -> dict:
  """Opens the shipped configs' datasets (generated once into the shared cache if missing)."""
  del spec
  t = time.perf_counter()
  train_ds, eval_ds = common.datasets(common.shipped_config(ROOT, "esmm", 1024))
  return {
    "seconds": time.perf_counter() - t,
    "train_rows": train_ds.num_rows,
    "eval_rows": eval_ds.num_rows,
    "train_dir": str(train_ds.directory),
  }


def pipeline(spec) -> dict:
  """The input pipeline alone: the trainer's batch iterator drained as fast as it yields."""
  cfg = common.shipped_config(ROOT, "esmm", spec["batch"])
  train_ds, _ = common.datasets(cfg)
  it = common.train_batches(cfg, train_ds)
  try:
    out = _windows(spec, lambda i: next(it), lambda: None)
  finally:
    _close(it)
  return {**out, "peak_rss_mb": common.peak_rss_mb()}


# ---------------------------------------------------------------------------------------------
# The CLI end to end, and the checkouts measured.


def worker_pythonpath(tree: Path, inherited: str = "") -> str:
  """PYTHONPATH of a measurement of `tree`'s esmjax: the tree and benchmarks/ first, then every
  inherited entry (where the dependencies may come from, e.g. a `pip --target` folder) except this
  checkout and its benchmarks/, so that a baseline tree's esmjax is the one imported."""
  own = {os.path.realpath(p) for p in (ROOT, common.BENCH, tree)}
  rest = [p for p in inherited.split(os.pathsep) if p and os.path.realpath(p) not in own]
  return os.pathsep.join((str(tree), str(common.BENCH), *rest))


def tree_env(tree: Path, torch: bool = False) -> dict[str, str]:
  """The environment of a measurement of `tree`'s esmjax: the CLI's (common.worker_env, which
  inherits this process's), PYTHONPATH by worker_pythonpath; PyTorch waits passively in OpenMP
  (its fastest setting on a shared CPU, see compare_torch.py)."""
  extra = {"PYTHONPATH": worker_pythonpath(tree, os.environ.get("PYTHONPATH", ""))}
  if torch:
    extra["OMP_WAIT_POLICY"] = "PASSIVE"
  return common.worker_env(extra=extra)


def cli_e2e(tree: Path, model: str, batch: int, steps: int, timeout: float) -> dict:
  """`python -m esmjax.main --config=<tree>/configs/<model>.py` with only the batch size and the
  number of steps changed, esmjax from `tree`; its rate from the run's summary."""
  import reporting

  overrides = {"train.batch_size": batch, "train.num_steps": steps}
  with tempfile.TemporaryDirectory(prefix="esmjax-user-path-") as work:
    cmd = [
      sys.executable,
      "-m",
      "esmjax.main",
      f"--config={tree}/configs/{model}.py",
      f"--workdir={work}/run",
      *reporting.override_flags(overrides),
    ]
    t = time.perf_counter()
    try:
      p = subprocess.run(
        cmd,
        env=tree_env(tree),
        cwd=work,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
      )
    except subprocess.TimeoutExpired:
      return {"error": f"timed out after {timeout:.0f}s"}
    wall = time.perf_counter() - t
    if p.returncode != 0:
      return {"error": f"exit {p.returncode}: {(p.stderr or p.stdout)[-1500:]}", "wall_s": wall}
    run = common.read_run(Path(work) / "run")
  keep = ("ex_per_s", "first_step_s", "train_s", "steps", "summary_ex_per_s")
  return {
    **{k: run[k] for k in keep},
    "wall_s": wall,
    "final_loss": run["losses"][-1][1] if run["losses"] else float("nan"),
  }


@contextlib.contextmanager
def baseline_tree(ref: str, repo: Path | str = ROOT):
  """Yields (path, commit) of a temporary detached worktree of `repo` at `ref`; removes it after."""
  import reporting

  commit = reporting.git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
  if not ref or not commit:
    raise UsageError(
      f"--baseline_ref={ref!r} is not a commit of {repo} (a hash, tag or branch "
      "there; '' skips the baseline)"
    )
  tmp = Path(tempfile.mkdtemp(prefix="esmjax-baseline-"))
  path = tmp / "tree"
  p = subprocess.run(
    ["git", "-C", str(repo), "worktree", "add", "--detach", str(path), commit],
    capture_output=True,
    text=True,
    check=False,
  )
  if p.returncode:
    shutil.rmtree(tmp, ignore_errors=True)
    raise RuntimeError(f"git worktree add --detach {path} {commit} failed: {p.stderr.strip()}")
  try:
    yield path, commit
  finally:
    subprocess.run(
      ["git", "-C", str(repo), "worktree", "remove", "--force", str(path)],
      capture_output=True,
      check=False,
    )
    shutil.rmtree(tmp, ignore_errors=True)


def _has_commit(repo: Path | str, ref: str) -> bool:
  import reporting

  return bool(reporting.git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"))


# ---------------------------------------------------------------------------------------------
# Schedule.


def systems_of(args) -> list[str]:
  return [
    "new",
    *(["baseline"] if args.baseline_ref else []),
    *[f"torch-{v}" for v in args.torch_variants],
  ]


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
  spec = {
    "batch": batch,
    "warmup_s": args.warmup_s,
    "windows": args.windows,
    "window_s": args.window_s,
    "n_batches": args.n_batches,
    "model": model,
  }
  steps = max(2, args.examples // batch)
  run = functools.partial(common.run_worker, ME, timeout=args.worker_timeout)
  if kind == "pipeline":
    return run({"kind": "pipeline", **spec}, env=tree_env(ROOT))
  if system in trees:  # esmjax, this checkout or the baseline's
    if kind == "e2e":
      return cli_e2e(trees[system], model, batch, steps, args.worker_timeout)
    tree = trees[system]
    return run({"kind": "jax_step", "tree": str(tree), **spec}, env=tree_env(tree))
  return run(
    {
      "kind": f"torch_{kind}",
      "variant": system[len("torch-") :],
      "steps": steps,
      "threads": args.torch_threads,
      **spec,
    },
    env=tree_env(ROOT, torch=True),
  )


# ---------------------------------------------------------------------------------------------
# Main.


def parse_args(argv=None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument(
    "--quick", action="store_true", help="smoke test: 1 round, short runs, 2 PyTorch variants"
  )
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {list(MODELS)}")
  ap.add_argument("--batches", default=",".join(map(str, BATCHES)))
  ap.add_argument(
    "--examples",
    type=int,
    default=0,
    help="examples per end-to-end run (default 524288; --quick 65536)",
  )
  ap.add_argument(
    "--n_batches", type=int, default=16, help="pre-made batches the step alone cycles"
  )
  ap.add_argument(
    "--windows",
    type=int,
    default=0,
    help="timed windows per step / pipeline run (default 5; --quick 2)",
  )
  ap.add_argument(
    "--window_s", type=float, default=0, help="seconds per window (default 2; --quick 1)"
  )
  ap.add_argument("--warmup_s", type=float, default=0, help="default 2; --quick 0.5")
  ap.add_argument(
    "--baseline_ref", default=DEFAULT_BASELINE, help="git ref of the baseline ('' skips it)"
  )
  ap.add_argument(
    "--torch_variants",
    default="",
    help="comma-separated (default: " + ",".join(TORCH_VARIANTS) + ")",
  )
  ap.add_argument("--torch_threads", type=int, default=os.cpu_count() or 1)
  ap.add_argument("--worker_timeout", type=float, default=900)
  ap.add_argument("--out_dir", default=str(common.RESULTS))
  ap.add_argument(
    "--render_only", action="store_true", help="rewrite the .md from the .json in --out_dir"
  )
  args = ap.parse_args(argv)
  if args.quick:
    args.rounds = 1
  args.examples = args.examples or (65_536 if args.quick else 524_288)
  args.windows = args.windows or (2 if args.quick else 5)
  args.window_s = args.window_s or (1.0 if args.quick else 2.0)
  args.warmup_s = args.warmup_s or (0.5 if args.quick else 2.0)
  args.models = [m for m in args.models.split(",") if m]
  args.batches = [int(b) for b in args.batches.split(",") if b]
  args.torch_variants = [v for v in args.torch_variants.split(",") if v] or list(
    QUICK_TORCH if args.quick else TORCH_VARIANTS
  )
  for m in args.models:
    if m not in MODELS:
      raise UsageError(f"--models: {m!r} has no shipped config here; allowed: {list(MODELS)}")
  for v in args.torch_variants:
    parts = v.removesuffix("-bf16").split("-", 2)
    if (
      len(parts) != 3 or parts[0] not in ("eager", "compile") or parts[1] not in ("sparse", "dense")
    ):
      raise UsageError(
        f"--torch_variants: {v!r} is not "
        "'{eager|compile}-{sparse|dense}-<optimizer>[-bf16]' (torch_reference.Variant)"
      )
  return args


def run_rounds(args, res: dict, trees: dict, log) -> dict:
  """Every round's measurements, in schedule order: runs[kind][point][system] = [results]."""
  import user_path_report as report

  runs: dict = {}
  systems = systems_of(args)
  log(
    f"user_path: {args.models} × batch {args.batches} × {systems}, {args.rounds} round(s); "
    f"load {res['load_before']}"
  )
  for rnd in range(args.rounds):
    for item in schedule(args.models, args.batches, systems, rnd):
      kind, model, batch, system = item
      r = measure(item, args, trees)
      res["torch_version"] = r.get("torch", res.get("torch_version"))
      point = f"{model or 'pipeline'}@{batch}"
      runs.setdefault(kind, {}).setdefault(point, {}).setdefault(system, []).append(r)
      done = (
        f"ERROR {report.error_line(r['error'])}"
        if "error" in r
        else f"{report.run_rate(r) / 1e3:8.1f} k ex/s  (first step {r['first_step_s']:.1f}s)"
      )
      log(f"  round {rnd + 1} {kind:<8} {point:<14} {system:<34} {done}")
  return runs


def main(argv=None) -> int:
  import reporting
  import user_path_report as report

  try:
    args = parse_args(argv)
  except UsageError as e:
    print(f"user_path: error: {e}", file=sys.stderr)
    return 2
  out_dir = Path(args.out_dir)
  if args.render_only:
    res = json.loads((out_dir / "user_path.json").read_text())
    reporting.write_results(out_dir, "user_path", res, report.markdown(res))
    return 0
  log = functools.partial(print, flush=True)
  t0 = time.time()
  res = {**reporting.provenance(), "args": vars(args)}
  with contextlib.ExitStack() as stack:
    trees = {"new": ROOT}
    if args.baseline_ref == DEFAULT_BASELINE and not _has_commit(ROOT, args.baseline_ref):
      # A checkout without history (an archive, a shallow clone) lacks it: measure without it.
      log(
        f"user_path: baseline {args.baseline_ref} is not in this checkout (no git history?): "
        "measuring without it"
      )
      res["baseline"] = {"ref": args.baseline_ref, "skipped": "commit not in the checkout"}
      args.baseline_ref = ""
    if args.baseline_ref:
      try:
        path, commit = stack.enter_context(baseline_tree(args.baseline_ref))
      except UsageError as e:
        print(f"user_path: error: {e}", file=sys.stderr)
        return 2
      trees["baseline"] = path
      res["baseline"] = {"ref": args.baseline_ref, "commit": commit[:10]}
    data = res["data"] = common.run_worker(
      ME, {"kind": "prepare"}, env=tree_env(ROOT), timeout=args.worker_timeout
    )
    if "error" in data:
      print(
        f"user_path: error: the datasets cannot be opened: {report.error_line(data['error'])}",
        file=sys.stderr,
      )
      return 3
    log(
      f"data: {data['train_rows']:,} train rows in {data['train_dir']} "
      f"({data['seconds']:.0f}s to open or generate)"
    )
    res["runs"] = run_rounds(args, res, trees, log)
  res["summary"] = report.summarise(res["runs"])
  res["ratios"] = report.ratios(res["summary"])
  res["targets"] = report.targets(res["summary"], res["ratios"], args.models, args.batches)
  reporting.finish(res, t0)
  md = report.markdown(res)
  reporting.write_results(out_dir, "user_path", res, md)
  log("\n" + md)
  log(f"wrote {out_dir}/user_path.{{json,md}} in {res['elapsed_s']:.0f}s")
  failed = report.failures(res["summary"])
  if failed:
    print(
      f"user_path: error: {len(failed)} measurement(s) failed (listed in user_path.md)",
      file=sys.stderr,
    )
    return 3
  return 0


if __name__ == "__main__":
  if not common.worker_main(
    {
      "jax_step": jax_step,
      "torch_e2e": torch_e2e,
      "torch_step": torch_step,
      "pipeline": pipeline,
      "prepare": prepare,
    }
  ):
    sys.exit(main())
