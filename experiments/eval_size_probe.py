r"""How large the paper-regime world's eval split must be: a probe.

  python -m experiments.eval_size_probe            # full mode (~25 min on a quiet 2-core CPU)
  python -m experiments.eval_size_probe --quick    # smoke test

At the ESMM paper's rates (CTR 4 %, CVR | click 0.53 %) one million eval impressions hold ~210
clicked conversions, and a CVR AUC on clicked rows that rests on 210 positives has a standard error
of ~0.02 — larger than the differences between models being judged. A comparison of two models
has two sources of noise:
  * the eval sample: the standard error of the paired AUC difference over the eval rows (DeLong's;
    experiments/stats.py), the same for every seed and not reduced by averaging seeds. Measured on
    BASE, ESMM-NS and ESMM (seed 0) trained on the paper world's 4 M training impressions and
    scored on an eval split of PROBE_EVAL impressions, in its leading n rows for each candidate n;
  * training: the seed-to-seed standard deviation of the difference, from the same models trained
    with each seed on the paper world as shipped (the runs of esmm_table --world=paper).
The eval split is large enough for a metric where the first is at most the second. Besides the
papers' AUCs on drawn labels, the probe measures esmjax's population AUC (esmjax.evaluation.metrics:
against the true pCVR, without the label noise of rare conversions). Writes
experiments/results/eval_size_probe.{md,json}.
"""

from __future__ import annotations

import resource
import sys
import time

import numpy as np

from benchmarks import reporting
from experiments import common, runs, stats

MODELS = (("BASE", "base"), ("ESMM-NS", "esmm_ns"), ("ESMM", "esmm"))
PAIRS = (("esmm", "base"), ("esmm", "esmm_ns"))
# Eval impressions scored (None: the world's own split, so the quick runs are the other scripts').
PROBE_EVAL = {"full": 4_000_000, "quick": None}
SIZES = {"full": (250_000, 500_000, 1_000_000, 2_000_000, 4_000_000), "quick": (2_048, 4_096)}
KEYS = (
  ("cvr/auc", "CVR AUC (clicked)"),
  ("cvr/population_auc", "population CVR AUC (clicked)"),
  ("cvr/entire_space_auc", "entire-space CVR AUC"),
)
BOOTSTRAP_REPS = {"full": 100, "quick": 20}
PROBE_SEED = 0


LABELS = {name: label for label, name in MODELS}


def _f4(x: float) -> str:
  return "–" if x != x else f"{x:.4f}"


def _eval_columns(cfg) -> dict[str, np.ndarray]:
  _, eval_ds = runs.datasets(cfg)
  cols = runs.read_eval_rows(cfg, ("labels", "truth", "sample_id"))
  sch = eval_ds.schema
  return {
    "sample_id": cols["sample_id"],
    "click": cols["labels"][:, sch.labels.index("click")].astype(bool),
    "buy": cols["labels"][:, sch.labels.index("buy")].astype(bool),
    "would_buy": cols["truth"][:, sch.truth.index("would_buy")] > 0.5,
    "pcvr": cols["truth"][:, sch.truth.index("pcvr")].astype(np.float64),
  }


def _population(ev, key: str, n: int) -> tuple[np.ndarray, np.ndarray]:
  """(row mask within the first n rows, labels or label probabilities there) of metric `key`."""
  if key == "cvr/auc":
    mask = ev["click"][:n]
    return mask, ev["buy"][:n][mask]
  if key == "cvr/population_auc":
    mask = ev["click"][:n]
    return mask, ev["pcvr"][:n][mask]
  return np.ones(n, bool), ev["would_buy"][:n]


