"""benchmarks/compare_torch.py's quality section: the worker that trains one framework on the
default synthetic data and scores it with esmjax.evaluation, the runs over models and seeds, and
the per-metric JAX − PyTorch differences against the seed-to-seed range."""

from __future__ import annotations

import math
import time

import common
import compare_torch_env as env

QUALITY_KEYS = (
  "ctr/auc",
  "cvr/auc",
  "ctcvr/auc",
  "ctavr/auc",
  "cvr/entire_space_auc",
  "ctr/gauc",
  "ctcvr/logloss",
)


# ---------------------------------------------------------------------------------------------
# The worker (its own process).


def _quality_config(spec):
  from esmjax.config import defaults as config_lib

  c = config_lib.default_config()
  c.model.name = spec["model"]
  c.train.batch_size = spec["batch"]
  c.train.seed = spec["seed"]
  c.train.max_eval_rows = spec.get("max_eval_rows", -1)
  c.mesh.num_devices = 1
  c.checkpoint.enabled = False
  return config_lib.validate(c)


def quality(spec) -> dict:
  """Trains one framework on the default synthetic data and scores it with esmjax's own code: JAX
  through esmjax's training loop (trainer.train_and_evaluate), PyTorch on the same batches in the
  same order (common.train_batches) through torch_reference.train_loop, and both evaluated by
  esmjax.evaluation (predict_dataset, compute_metrics)."""
  import tempfile

  from esmjax.core import sharding as sh
  from esmjax.evaluation import scoring as evaluation
  from esmjax.training import trainer as trainer_lib

  cfg = _quality_config(spec)
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
    torch, dev, _ = env.torch_setup(spec["threads"])
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
      tr.predict_fn(model, dev),
      None,
      eval_ds,
      cfg.train.eval_batch_size,
      sh.make_mesh(1),
      cfg.train.max_eval_rows,
    )
    metrics = evaluation.compute_metrics(cols, eval_ds.schema)
    eval_s = time.perf_counter() - t
  losses = [loss for _, loss in run["losses"]]
  return {
    "framework": spec["framework"],
    "model": spec["model"],
    "seed": spec["seed"],
    "steps": run["steps"],
    "examples": run["steps"] * bs,
    "ex_per_s": run["windows"],
    "first_step_s": run["first_step_s"],
    "train_s": run["train_s"],
    "eval_s": eval_s,
    "final_loss": losses[-1] if losses else float("nan"),
    "loss_curve": losses,
    "peak_rss_mb": common.peak_rss_mb(),
    "metrics": {k: float(v) for k, v in metrics.items() if k in QUALITY_KEYS},
  }


# ---------------------------------------------------------------------------------------------
# The parent: the runs and their summary.


def quality_section(args, log) -> dict:
  res: dict[str, dict] = {}
  for model in args.models:
    for seed in args.seeds:
      order = [("jax", None), ("torch", "eager-sparse-rowwise_adagrad")]
      for fw, variant in order if seed % 2 == 0 else order[::-1]:
        spec = {
          "kind": "quality",
          "framework": fw,
          "variant": variant,
          "model": model,
          "seed": seed,
          "batch": args.batch,
          "epochs": args.epochs,
          "steps": args.quality_steps,
          "max_eval_rows": args.max_eval_rows,
          "threads": args.torch_threads,
        }
        r = common.run_worker(
          env.SCRIPT, spec, env=env.worker_env(fw, args.malloc), timeout=args.worker_timeout
        )
        res.setdefault(model, {}).setdefault(fw, []).append(r)
        if "error" in r:
          log(f"  {model} seed {seed} {fw:<5} ERROR {r['error'][:300]}")
        else:
          m = r["metrics"]
          log(
            f"  {model} seed {seed} {fw:<5} {common.spread(r['ex_per_s'])['median'] / 1e3:6.1f} k "
            "ex/s  " + "  ".join(f"{k} {m[k]:.4f}" for k in QUALITY_KEYS if k in m)
          )
  summary = {}
  for model, fws in res.items():
    s = {}
    for fw, runs in fws.items():
      ok = [r for r in runs if "error" not in r]
      keys = [k for k in QUALITY_KEYS if ok and k in ok[0]["metrics"]]
      s[fw] = {k: common.spread([r["metrics"][k] for r in ok]) for k in keys}
      s[fw]["ex_per_s"] = common.spread([x for r in ok for x in r["ex_per_s"][1:] or r["ex_per_s"]])
      s[fw]["peak_rss_mb"] = max([r["peak_rss_mb"] for r in ok] or [float("nan")])
      s[fw]["per_seed"] = {r["seed"]: r["metrics"] for r in ok}
      s[fw]["errors"] = [r["error"] for r in runs if "error" in r]
    # Noise: the largest seed-to-seed spread of either framework; difference: of the seed means.
    if "jax" in s and "torch" in s:
      diff = {}
      for k in QUALITY_KEYS:
        if k in s["jax"] and k in s["torch"]:
          pj = s["jax"]["per_seed"]
          pt = s["torch"]["per_seed"]
          mj = sum(v[k] for v in pj.values()) / len(pj)
          mt_ = sum(v[k] for v in pt.values()) / len(pt)
          noise = max(
            s["jax"][k]["max"] - s["jax"][k]["min"], s["torch"][k]["max"] - s["torch"][k]["min"]
          )
          diff[k] = {
            "jax_mean": mj,
            "torch_mean": mt_,
            "diff": mj - mt_,
            "seed_range": noise,
            "within_noise": abs(mj - mt_) <= max(noise, 1e-12),
          }
      s["diff"] = diff
    summary[model] = s
  return {"runs": res, "summary": summary}
