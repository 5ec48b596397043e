"""benchmarks/compare_torch.py's speed section: the PyTorch step worker, the interleaved runs of
every (variant, table size) in fresh worker processes, and the JAX / PyTorch ratios per table
size. The JAX worker is common.jax_throughput."""

from __future__ import annotations

import time

import common
import compare_torch_env as env

JAX_VARIANTS = ("rowwise_adagrad", "adagrad", "lazy_adam", "rowwise_adagrad-bf16")
TORCH_VARIANTS = (
  "eager-sparse-rowwise_adagrad",
  "eager-sparse-adagrad",
  "eager-sparse-lazy_adam",
  "eager-dense-adagrad",
  "compile-sparse-rowwise_adagrad",
  "compile-dense-rowwise_adagrad",
  "compile-dense-adagrad",
  "compile-dense-adam",
  # bf16 autocast (torch_reference.Variant.bf16): what a PyTorch user turns on for speed.
  "eager-sparse-rowwise_adagrad-bf16",
  "compile-sparse-rowwise_adagrad-bf16",
  "compile-dense-adam-bf16",
)
QUICK_JAX = ("rowwise_adagrad", "rowwise_adagrad-bf16")
QUICK_TORCH = ("eager-sparse-rowwise_adagrad", "compile-dense-adam", "compile-dense-adam-bf16")


# ---------------------------------------------------------------------------------------------
# The worker (its own process).


def torch_throughput(spec) -> dict:
  rss0 = common.rss_mb()
  torch, dev, sync = env.torch_setup(spec["threads"])
  import torch_reference as tr

  rss_import = common.rss_mb()
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
  batches = [
    tr.to_torch(b, dev)
    for b in common.zipf_batches(
      schema,
      spec["batch"],
      spec.get("n_batches", 8),
      seed=spec.get("seed", 0),
      a=spec.get("zipf_a", common.ZIPF_A),
    )
  ]
  box = {"loss": None}

  def step(i):
    box["loss"] = trainer.step(batches[i % len(batches)])

  cpu = []
  first, rates, steps_run = common.spec_windows(spec, step, sync, cpu_rates=cpu)
  return {
    "framework": "torch",
    "ex_per_s": rates,
    "ex_per_cpu_s": cpu,
    "first_step_s": first,
    "init_s": init_s,
    "steps": steps_run,
    "final_loss": float(box["loss"]),
    "peak_rss_mb": common.peak_rss_mb(),
    "rss_before_import_mb": rss0,
    "rss_after_import_mb": rss_import,
    "state_mb": tr.state_bytes(trainer) / 2**20,
    "device_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if dev == "cuda" else None,
    "device": dev,
    "threads": torch.get_num_threads(),
    "torch": torch.__version__,
    "flops_per_example": common.model_flops(spec.get("model", "esmm"), common.PAPER_FIELDS),
  }


# ---------------------------------------------------------------------------------------------
# The parent: the runs and their summary.


def _interleave(a, b):
  out = []
  for i in range(max(len(a), len(b))):
    out += ([a[i]] if i < len(a) else []) + ([b[i]] if i < len(b) else [])
  return out


