r"""esmjax against the same model in PyTorch: speed and quality, side by side, in one run.

    python benchmarks/compare_torch.py            # full: over an hour on the shared 2-core CPU
    python benchmarks/compare_torch.py --quick    # a few minutes: 3 variants, short windows, 1 seed

Needs the bench extra (`pip install -e '.[bench]'`: torch==2.13.0, CPU wheel here).

Speed (examples/s, peak memory): ESMM at the paper sizes (23 single-valued fields × dim 18, towers
200-80-1, batch 4096) on pre-generated Zipf batches (benchmarks/common.py), identical for both
frameworks, at 1e5 and 1e7 table rows. Variants:
  jax-<opt>        esmjax's step (trainer.Run: jitted, donated) with the row-wise optimizer <opt>
  torch-<variant>  benchmarks/torch_reference.py: eager or torch.compile; sparse (nn.Embedding /
                   EmbeddingBag sparse=True) or dense gradients; rowwise_adagrad (custom, = esmjax's
                   default), adagrad (torch.optim.Adagrad), lazy_adam (torch.optim.SparseAdam) or,
                   with dense gradients, adam (torch.optim.Adam on the tables too: what a PyTorch
                   user writes first for a small table). compile-dense-* compiles lookups, towers
                   and loss in one graph; compile-dense-rowwise_adagrad / -adagrad take esmjax's
                   steps exactly, compile-dense-adam is dense Adam (tests/test_torch_reference.py).
The best PyTorch variant at each table size is the comparator.
Every (variant, table size) runs in a fresh subprocess: the first step (compile) is timed apart,
then a warm-up, then timed windows; the reported rate is the median over all windows of all
rounds. Rounds and variants are interleaved (jax, torch, jax, torch, ...) so the load of this shared
machine falls on both alike. Peak memory is the worker's peak RSS (it includes the framework's own
~0.3–0.5 GB; the model's share is listed apart); on an accelerator, device peak bytes too.

Quality (AUCs): ESMM and ESM2 on the default synthetic data
(esmjax.config.defaults.default_config()),
batch 4096, the same grain pipeline and batch order for both (seeded by --seeds), --epochs each.
esmjax trains through its own loop (trainer.train_and_evaluate); PyTorch reads the same batches
through the trainer's iterator; both are scored by esmjax.evaluation (predict_dataset,
compute_metrics) on the whole eval split. PyTorch uses the optimizer that equals esmjax's default
(row-wise Adagrad, sparse, eager). Different seeds give
the run-to-run noise against which the JAX–PyTorch difference is judged.

Writes benchmarks/results/compare_torch.{json,md,png} (or --out_dir).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import harness

ME = Path(__file__).resolve()  # every worker runs `python compare_torch.py --worker JSON`

JAX_VARIANTS = ("rowwise_adagrad", "adagrad", "lazy_adam", "rowwise_adagrad-bf16")
TORCH_VARIANTS = (
  *("eager-sparse-rowwise_adagrad", "eager-sparse-adagrad", "eager-sparse-lazy_adam"),
  *("eager-dense-adagrad", "compile-sparse-rowwise_adagrad", "compile-dense-rowwise_adagrad"),
  *("compile-dense-adagrad", "compile-dense-adam"),
  # bf16 autocast (torch_reference.Variant.bf16): what a PyTorch user turns on for speed.
  *("eager-sparse-rowwise_adagrad-bf16", "compile-sparse-rowwise_adagrad-bf16"),
  "compile-dense-adam-bf16",
)
QUICK_JAX = ("rowwise_adagrad", "rowwise_adagrad-bf16")
QUICK_TORCH = ("eager-sparse-rowwise_adagrad", "compile-dense-adam", "compile-dense-adam-bf16")
QUALITY_KEYS = ("ctr/auc", "cvr/auc", "ctcvr/auc", "ctavr/auc", "cvr/entire_space_auc")
QUALITY_KEYS += ("ctr/gauc", "ctcvr/logloss")


@dataclasses.dataclass
class Opts(harness.Timed):
  quick: bool = harness.opt(
    False,
    "a few minutes: 1 round, 1e5/1e6 rows, JAX row-wise Adagrad, PyTorch "
    "eager-sparse-rowwise_adagrad and compile-dense-adam, ESMM 20 steps, 1 seed",
  )
  rows: str = harness.opt("1e5,1e7", "table sizes of the speed comparison")
  batch: int = 4096
  rounds: int = 2
  torch_threads: int = harness.usable_cores()
  torch_variants: str = harness.opt("", "comma-separated torch variants (default: all)")
  jax_variants: str = harness.opt(
    "", "comma-separated row-wise optimizers for JAX, '-bf16' for bf16 towers (default: all)"
  )
  models: str = "esmm,esm2"
  seeds: str = "0,1"
  epochs: float = 1.0
  quality_steps: int = harness.opt(0, "train steps instead of --epochs (0: epochs)")
  max_eval_rows: int = -1
  skip_speed: bool = False
  skip_quality: bool = False
  skip_roofline: bool = False
  worker_timeout: float = 900
  malloc: str = harness.opt("huge", choices=tuple(harness.MALLOC))
  render_only: bool = harness.opt(False, "rewrite the .md and .png from the .json in --out_dir")


def worker_env(fw: str, malloc: str) -> dict[str, str]:
  """One device; the run's allocator for both frameworks; PyTorch waiting passively in OpenMP."""
  extra = harness.malloc_env(malloc) | (harness.TORCH_ENV if fw == "torch" else {})
  return harness.worker_env(devices=1, extra=extra)


