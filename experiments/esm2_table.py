r"""ESM2 paper's offline comparison, regenerated: GBDT, DNN, DNN-OS, ESMM, ESM2 on a synthetic world
whose DAction (cart / wish) carries signal about the purchase.

  python -m experiments.esm2_table                # full mode, default world (times: common.py)
  python -m experiments.esm2_table --world=paper  # the paper-regime world (CTR 4 %, CVR 0.53 %)
  python -m experiments.esm2_table --quick        # smoke test

Columns are the ESM2 paper's: CVR AUC (clicked impressions), CTCVR AUC and CTCVR GAUC (per-user
AUC weighted by impressions), plus the entire-space CVR AUC (synthetic truth). DNN is the click-only
CVR network (= BASE, configs/baselines/base.py; configs/baselines/dnn.py is the same model under the
ESM2 paper's name) and DNN-OS is it with click→buy positives copied ×5 (= configs/baselines/
oversampling.py:k=5); both get pCTCVR = pCTR × pCVR from an independently trained CTR network.
GBDT is LightGBM (the `gbdt` extra) on the same features; skipped with a note when lightgbm is
missing.

The default world has `daction_informativeness` κ = 2 (buy log-odds +2 after a DAction). The full
mode also runs ESMM and ESM2 in the same world with κ = 0 as a control: buying then does not depend
on DAction given the conversion score, but DAction still follows that score
(`daction_coupling` = 1), so it stays an auxiliary label correlated with buying — not a world
where DAction is pure noise.
Writes experiments/results/esm2_table.{md,json} (`--world=paper`: esm2_table_paper.{md,json}).
"""

from __future__ import annotations

import sys

from experiments import common, gbdt, runs

MODELS = (
  ("GBDT", "gbdt"),
  ("DNN", "base"),
  ("DNN-OS", "oversampling:k=5"),
  ("ESMM", "esmm"),
  ("ESM2", "esm2"),
)
QUICK_MODELS = ("gbdt", "base", "esmm", "esm2")
GROUPS = ("esmm", "esm2")  # runs that also score per purchase-count group (read by esm2_ablations)
CONTROL_KAPPA = 0.0  # daction_informativeness of the control world (full mode only)
COLS = (
  ("cvr/auc", "CVR AUC"),
  ("ctcvr/auc", "CTCVR AUC"),
  ("ctcvr/gauc", "CTCVR GAUC"),
  ("cvr/entire_space_auc", "entire-space CVR AUC"),
  ("ctavr/auc", "CTAVR AUC"),
)


def run_models(args, models, overrides=None, seeds=None) -> tuple[dict, list[str]]:
  res, notes = {}, []
  for seed in seeds or args.seed_list:
    for label, name in models:
      if name == "gbdt":
        if not gbdt.available():
          if seed == (seeds or args.seed_list)[0]:
            notes.append("GBDT skipped: lightgbm is not installed (`pip install -e .[gbdt]`).")
          continue
        cfg = common.experiment_config(
          "base", args.mode, seed, args.cache_dir, args.world, **(overrides or {})
        )
        r = gbdt.run(cfg, args.mode, use_cache=not args.no_cache, args=args)
        if r is not None:
          res.setdefault(name, []).append(r)
        continue
      cfg = common.experiment_config(
        name, args.mode, seed, args.cache_dir, args.world, **(overrides or {})
      )
      r = runs.run(
        cfg,
        groups=name in GROUPS and not overrides and args.world == "default",
        use_cache=not args.no_cache,
        label=label + (" (control)" if overrides else ""),
        args=args,
      )
      if r is not None:
        res.setdefault(name, []).append(r)
  return res, notes


def table(models, res) -> str:
  rows = []
  for label, name in models:
    if name not in res:
      continue
    r = res[name]
    paper = common.ESM2_PAPER.get(name)
    rows.append(
      [
        label,
        common.seeds_of(r),
        *[common.fmt_num(common.metric_of(r, k)) for k, _ in COLS],
        *([f"{p:.4f}" for p in paper] if paper else ["", "", ""]),
      ]
    )
  return common.markdown_table(
    [
      "model",
      "seeds",
      *[t for _, t in COLS],
      "paper CVR AUC",
      "paper CTCVR AUC",
      "paper CTCVR GAUC",
    ],
    rows,
  )


