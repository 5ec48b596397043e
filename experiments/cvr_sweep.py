r"""Where ESMM's advantage comes from: BASE, ESMM-NS and ESMM as conversions get sparser.

  python -m experiments.cvr_sweep            # full mode (~40 min on a quiet 2-core CPU)
  python -m experiments.cvr_sweep --rates=0.09,0.01,0.0053   # a subset of the rates
  python -m experiments.cvr_sweep --quick    # smoke test

The paper-regime world (`synthetic.world_config('paper')`: CTR 4 %, 4 M training impressions) with
CVR | click set to each of RATES — 9 % (the default world's rate), 3 %, 1 % and 0.53 % (the ESMM
paper's Ali-CCP rate, the paper world itself). Worlds that differ in `cvr` alone share every draw
but the conversions (esmjax.data.synthetic.cache.world_config): the same users, items, impressions,
features and clicks, so the sweep holds the impressions AND the clicks fixed and varies only how
many clicks convert. The eval split is the paper world's (its size: experiments/eval_size_probe.py).
Writes experiments/results/cvr_sweep.{md,json,png}.
"""

from __future__ import annotations

import argparse
import sys

from experiments import common, runs

MODELS = (("BASE", "base"), ("ESMM-NS", "esmm_ns"), ("ESMM", "esmm"))
RATES = {"full": (0.09, 0.03, 0.01, 0.0053), "quick": (0.2, 0.1)}  # the last: the world's own
METRICS = (
  ("cvr/auc", "CVR AUC (clicked)"),
  ("ctcvr/auc", "CTCVR AUC"),
  ("cvr/entire_space_auc", "entire-space CVR AUC"),
  ("cvr/entire_space_calibration", "entire-space pCVR calib."),
)
GAPS = (("esmm", "base"), ("esmm", "esmm_ns"))
LABELS = {name: label for label, name in MODELS}


def rate_config(name: str, args, seed: int, cvr: float):
  base = common.experiment_config(name, args.mode, seed, args.cache_dir, "paper")
  over = {} if cvr == base.data.synthetic.cvr else {"data.synthetic.cvr": cvr}
  return common.experiment_config(name, args.mode, seed, args.cache_dir, "paper", **over)


def gap_check(res, rates, key: str) -> dict:
  """ESMM − BASE on `key` at the sparsest rate against the densest (paired by seed)."""
  gaps = [
    (c, common.mean_std(common.paired(res[("esmm", c)], res[("base", c)], key))[0])
    for c in rates
    if ("esmm", c) in res and ("base", c) in res
  ]
  if len(gaps) < 2:
    return common.check(
      f"the ESMM − BASE gap on {key} grows as conversions get sparser",
      False,
      "fewer than two rates with both models",
    )
  by_rate = sorted(gaps)  # sparsest first
  holds = by_rate[0][1] > by_rate[-1][1]
  return common.check(
    f"the ESMM − BASE gap on {key} grows as conversions get sparser",
    holds,
    "ESMM − BASE by CVR | click: "
    + ", ".join(f"{100 * c:g} %: {100 * g:+.2f}" for c, g in gaps)
    + " AUC points",
  ) | {"gaps": {str(c): g for c, g in gaps}}


def _rate_list(text: str) -> tuple[float, ...]:
  try:
    rates = tuple(float(r) for r in text.split(",") if r)
  except ValueError:
    raise argparse.ArgumentTypeError(
      f"{text!r}: give comma-separated numbers, e.g. 0.09,0.01"
    ) from None
  if not rates or not all(0 < r < 1 for r in rates):
    raise argparse.ArgumentTypeError(f"{text!r}: every rate must be in (0, 1)")
  return rates


def _rates_flag(parser) -> None:
  parser.add_argument(
    "--rates",
    type=_rate_list,
    default=(),
    help="comma-separated CVR | click values to run, e.g. 0.09,0.01,0.0053 (default: the mode's "
    "RATES)",
  )