# ---------------------------------------------------------------------------------------------
# Workers, each in its own process (the JAX step worker is common.jax_throughput).


def torch_throughput(spec) -> dict:
  rss0 = harness.rss_mb()
  torch, dev, sync = common.torch_setup(spec["threads"])
  import torch_reference as tr

  rss_import = harness.rss_mb()
  variant = tr.Variant.parse(spec["variant"])
  schema = common.paper_schema(spec["rows"])
  cfg = common.bench_config(
    spec.get("model", "esmm"), spec["batch"], table_optimizer=variant.config_optimizer
  )
  torch.manual_seed(spec.get("seed", 0))
  t = time.perf_counter()
  model = tr.TorchMultiTask.from_config(cfg, schema, sparse=variant.sparse).to(dev)
  trainer = tr.Trainer(model, cfg, variant)
  init_s = time.perf_counter() - t
  host = common.zipf_batches(
    schema, spec["batch"], spec.get("n_batches", 8), seed=spec.get("seed", 0),
    a=spec.get("zipf_a", common.ZIPF_A),
  )  # fmt: skip
  batches = [tr.to_torch(b, dev) for b in host]
  box = {"loss": None}

  def step(i):
    box["loss"] = trainer.step(batches[i % len(batches)])

  cpu = []
  first, rates, steps_run = harness.spec_windows(spec, step, sync, cpu_rates=cpu)
  return dict(
    framework="torch", ex_per_s=rates, ex_per_cpu_s=cpu, first_step_s=first, init_s=init_s,
    steps=steps_run, final_loss=float(box["loss"]), peak_rss_mb=harness.peak_rss_mb(),
    rss_before_import_mb=rss0, rss_after_import_mb=rss_import,
    state_mb=tr.state_bytes(trainer) / 2**20,
    device_peak_mb=torch.cuda.max_memory_allocated() / 2**20 if dev == "cuda" else None,
    device=dev, threads=torch.get_num_threads(), torch=torch.__version__,
    flops_per_example=common.model_flops(spec.get("model", "esmm"), common.PAPER_FIELDS),
  )  # fmt: skip