def measure(ev, preds: dict[str, list[dict]], sizes, reps: int) -> list[dict]:
  """Per size n and metric: each model's AUCs (per seed) and single-AUC eval SE, and per pair the
  paired differences (per seed) with their eval SE (DeLong; bootstrap for the population AUC)."""
  names = list(preds)
  seeds = min(len(v) for v in preds.values())
  out = []
  for n in sizes:
    for key, _ in KEYS:
      mask, y = _population(ev, key, n)
      row = {"n": n, "key": key, "positives": float(y.sum()), "rows": int(mask.sum())}
      row["models"] = {m: {"auc": [], "eval_se": []} for m in names}
      row["pairs"] = {
        f"{a}-{b}": {"diff": [], "eval_se": []} for a, b in PAIRS if {a, b} <= set(names)
      }
      for i in range(seeds):
        scores = [preds[m][i]["pcvr"][:n][mask] for m in names]
        if key == "cvr/population_auc":
          aucs, cov = stats.bootstrap_population(y, scores, reps, seed=i)
        else:
          aucs, cov = stats.delong(y, scores)
        for j, m in enumerate(names):
          row["models"][m]["auc"].append(float(aucs[j]))
          row["models"][m]["eval_se"].append(float(np.sqrt(cov[j, j])))
        for a, b in PAIRS:
          if {a, b} <= set(names):
            ja, jb = names.index(a), names.index(b)
            var = cov[ja, ja] + cov[jb, jb] - 2 * cov[ja, jb]
            pair = row["pairs"][f"{a}-{b}"]
            pair["diff"].append(float(aucs[ja] - aucs[jb]))
            pair["eval_se"].append(float(np.sqrt(max(var, 0.0))))
      out.append(row)
  return out


def seed_spread(recs: dict[str, list[dict]]) -> dict[str, dict]:
  """Per metric: the mean seed-to-seed std of one model's AUC, and each pair's paired differences
  (one per seed), from the runs on the world as shipped."""
  out = {}
  for key, _ in KEYS:
    sds = [common.mean_std(common.metric_of(r, key))[1] for r in recs.values() if len(r) > 1]
    out[key] = {
      "model_sd": float(np.mean(sds)) if sds else float("nan"),
      "pairs": {
        f"{a}-{b}": common.paired(recs[a], recs[b], key)
        for a, b in PAIRS
        if a in recs and b in recs
      },
    }
  return out