def main(argv=None) -> dict:
  args = common.parse_args(argv, __doc__, worlds=("paper",), add_flags=_rates_flag)
  rates = args.rates or RATES[args.mode]
  print(
    f"cvr_sweep ({args.mode}): {len(MODELS)} models × CVR | click {list(rates)} × seeds "
    f"{list(args.seed_list)}",
    flush=True,
  )
  res: dict[tuple[str, float], list[dict]] = {}
  for seed in args.seed_list:  # seed-major: a partial run still covers every rate
    for cvr in rates:
      for label, name in MODELS:
        cfg = rate_config(name, args, seed, cvr)
        r = runs.run(cfg, use_cache=not args.no_cache, label=f"{label} @ cvr {cvr:g}", args=args)
        if r is not None:
          res.setdefault((name, cvr), []).append(r)

  from esmjax.data.synthetic import cache as synthetic

  world = {}
  for cvr in rates:
    train_ds, eval_ds = runs.datasets(rate_config("esmm", args, args.seed_list[0], cvr))
    world[cvr] = {
      "train": synthetic.world_stats(train_ds.directory),
      "eval": synthetic.world_stats(eval_ds.directory),
    }
  sections = [
    "# Conversion-rate sweep: BASE, ESMM-NS and ESMM as conversions get sparser",
    common.describe_mode(
      args,
      "CVR | click is the only knob that differs between the rows (same impressions and clicks).",
    ),
    "![AUC and the ESMM − BASE gap against CVR | click](cvr_sweep.png)",
    common.markdown_table(
      [
        "CVR | click",
        "train clicks",
        "train clicked conversions",
        "eval clicks",
        "eval clicked conversions",
        "eval would-buy (all impressions)",
        "selection ratio",
      ],
      [
        [
          f"{100 * c:g} %",
          f"{w['train']['clicks']:,}",
          f"{w['train']['buys']:,}",
          f"{w['eval']['clicks']:,}",
          f"{w['eval']['buys']:,}",
          f"{w['eval']['mean_would_buy_all'] * w['eval']['rows']:,.0f}",
          f"{w['eval']['selection_ratio']:.3f}",
        ]
        for c, w in world.items()
      ],
    ),
  ]
  for key, title in METRICS:
    calib = key.endswith("calibration")
    rows = []
    for c in rates:
      cells = [
        (common.fmt_num if calib else common.fmt_pct)(
          common.metric_of(res.get((n, c), []), key), *((2,) if calib else ())
        )
        for _, n in MODELS
      ]
      gaps = []
      for a, b in GAPS if not calib else ():
        d = common.paired(res.get((a, c), []), res.get((b, c), []), key)
        mu, sd = common.mean_std(d)
        gaps.append(
          "–"
          if mu != mu
          else f"{100 * mu:+.2f} ± {100 * sd:.2f} ({sum(x > 0 for x in d)}/{len(d)})"
        )
      rows.append([f"{100 * c:g} %", *cells, *gaps])
    header = ["CVR | click", *[l for l, _ in MODELS]]
    if not calib:
      header += [f"{LABELS[a]} − {LABELS[b]} (seeds ahead)" for a, b in GAPS]
    sections += [f"## {title}" + ("" if calib else " (%)"), common.markdown_table(header, rows)]
  checks = [gap_check(res, rates, key) for key, _ in METRICS[:3]]
  sections += [
    "Cells: mean ± std over the seeds; gaps are paired by seed (AUC points), with the number of "
    "seeds where the first model is ahead.",
    "## ESMM's advantage against the conversion rate, checked",
    common.checks_markdown(checks),
    common.missing_markdown(args),
  ]

  def draw(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12.6, 3.4), dpi=90)
    for ax, (key, title) in zip(axes[:2], (METRICS[0], METRICS[2]), strict=True):
      for label, n in MODELS:
        cs = [c for c in rates if (n, c) in res]
        ms = [common.mean_std(common.metric_of(res[(n, c)], key)) for c in cs]
        ax.errorbar(
          [100 * c for c in cs],
          [m for m, _ in ms],
          yerr=[s for _, s in ms],
          marker="o",
          ms=3,
          capsize=2,
          label=label,
        )
      ax.set_title(title, fontsize=10)
    for key, title in (METRICS[0], METRICS[2]):
      cs = [c for c in rates if ("esmm", c) in res and ("base", c) in res]
      ms = [common.mean_std(common.paired(res[("esmm", c)], res[("base", c)], key)) for c in cs]
      axes[2].errorbar(
        [100 * c for c in cs],
        [100 * m for m, _ in ms],
        yerr=[100 * s for _, s in ms],
        marker="o",
        ms=3,
        capsize=2,
        label=title,
      )
    axes[2].axhline(0, color="grey", lw=0.8)
    axes[2].set_title("ESMM − BASE (AUC points)", fontsize=10)
    for ax in axes:
      ax.set_xscale("log")
      ax.set_xlabel("CVR | click (%)")
      ax.grid(alpha=0.3)
      ax.legend(fontsize=8)
    axes[0].set_ylabel("AUC")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

  payload = {
    "rates": list(rates),
    "world_stats": {str(c): w for c, w in world.items()},
    "checks": checks,
    "models": [{"label": l, "config": n} for l, n in MODELS],
    "runs": {f"{n}@{c:g}": r for (n, c), r in res.items()},
  }
  common.write_results(args, "cvr_sweep", "\n\n".join(sections), payload, {"": draw})
  return payload


if __name__ == "__main__":
  main(sys.argv[1:])