def quality(spec) -> dict:
  """Trains one framework on the default synthetic data and scores it with esmjax's own code: JAX
  through esmjax's training loop (trainer.train_and_evaluate), PyTorch on the same batches in the
  same order (common.train_batches) through torch_reference.train_loop, and both evaluated by
  esmjax.evaluation (predict_dataset, compute_metrics)."""
  import tempfile

  from esmjax.core import sharding as sh
  from esmjax.evaluation import scoring as evaluation
  from esmjax.training import trainer as trainer_lib

  cfg = common.quality_config(
    spec["model"], spec["batch"], spec["seed"], spec.get("max_eval_rows", -1)
  )
  train_ds, eval_ds = common.datasets(cfg)
  bs = cfg.train.batch_size
  cfg.train.num_steps = spec["steps"] or int(math.ceil(spec["epochs"] * train_ds.num_rows / bs))
  cfg.train.log_every = spec.get("window_steps", 25)
  t0 = time.perf_counter()
  if spec["framework"] == "jax":
    with tempfile.TemporaryDirectory(prefix="esmjax-quality-") as work:
      trainer_lib.train_and_evaluate(cfg, work)
      run = common.read_run(work)
    metrics = run["metrics"]
    eval_s = time.perf_counter() - t0 - run["train_s"]
  else:
    torch, dev, _ = common.torch_setup(spec["threads"])
    import torch_reference as tr

    torch.manual_seed(cfg.train.seed)
    model = tr.TorchMultiTask.from_config(cfg, train_ds.schema, sparse=True).to(dev)
    tt = tr.Trainer(model, cfg, tr.Variant.parse(spec["variant"]))
    batches = common.train_batches(cfg, train_ds)
    try:
      run = tr.train_loop(tt, batches, cfg.train.num_steps, bs, cfg.train.log_every, dev)
    finally:
      getattr(batches, "close", lambda: None)()
    t = time.perf_counter()
    cols = evaluation.predict_dataset(
      tr.predict_fn(model, dev), None, eval_ds, cfg.train.eval_batch_size, sh.make_mesh(1),
      cfg.train.max_eval_rows,
    )  # fmt: skip
    metrics = evaluation.compute_metrics(cols, eval_ds.schema)
    eval_s = time.perf_counter() - t
  losses = [loss for _, loss in run["losses"]]
  return dict(
    framework=spec["framework"], model=spec["model"], seed=spec["seed"], steps=run["steps"],
    examples=run["steps"] * bs, ex_per_s=run["windows"], first_step_s=run["first_step_s"],
    train_s=run["train_s"], eval_s=eval_s, final_loss=losses[-1] if losses else float("nan"),
    loss_curve=losses, peak_rss_mb=harness.peak_rss_mb(),
    metrics={k: float(v) for k, v in metrics.items() if k in QUALITY_KEYS},
  )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The parent: the speed runs, the quality runs, their summaries.


def throughput_section(args, log) -> dict:
  jv = QUICK_JAX if args.quick else JAX_VARIANTS
  tv = QUICK_TORCH if args.quick else TORCH_VARIANTS
  if args.torch_variants:
    tv = tuple(args.torch_variants.split(","))
  if args.jax_variants:
    jv = tuple(args.jax_variants.split(","))
  runs = harness.interleave([("jax", v) for v in jv], [("torch", v) for v in tv])
  timing = dict(batch=args.batch, n_batches=8, zipf_a=common.ZIPF_A, **harness.timing_spec(args))
  out: dict[str, dict] = {}
  for rnd in range(args.rounds):
    for rows in args.rows:
      for fw, v in runs if rnd % 2 == 0 else runs[::-1]:  # alternate who goes first
        name = f"{fw}-{v}"
        if fw == "jax":
          # '<optimizer>-bf16': model.dtype=bfloat16 (bf16 towers, f32 tables).
          opt = v.removesuffix("-bf16")
          spec = {"kind": "jax", "rows": rows, "optimizer": opt, **timing}
          if v != opt:
            spec["model_dtype"] = "bfloat16"
        else:
          spec = {"kind": "torch", "rows": rows, "variant": v, "threads": args.torch_threads}
          spec.update(timing)
        r = harness.run_worker(
          ME, spec, env=worker_env(fw, args.malloc), timeout=args.worker_timeout
        )
        slot = out.setdefault(str(rows), {}).setdefault(name, {"framework": fw, "variant": v})
        slot.setdefault("runs", []).append(r)
        rate = harness.spread(r.get("ex_per_s", []))["median"]
        said = f"ERROR {r['error'][:300]}" if "error" in r else (
          f"{rate / 1e3:8.1f} k ex/s  (first step {r['first_step_s']:.1f}s, peak RSS "
          f"{r['peak_rss_mb']:.0f} MB)"
        )  # fmt: skip
        log(f"  round {rnd + 1} rows {rows:.0e} {name:<36} {said}")
  for variants in out.values():
    for slot in variants.values():
      ok = [r for r in slot["runs"] if "error" not in r]
      slot["windows"] = [x for r in ok for x in r["ex_per_s"]]
      slot.update(harness.pool(slot["runs"], ("ex_per_s", "ex_per_cpu_s")))
      slot["run_medians"] = [harness.spread(r["ex_per_s"])["median"] for r in ok]
      slot["rss_after_import_mb"] = min([r["rss_after_import_mb"] for r in ok] or [float("nan")])
      slot["device_peak_mb"] = max([r.get("device_peak_mb") or 0 for r in ok] or [0]) or None
      slot["flops_per_example"] = ok[0]["flops_per_example"] if ok else float("nan")
      if ok and slot["framework"] == "jax":
        slot["engine"] = ok[0].get("engine")
  return out