def claims(res, world: str) -> list[dict]:
  out = []
  for a, b in (("esm2", "esmm"), ("esm2", "base"), ("esmm", "base"), ("esm2", "gbdt")):
    if a not in res or b not in res:
      continue
    for key in ("cvr/auc", "ctcvr/auc", "ctcvr/gauc"):
      d = common.paired(res[a], res[b], key)
      mu, sd = common.mean_std(d)
      name = {"base": "DNN"}.get(b, b.upper())
      out.append(
        common.check(
          f"{a.upper()} above {name} on {key} ({world})",
          mu > 0,
          f"{mu:+.4f} ± {sd:.4f} ({sum(x > 0 for x in d)}/{len(d)} seeds ahead)",
        )
      )
  return out


def main(argv=None) -> dict:
  args = common.parse_args(argv, __doc__, worlds=common.WORLDS)
  models = [m for m in MODELS if not args.quick or m[1] in QUICK_MODELS]
  print(
    f"esm2_table ({args.mode}, {args.world} world): {len(models)} models × seeds "
    f"{list(args.seed_list)}",
    flush=True,
  )
  res, notes = run_models(args, models)
  checks = claims(res, f"κ = 2, {args.world} world")
  control, control_checks = {}, []
  if not args.quick:
    ctl_models = [("ESMM", "esmm"), ("ESM2", "esm2")]
    control, _ = run_models(
      args, ctl_models, {"data.synthetic.daction_informativeness": CONTROL_KAPPA}
    )
    control_checks = claims(control, f"control world, κ = {CONTROL_KAPPA:g}")

  from esmjax.data.synthetic import cache as synthetic

  cfg0 = common.experiment_config("esm2", args.mode, args.seed_list[0], args.cache_dir, args.world)
  stats = synthetic.world_stats(runs.datasets(cfg0)[1].directory)
  title = {"default": "synthetic data", "paper": "the paper-regime synthetic world"}[args.world]
  sections = [
    f"# ESM2 paper's offline comparison — regenerated on {title}",
    common.describe_mode(
      args, f"GBDT: LightGBM, {gbdt.ROUNDS[args.mode]} rounds, params in the JSON."
    ),
    common.world_stats_line(stats),
    table(models, res),
    (
      f"Mean ± std over the seeds listed. Paper numbers: ESM2 paper (Wen et al., SIGIR 2020), "
      "its industrial offline data set (ESMM → ESM2 only). In this world p(buy | click, DAction) = "
      f"{stats.get('buy_given_daction', float('nan')):.3f} vs p(buy | click, no DAction) = "
      f"{stats.get('buy_given_oaction', float('nan')):.3f}; DAction per click "
      f"{stats.get('daction_per_click', float('nan')):.3f} (eval split)."
    ),
    *(["**Notes:** " + " ".join(notes)] if notes else []),
    common.missing_markdown(args),
    "## The paper's findings, checked",
    common.checks_markdown(checks),
  ]
  if control:
    sections += [
      f"## Control: the same world with κ = {CONTROL_KAPPA:g} (no direct DAction → buy effect; "
      "DAction still follows the conversion score)",
      table([("ESMM", "esmm"), ("ESM2", "esm2")], control),
      common.checks_markdown(control_checks),
    ]
  payload = {
    "models": [{"label": l, "config": n} for l, n in models],
    "paper": common.ESM2_PAPER,
    "world_stats_eval": stats,
    "notes": notes,
    "checks": checks,
    "runs": res,
    "control_kappa": CONTROL_KAPPA,
    "control_runs": control,
    "control_checks": control_checks,
    "gbdt_params": gbdt.PARAMS,
    "gbdt_rounds": gbdt.ROUNDS[args.mode],
  }
  name = common.results_name("esm2_table", args.world)
  common.write_results(args, name, "\n\n".join(sections), payload, script="esm2_table")
  return payload


if __name__ == "__main__":
  main(sys.argv[1:])