def throughput_section(args, log) -> dict:
  jv = QUICK_JAX if args.quick else JAX_VARIANTS
  tv = QUICK_TORCH if args.quick else TORCH_VARIANTS
  if args.torch_variants:
    tv = tuple(args.torch_variants.split(","))
  if args.jax_variants:
    jv = tuple(args.jax_variants.split(","))
  runs = _interleave([("jax", v) for v in jv], [("torch", v) for v in tv])
  timing = dict(
    warmup_s=args.warmup_s,
    windows=args.windows,
    window_s=args.window_s,
    batch=args.batch,
    n_batches=8,
    zipf_a=common.ZIPF_A,
  )
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
          spec = {
            "kind": "torch",
            "rows": rows,
            "variant": v,
            "threads": args.torch_threads,
            **timing,
          }
        r = common.run_worker(
          env.SCRIPT, spec, env=env.worker_env(fw, args.malloc), timeout=args.worker_timeout
        )
        slot = out.setdefault(str(rows), {}).setdefault(
          name, {"framework": fw, "variant": v, "runs": []}
        )
        slot["runs"].append(r)
        rate = common.spread(r.get("ex_per_s", []))["median"]
        log(
          f"  round {rnd + 1} rows {rows:.0e} {name:<36} "
          + (
            f"{rate / 1e3:8.1f} k ex/s  (first step {r['first_step_s']:.1f}s, peak RSS "
            f"{r['peak_rss_mb']:.0f} MB)"
            if "error" not in r
            else f"ERROR {r['error'][:300]}"
          )
        )
  for variants in out.values():
    for slot in variants.values():
      ok = [r for r in slot["runs"] if "error" not in r]
      slot["windows"] = [x for r in ok for x in r["ex_per_s"]]
      slot["ex_per_s"] = common.spread(slot["windows"])
      slot["ex_per_cpu_s"] = common.spread([x for r in ok for x in r.get("ex_per_cpu_s", [])])
      slot["run_medians"] = [common.spread(r["ex_per_s"])["median"] for r in ok]
      slot["peak_rss_mb"] = max([r["peak_rss_mb"] for r in ok] or [float("nan")])
      slot["rss_after_import_mb"] = min([r["rss_after_import_mb"] for r in ok] or [float("nan")])
      slot["first_step_s"] = min([r["first_step_s"] for r in ok] or [float("nan")])
      slot["device_peak_mb"] = max([r.get("device_peak_mb") or 0 for r in ok] or [0]) or None
      slot["errors"] = [r["error"] for r in slot["runs"] if "error" in r]
      slot["flops_per_example"] = ok[0]["flops_per_example"] if ok else float("nan")
      if ok and slot["framework"] == "jax":
        slot["engine"] = ok[0].get("engine")
  return out


def ratios(tp: dict) -> dict:
  """Per table size: JAX default / best PyTorch, best JAX / best PyTorch, and per optimizer."""
  out = {}
  for rows, variants in tp.items():
    med = {n: s["ex_per_s"]["median"] for n, s in variants.items() if s["ex_per_s"]["n"]}
    noise = {n: s["ex_per_s"]["rel_half_range"] for n, s in variants.items() if s["ex_per_s"]["n"]}
    jax_ = {n: v for n, v in med.items() if n.startswith("jax-")}
    tor = {n: v for n, v in med.items() if n.startswith("torch-")}
    if not jax_ or not tor:
      continue
    best_t = max(tor, key=tor.get)
    best_j = max(jax_, key=jax_.get)
    default = "jax-rowwise_adagrad" if "jax-rowwise_adagrad" in jax_ else best_j
    r = {
      "best_torch": best_t,
      "best_torch_ex_per_s": tor[best_t],
      "jax_default": default,
      "jax_default_ex_per_s": jax_[default],
      "default_vs_best_torch": jax_[default] / tor[best_t],
      "best_jax": best_j,
      "best_jax_vs_best_torch": jax_[best_j] / tor[best_t],
      "ratio_noise": noise.get(default, 0) + noise.get(best_t, 0),
      "matched": {},
    }
    for opt in JAX_VARIANTS:
      j = jax_.get(f"jax-{opt}")
      ts = {n: v for n, v in tor.items() if n.endswith(f"-{opt}")}
      if j and ts:
        bt = max(ts, key=ts.get)
        r["matched"][opt] = {"jax": j, "best_torch": bt, "torch": ts[bt], "ratio": j / ts[bt]}
    cpu = {
      n: s["ex_per_cpu_s"]["median"]
      for n, s in variants.items()
      if s.get("ex_per_cpu_s", {}).get("n")
    }
    ct = {n: v for n, v in cpu.items() if n.startswith("torch-")}
    if default in cpu and ct:
      bc = max(ct, key=ct.get)
      r["cpu_time"] = {"best_torch": bc, "default_vs_best_torch": cpu[default] / ct[bc]}
    out[rows] = r
  return out