def default_variant(bf16_flags: list[str]) -> str:
  """The JAX variant `python -m esmjax.main` trains on a CPU with these bf16 flags: row-wise
  Adagrad, with bf16 towers where `model.dtype=auto` picks them (a bf16 matmul unit)."""
  return "jax-rowwise_adagrad" + ("-bf16" if bf16_flags else "")


def ratios(tp: dict, bf16_flags: list[str]) -> dict:
  """Per table size: JAX default / best PyTorch, best JAX / best PyTorch, and per optimizer."""
  out = {}
  want = default_variant(bf16_flags)
  for rows, variants in tp.items():
    med = {n: s["ex_per_s"]["median"] for n, s in variants.items() if s["ex_per_s"]["n"]}
    noise = {n: s["ex_per_s"]["rel_half_range"] for n, s in variants.items() if s["ex_per_s"]["n"]}
    jax_ = {n: v for n, v in med.items() if n.startswith("jax-")}
    tor = {n: v for n, v in med.items() if n.startswith("torch-")}
    if not jax_ or not tor:
      continue
    best_t = max(tor, key=tor.get)
    best_j = max(jax_, key=jax_.get)
    default = want if want in jax_ else best_j
    r = dict(
      best_torch=best_t, best_torch_ex_per_s=tor[best_t], jax_default=default,
      jax_default_ex_per_s=jax_[default], default_vs_best_torch=jax_[default] / tor[best_t],
      best_jax=best_j, best_jax_vs_best_torch=jax_[best_j] / tor[best_t],
      ratio_noise=noise.get(default, 0) + noise.get(best_t, 0), matched={},
    )  # fmt: skip
    for opt in JAX_VARIANTS:
      j = jax_.get(f"jax-{opt}")
      ts = {n: v for n, v in tor.items() if n.endswith(f"-{opt}")}
      if j and ts:
        bt = max(ts, key=ts.get)
        r["matched"][opt] = {"jax": j, "best_torch": bt, "torch": ts[bt], "ratio": j / ts[bt]}
    cpu = {n: s["ex_per_cpu_s"]["median"] for n, s in variants.items() if s["ex_per_cpu_s"]["n"]}
    ct = {n: v for n, v in cpu.items() if n.startswith("torch-")}
    if default in cpu and ct:
      bc = max(ct, key=ct.get)
      r["cpu_time"] = {"best_torch": bc, "default_vs_best_torch": cpu[default] / ct[bc]}
    out[rows] = r
  return out


