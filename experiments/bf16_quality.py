r"""Is bf16 quality-neutral? ESMM and ESM2 trained with `model.dtype=float32` and `bfloat16`.

  python -m experiments.bf16_quality                       # paper world, 3 seeds, half the rows
  python -m experiments.bf16_quality --world=default       # the default world
  python -m experiments.bf16_quality --train_fraction=1    # every training row
  python -m experiments.bf16_quality --quick               # smoke test, < 1 min

Each (seed, model) trains once per dtype on the same rows in the same order (the dtype is the only
difference), so the bf16 − f32 differences are paired by seed and set against the seed-to-seed
spread of f32 itself: "within seed noise" means |mean paired difference| ≤ the f32 sample std
over the seeds. Columns: CVR AUC on clicked impressions, CTCVR AUC, entire-space CVR AUC and
entire-space pCVR calibration (mean pCVR / mean would-buy over all impressions), CTR AUC.
`--train_fraction` below 1 trains on the leading part of the training rows (the same rows for
both dtypes) to fit a time budget; the results say which. Writes
experiments/results/bf16_quality[_<world>].{md,json}.
"""

from __future__ import annotations

from benchmarks import reporting
from experiments import common, runs

MODELS = (("ESMM", "esmm"), ("ESM2", "esm2"))
DTYPES = ("float32", "bfloat16")
KEYS = (  # (metric, column, percent?)
  ("cvr/auc", "CVR AUC % (clicked)", True),
  ("ctcvr/auc", "CTCVR AUC %", True),
  ("cvr/entire_space_auc", "entire-space CVR AUC %", True),
  ("cvr/entire_space_calibration", "entire-space pCVR calib.", False),
  ("ctr/auc", "CTR AUC %", True),
)


def _flags(p):
  p.add_argument(
    "--train_fraction",
    type=float,
    default=0.5,
    help="leading fraction of the training rows both dtypes train on (default 0.5)",
  )


def verdicts(res: dict[tuple[str, str], list[dict]]) -> list[dict]:
  """Per (model, metric): the paired bf16 − f32 difference against the f32 seed spread."""
  out = []
  for label, name in MODELS:
    f32, bf16 = res.get((name, "float32")), res.get((name, "bfloat16"))
    if not f32 or not bf16:
      continue
    for key, col, pct in KEYS:
      d = common.paired(bf16, f32, key)
      mu, sd = common.mean_std(d)
      _, noise = common.mean_std(common.metric_of(f32, key))
      scale, unit = (100, " AUC pts") if pct else (1, "")
      holds = abs(mu) <= noise if len(f32) > 1 else abs(mu) < 0.005
      out.append(
        {
          "model": name,
          "metric": key,
          "mean_diff": mu,
          "std_diff": sd,
          "f32_seed_std": noise,
          "n": len(d),
          "within_noise": bool(holds),
          **common.check(
            f"{label} {col}: bf16 within f32 seed noise",
            holds,
            f"bf16 − f32 = {scale * mu:+.3f} ± {scale * sd:.3f}{unit} over {len(d)} seeds; f32 "
            f"seed std {scale * noise:.3f}{unit}",
          ),
        }
      )
  return out


def main(argv=None) -> dict:
  args = common.parse_args(
    argv, __doc__, worlds=("paper", "default"), models=[n for _, n in MODELS], add_flags=_flags
  )
  models = [m for m in MODELS if not args.models or m[1] in args.models]
  frac = float(args.train_fraction)
  print(
    f"bf16_quality ({args.mode}, {args.world} world, train_fraction {frac:g}): "
    f"{[n for _, n in models]} × {list(DTYPES)} × seeds {list(args.seed_list)}",
    flush=True,
  )
  load_start = reporting.load_average()
  res: dict[tuple[str, str], list[dict]] = {}
  for seed in args.seed_list:  # seed-major, the two dtypes back to back: a partial run is paired
    for label, name in models:
      for dtype in DTYPES:
        cfg = common.experiment_config(
          name,
          args.mode,
          seed,
          args.cache_dir,
          args.world,
          **{"model.dtype": dtype, "data.train_fraction": frac},
        )
        r = runs.run(cfg, use_cache=not args.no_cache, label=f"{label} {dtype}", args=args)
        if r is not None:
          res.setdefault((name, dtype), []).append(r)

  rows = []
  for label, name in models:
    for dtype in DTYPES:
      r = res.get((name, dtype))
      if not r:
        continue
      rows.append(
        [label, dtype, common.seeds_of(r)]
        + [
          common.fmt_pct(common.metric_of(r, k))
          if pct
          else common.fmt_num(common.metric_of(r, k), 3)
          for k, _, pct in KEYS
        ]
        + [f"{common.mean_std([x['examples_per_sec'] for x in r])[0]:,.0f}"]
      )
  table = common.markdown_table(
    ["model", "model.dtype", "seeds", *(c for _, c, _ in KEYS), "train ex/s (not interleaved)"],
    rows,
  )
  checks = verdicts(res)
  mach = reporting.machine()
  trained = sum(1 for _, cached in args.run_times.values() if not cached)
  cfg0 = common.experiment_config("esmm", args.mode, args.seed_list[0], args.cache_dir, args.world)
  rows_line = (
    f"Training rows: the leading {frac:.0%} of the world's {cfg0.data.synthetic.num_train:,} "
    "(the same rows, in the same order, for both dtypes)."
  )
  md = "\n\n".join(
    [
      f"# bf16 vs f32 quality — {args.world} world",
      common.describe_mode(args).replace(
        "trained on all its training impressions",
        f"trained on the leading {frac:.0%} of its training impressions",
      ),
      rows_line,
      f"Machine: {mach['cpu']} (bf16 flags: {', '.join(mach['cpu_bf16_flags']) or 'none'}), "
      f"{mach['cores']} cores; load average {load_start} when this invocation started, "
      f"{reporting.load_average()} when it ended ({trained} of the runs trained by it, the rest "
      "reused from the run cache).",
      table,
      "Mean ± sample std over the seeds. Train ex/s are each run's own rate on a shared machine "
      "(runs one after another, not interleaved): not a speed comparison "
      "(benchmarks/results/bf16_step.md is).",
      "## bf16 against seed noise (paired by seed)",
      common.checks_markdown(checks),
      common.missing_markdown(args),
    ]
  )
  payload = {
    "train_fraction": frac,
    "runs": {f"{n}/{d}": r for (n, d), r in res.items()},
    "checks": checks,
  }
  common.write_results(
    args, common.results_name("bf16_quality", args.world), md, payload, script="bf16_quality"
  )
  return payload


if __name__ == "__main__":
  main()