def main(argv=None) -> dict:
  args = common.parse_args(argv, __doc__, worlds=("paper",))
  n_eval = PROBE_EVAL[args.mode]
  over = {} if n_eval is None else {"data.synthetic.num_eval": n_eval}
  cfg0 = common.experiment_config("esmm", args.mode, PROBE_SEED, args.cache_dir, "paper", **over)
  shipped = common.experiment_config("esmm", args.mode, PROBE_SEED, args.cache_dir, "paper")
  from esmjax.data.synthetic import cache as synthetic

  t, rss0 = time.time(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  runs.datasets(cfg0)  # the world, generated once (streamed in chunks)
  gen = {
    "seconds": time.time() - t,
    "peak_rss_gb_before": rss0 / 2**20,
    "peak_rss_gb_after": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    "rows": int(cfg0.data.synthetic.num_train + cfg0.data.synthetic.num_eval),
  }
  print(f"eval_size_probe ({args.mode}): seeds {list(args.seed_list)}; world {gen}", flush=True)
  big: dict[str, dict] = {}
  preds: dict[str, list[dict]] = {}
  for label, name in MODELS:  # seed 0 on the large eval split, per-row predictions kept
    cfg = common.experiment_config(name, args.mode, PROBE_SEED, args.cache_dir, "paper", **over)
    r = runs.run(cfg, predictions=True, use_cache=not args.no_cache, label=label, args=args)
    if r is not None:
      big[name] = r
      preds[name] = [runs.load_predictions(cfg, r)]
  recs: dict[str, list[dict]] = {}
  for seed in args.seed_list:  # every seed on the world as shipped: the training noise
    for label, name in MODELS:
      cfg = common.experiment_config(name, args.mode, seed, args.cache_dir, "paper")
      r = runs.run(cfg, use_cache=not args.no_cache, label=label, args=args)
      if r is not None:
        recs.setdefault(name, []).append(r)
  ev = _eval_columns(cfg0)
  for per_seed in preds.values():
    for p in per_seed:
      if not np.array_equal(p["sample_id"], ev["sample_id"]):
        raise RuntimeError("kept predictions and eval rows are not aligned (sample_id differs)")
  sizes = SIZES[args.mode]
  rows = measure(ev, preds, sizes, BOOTSTRAP_REPS[args.mode])
  st = synthetic.world_stats(runs.datasets(cfg0)[1].directory)
  spread = seed_spread(recs)

  table, decision = [], {}
  for r in rows:
    sp = spread[r["key"]]
    single = float(np.mean([m["eval_se"][0] for m in r["models"].values()]))
    for pair, v in r["pairs"].items():
      table.append(
        [
          f"{r['n']:,}",
          r["key"],
          f"{r['positives']:,.0f}",
          _f4(single),
          _f4(sp["model_sd"]),
          " − ".join(LABELS[x] for x in pair.split("-")),
          _f4(v["eval_se"][0]),
          common.fmt_num(sp["pairs"].get(pair, [])),
        ]
      )
  for key, _ in KEYS:  # the smallest size where every pair's eval noise ≤ its training noise
    sds = {
      p: common.mean_std(d)[1] if len(d) > 1 else float("nan")
      for p, d in spread[key]["pairs"].items()
    }
    ok = [
      r["n"]
      for r in rows
      if r["key"] == key
      and all(v["eval_se"][0] <= sds.get(p, float("nan")) for p, v in r["pairs"].items())
    ]
    decision[key] = min(ok) if ok else None
  eval_secs = [r["eval_seconds"] for r in big.values()]
  sec_per_m = (
    float(np.median(eval_secs)) / (cfg0.data.synthetic.num_eval / 1e6) if eval_secs else 0.0
  )
  verdict = "\n".join(
    f"- {title}: "
    + (
      f"eval noise at most the training noise from **{decision[key]:,}** eval impressions"
      if decision[key]
      else f"eval noise above the training noise at every probed size (up to {sizes[-1]:,})"
    )
    for key, title in KEYS
  )
  md = "\n\n".join(
    [
      "# Eval size of the paper-regime world — probe",
      common.describe_mode(
        args,
        f"Eval SE: seed {PROBE_SEED} scored on an eval split of "
        f"{cfg0.data.synthetic.num_eval:,} impressions, in prefixes; seed std: the seeds above on "
        f"the world as shipped ({shipped.data.synthetic.num_eval:,} eval impressions).",
      ),
      common.world_stats_line(st),
      common.markdown_table(
        [
          "eval rows",
          "metric",
          "positives",
          "eval SE of one AUC",
          "seed std of one AUC",
          "pair",
          "eval SE of the difference",
          "difference (mean ± seed std)",
        ],
        table,
      ),
      "Eval SE: the standard error over the eval sample (DeLong's; for the population AUC, "
      f"against the true pCVR, a bootstrap of {BOOTSTRAP_REPS[args.mode]} row resamples), mean "
      "over the models; seed std: sample std over the training seeds. Positives of the "
      "population AUC: the expected number (sum of the true pCVR). The eval SE of a difference "
      "does not shrink with more seeds; the seed std of a mean over S seeds shrinks by √S.",
      verdict,
      f"Evaluation cost: {sec_per_m:.1f} s per million eval rows (median of the runs, load "
      f"{reporting.load_average()}). World generation: {gen['rows']:,} rows in "
      f"{gen['seconds']:.0f} s, peak RSS {gen['peak_rss_gb_after']:.2f} GB (streamed in "
      f"{cfg0.data.synthetic.chunk_rows:,}-row chunks).",
      common.missing_markdown(args),
    ]
  )
  payload = {
    "probe_eval": cfg0.data.synthetic.num_eval,
    "sizes": list(sizes),
    "generation": gen,
    "world_stats_eval": st,
    "measurements": rows,
    "smallest_sufficient_eval_rows": decision,
    "eval_seconds_per_million": sec_per_m,
    "shipped_eval_rows": shipped.data.synthetic.num_eval,
    "probe_runs": big,
    "runs": recs,
  }
  common.write_results(args, "eval_size_probe", md, payload)
  return payload


if __name__ == "__main__":
  main(sys.argv[1:])