def quality_section(args, log) -> dict:
  res: dict[str, dict] = {}
  for model in args.models:
    for seed in args.seeds:
      order = [("jax", None), ("torch", "eager-sparse-rowwise_adagrad")]
      for fw, variant in order if seed % 2 == 0 else order[::-1]:
        spec = dict(
          kind="quality", framework=fw, variant=variant, model=model, seed=seed, batch=args.batch,
          epochs=args.epochs, steps=args.quality_steps, max_eval_rows=args.max_eval_rows,
          threads=args.torch_threads,
        )  # fmt: skip
        r = harness.run_worker(
          ME, spec, env=worker_env(fw, args.malloc), timeout=args.worker_timeout
        )
        res.setdefault(model, {}).setdefault(fw, []).append(r)
        if "error" in r:
          log(f"  {model} seed {seed} {fw:<5} ERROR {r['error'][:300]}")
        else:
          m = r["metrics"]
          rate = harness.spread(r["ex_per_s"])["median"] / 1e3
          aucs = "  ".join(f"{k} {m[k]:.4f}" for k in QUALITY_KEYS if k in m)
          log(f"  {model} seed {seed} {fw:<5} {rate:6.1f} k ex/s  {aucs}")
  summary = {}
  for model, fws in res.items():
    s = {}
    for fw, runs in fws.items():
      ok = [r for r in runs if "error" not in r]
      keys = [k for k in QUALITY_KEYS if ok and k in ok[0]["metrics"]]
      s[fw] = {k: harness.spread([r["metrics"][k] for r in ok]) for k in keys}
      windows = [x for r in ok for x in r["ex_per_s"][1:] or r["ex_per_s"]]
      s[fw]["ex_per_s"] = harness.spread(windows)
      s[fw]["peak_rss_mb"] = max([r["peak_rss_mb"] for r in ok] or [float("nan")])
      s[fw]["per_seed"] = {r["seed"]: r["metrics"] for r in ok}
      s[fw]["errors"] = [r["error"] for r in runs if "error" in r]
    # Noise: the largest seed-to-seed spread of either framework; difference: of the seed means.
    if "jax" in s and "torch" in s:
      diff = {}
      for k in QUALITY_KEYS:
        if k in s["jax"] and k in s["torch"]:
          pj, pt, sj, st = s["jax"]["per_seed"], s["torch"]["per_seed"], s["jax"][k], s["torch"][k]
          mj = sum(v[k] for v in pj.values()) / len(pj)
          mt_ = sum(v[k] for v in pt.values()) / len(pt)
          noise = max(sj["max"] - sj["min"], st["max"] - st["min"])
          diff[k] = dict(
            jax_mean=mj, torch_mean=mt_, diff=mj - mt_, seed_range=noise,
            within_noise=abs(mj - mt_) <= max(noise, 1e-12),
          )  # fmt: skip
      s["diff"] = diff
    summary[model] = s
  return {"runs": res, "summary": summary}


# ---------------------------------------------------------------------------------------------
# The report: Markdown and figure.


SPEED_HEADER = (
  "variant|ex/s (median)|window range|noise|windows|ex per CPU-s|first step s|peak RSS MB|"
  "over import MB|errors"
).split("|")
QUALITY_HEADER = (
  "metric|JAX (seed mean)|PyTorch (seed mean)|JAX − PyTorch|seed-to-seed range (max of the two)|"
  "within noise"
).split("|")
HOW_TO_READ = """\
- Rates are medians of timed windows (after the first step and a warm-up), pooled over rounds in \
which JAX and PyTorch variants alternate; the window range and ± half-range show the noise of this \
shared machine. Ratios are of medians measured in the same invocation.
- 'ex per CPU-s' divides by the CPU time of the worker process (all threads) instead of wall time: \
on this oversubscribed machine it says what a step costs in work, independent of the share of the \
cores the scheduler gave each process.
- Peak RSS is per worker process and includes the framework runtime; 'over import' subtracts the \
RSS right after importing it (the model, optimizer state, batches and compiled code).
- PyTorch runs with torch.set_num_threads(--torch_threads) and OMP_WAIT_POLICY=PASSIVE: on this \
oversubscribed machine OpenMP spin-waiting made 2 threads up to 5× slower than 1 (measured); \
passive waiting was PyTorch's fastest setting. JAX runs with its defaults.
- Allocator: {malloc}.
- Quality runs feed both frameworks the same batches in the same order; a difference of seed means \
within the seed-to-seed range is within run-to-run noise.
- Regenerate: `{command}`."""


def _speed_rows(variants: dict) -> list[list]:
  rows = []
  for name, s in sorted(
    variants.items(), key=lambda kv: -kv[1]["ex_per_s"]["median"] if kv[1]["ex_per_s"]["n"] else 0
  ):
    e, c = s["ex_per_s"], s.get("ex_per_cpu_s") or {"median": float("nan")}
    rng = f"{e['min'] / 1e3:,.1f}–{e['max'] / 1e3:,.1f} k"
    noise = f"±{100 * e['rel_half_range']:.0f} %" if e["n"] else "–"
    over = s["peak_rss_mb"] - s["rss_after_import_mb"]
    errors = "; ".join(x[:80] for x in s["errors"]) or ""
    rows.append([name, e["median"], rng, noise, e["n"], c["median"], s["first_step_s"]])
    rows[-1] += [s["peak_rss_mb"], over, errors]
  return rows


def _ratio_line(r: dict) -> str:
  matched = ", ".join(
    f"{k} {v['ratio']:.2f}× (vs {v['best_torch']})" for k, v in r["matched"].items()
  )
  cpu = r.get("cpu_time")
  return (
    f"**JAX default ({r['jax_default']}, what `model.dtype=auto` trains here) / best PyTorch "
    f"({r['best_torch']}): "
    f"{r['default_vs_best_torch']:.2f}×** (the two variants' window half-ranges add up to "
    f"±{100 * r['ratio_noise']:.0f} %); best JAX ({r['best_jax']}) / best PyTorch: "
    f"{r['best_jax_vs_best_torch']:.2f}×. Same optimizer: {matched}."
    + (
      " Per CPU-second (work per example, whatever share of the cores each got): JAX default / "
      f"best PyTorch ({cpu['best_torch']}) {cpu['default_vs_best_torch']:.2f}×."
      if cpu
      else ""
    )
  )


def markdown(res: dict) -> str:
  a, m, p = res["args"], res["machine"], res["probe"]
  L = [
    f"# esmjax vs PyTorch ({res['when']})",
    "",
    f"Machine: {m['cpu']}, {m['cores']} usable cores, backend {p.get('backend')}; jax "
    f"{p.get('jax')}, torch {p.get('torch')} ({a['torch_threads']} threads). Load average "
    f"before/after: {res['load_before']} / {res['load_after']} (the machine is shared: other jobs "
    "ran during the measurement).",
    "",
    harness.code_line(res) + f"Command: `{res['command']}`",
    "",
  ]
  for k, when in (res.get("kept_from_previous") or {}).items():
    L += [
      f"The {'speed' if k == 'throughput' else k} section is kept from the run of {when} "
      f"(this run skipped it; its load averages are in that run's JSON).",
      "",
    ]
  tp, rt = res.get("throughput"), res.get("ratios", {})
  if tp:
    L += [
      f"## Speed: ESMM, 23 fields × 18, towers 200-80-1, batch {a['batch']}, "
      f"Zipf({common.ZIPF_A}) ids, pre-generated batches",
      "",
    ]
    for rows, variants in tp.items():
      L += [f"### {float(rows):.0e} table rows", ""]
      L += [harness.markdown_table(SPEED_HEADER, _speed_rows(variants)), ""]
      if rows in rt:
        L += [_ratio_line(rt[rows]), ""]
    if res.get("roofline"):
      L += [res["roofline"]["line"], ""]
  q = res.get("quality")
  if q:
    steps = f"{a['quality_steps']} steps" if a["quality_steps"] else f"{a['epochs']} epoch(s)"
    L += [
      f"## Quality: default synthetic data, batch {a['batch']}, {steps}, seeds {a['seeds']}, "
      "same batches for both, evaluated by esmjax.evaluation.scoring.compute_metrics",
      "",
    ]
    for model, s in q["summary"].items():
      if "diff" not in s:
        continue
      rws = [
        [k, f"{d['jax_mean']:.4f}", f"{d['torch_mean']:.4f}", f"{d['diff']:+.4f}"]
        + [f"{d['seed_range']:.4f}", "yes" if d["within_noise"] else "no"]
        for k, d in s["diff"].items()
      ]
      L += [f"### {model}", "", harness.markdown_table(QUALITY_HEADER, rws), ""]
      j, t = s["jax"], s["torch"]
      L += [
        f"Training examples/s incl. the input pipeline (median of {j['ex_per_s']['n']}/"
        f"{t['ex_per_s']['n']} windows): JAX {harness.fmt_rate(j['ex_per_s']['median'])}, "
        "PyTorch (eager-sparse-rowwise_adagrad) "
        f"{harness.fmt_rate(t['ex_per_s']['median'])}; peak RSS JAX {j['peak_rss_mb']:,.0f} MB, "
        f"PyTorch {t['peak_rss_mb']:,.0f} MB.",
        "",
      ]
  malloc = harness.MALLOC[a.get("malloc", "os")]
  L += ["## How to read this", "", HOW_TO_READ.format(malloc=malloc, command=res["command"])]
  return "\n".join(L) + "\n"


def plot(res: dict, path: Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  tp = res.get("throughput") or {}
  q = (res.get("quality") or {}).get("summary", {})
  n = len(tp) + (1 if q else 0)
  if not n:
    return
  ratios = [1.0] * len(tp) + ([1.8] if q else [])
  fig, axes = plt.subplots(
    1, n, figsize=(4.2 * sum(ratios), 3.8), dpi=80, gridspec_kw={"width_ratios": ratios}
  )
  axes = [axes] if n == 1 else list(axes)
  for ax, (rows, variants) in zip(axes, tp.items(), strict=False):  # + the quality panel
    items = [(k, s) for k, s in variants.items() if s["ex_per_s"]["n"]]
    items.sort(key=lambda kv: -kv[1]["ex_per_s"]["median"])
    names = [k.replace("torch-", "pt-").replace("rowwise_adagrad", "rw_adagrad") for k, _ in items]
    med = [s["ex_per_s"]["median"] / 1e3 for _, s in items]
    lo = [m - s["ex_per_s"]["min"] / 1e3 for m, (_, s) in zip(med, items, strict=True)]
    hi = [s["ex_per_s"]["max"] / 1e3 - m for m, (_, s) in zip(med, items, strict=True)]
    colors = ["tab:blue" if k.startswith("jax") else "tab:orange" for k, _ in items]
    ax.barh(names, med, xerr=[lo, hi], color=colors)
    ax.invert_yaxis()
    ax.set_xlabel("k examples/s (median, window range)")
    ax.set_title(f"ESMM train step, {float(rows):.0e} rows", fontsize=9)
    ax.tick_params(labelsize=7)
  if q:
    ax = axes[-1]
    labels, xs = [], 0
    for model, s in q.items():
      for k in s.get("diff", {}):
        if not (k.endswith("/auc") or k.endswith("entire_space_auc")):
          continue
        for j, fw in enumerate(("jax", "torch")):
          sp = s[fw][k]
          ax.errorbar(
            xs + 0.15 * (j * 2 - 1), sp["median"],
            yerr=[[sp["median"] - sp["min"]], [sp["max"] - sp["median"]]], fmt="o",
            color="tab:blue" if fw == "jax" else "tab:orange", label=fw if not labels else None,
          )  # fmt: skip
        name = k.replace("/entire_space_auc", " entire-space").replace("/auc", "")
        labels.append(f"{model} {name}")
        xs += 1
    ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=35, ha="right")
    ax.set_ylabel("AUC (seeds: median, range)")
    ax.set_title("Quality, same data and metric code", fontsize=9)
    ax.legend(fontsize=7)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path)
  plt.close(fig)


def _keep_previous(res: dict, path: Path, args) -> None:
  """A --skip_speed / --skip_quality run keeps the other section of the previous results file,
  marked with when it was measured (so one can be refreshed without redoing the other)."""
  if not path.exists() or args.quick:
    return
  prev = json.loads(path.read_text())
  for key, skipped in (("quality", args.skip_quality), ("throughput", args.skip_speed)):
    if skipped and key in prev:
      res[key] = prev[key]
      when = prev.get("section_when", {}).get(key, prev.get("when"))
      res.setdefault("kept_from_previous", {})[key] = when
      if key == "throughput":
        res["ratios"], res["roofline"] = prev.get("ratios"), prev.get("roofline")
  kept = res.get("kept_from_previous", {})
  res["section_when"] = {k: kept.get(k, res["when"]) for k in ("quality", "throughput") if k in res}


def main(argv=None):
  args = harness.parse(Opts, argv, __doc__)
  if args.render_only:
    res = json.loads((Path(args.out_dir) / "compare_torch.json").read_text())
    if res.get("throughput"):
      res["ratios"] = ratios(res["throughput"], res.get("machine", {}).get("cpu_bf16_flags", []))
    figures = {"": lambda p: plot(res, p)}
    harness.write_results(args.out_dir, "compare_torch", res, markdown(res), figures=figures)
    return
  if args.quick:
    args.rounds, args.windows, args.window_s, args.warmup_s = 1, 2, 1.0, 0.5
    args.rows = "1e5,1e6" if args.rows == "1e5,1e7" else args.rows
    args.models, args.seeds, args.max_eval_rows = "esmm", "0", 16_384
    args.quality_steps = args.quality_steps or 20
  args.rows = [int(float(x)) for x in args.rows.split(",") if x]
  args.models = [m for m in args.models.split(",") if m]
  args.seeds = [int(s) for s in args.seeds.split(",") if s]
  out_dir = Path(args.out_dir)
  log = lambda s: print(s, flush=True)
  probe = harness.run_worker(ME, {"kind": "probe"}, env=harness.worker_env(devices=1))
  if not probe.get("torch"):
    sys.exit("compare_torch needs torch: pip install -e '.[bench]' (torch==2.13.0)")
  res = harness.Record("compare_torch", args, probe=probe)
  if not args.skip_speed:
    log("speed (examples/s, median of windows):")
    res["throughput"] = throughput_section(args, log)
    res["ratios"] = ratios(res["throughput"], harness.cpu_bf16_flags())
    for rows, r in res["ratios"].items():
      cpu = r.get("cpu_time")
      log(
        f"  {float(rows):.0e} rows: JAX default / best PyTorch ({r['best_torch']}) = "
        f"{r['default_vs_best_torch']:.2f}x"
        + (f"; per CPU-second {cpu['default_vs_best_torch']:.2f}x" if cpu else "")
      )
    if not args.skip_roofline:
      import roofline

      peak = roofline.measure_peak(quick=args.quick, with_torch=not args.quick)
      first = res["ratios"].get(str(args.rows[0]))
      if first:
        flops = common.model_flops("esmm", common.PAPER_FIELDS)
        line = roofline.fraction_line(first["jax_default_ex_per_s"], flops, peak["peak_gflops"])
        line += f" (at {args.rows[0]:.0e} rows; peak measured after the speed runs)"
        res["roofline"] = {**peak, "line": line}
        log("  " + res["roofline"]["line"])
  if not args.skip_quality:
    log("quality (AUCs on the synthetic eval split):")
    res["quality"] = quality_section(args, log)
  _keep_previous(res, out_dir / "compare_torch.json", args)
  md = markdown(res.finish())
  res.write(md, figures={"": lambda p: plot(res, p)})
  log(md)
  log(f"wrote {out_dir}/compare_torch.{{json,md,png}} in {res['elapsed_s']:.0f}s")


if __name__ == "__main__":
  probe = lambda s: common.jax_probe()
  workers = {"probe": probe, "jax": common.jax_throughput, "torch": torch_throughput}
  if not harness.worker_main({**workers, "quality": quality}):
    main()
