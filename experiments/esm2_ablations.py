r"""ESM2 paper's ablations, regenerated on the default synthetic world (DAction informative, κ = 2).

  python -m experiments.esm2_ablations            # full mode (run times: experiments/common.py)
  python -m experiments.esm2_ablations --quick    # smoke test (a subset: SCart only, the groups)

One axis at a time, everything else as configs/esm2.py (dropout 0, towers 200-80, embedding 18,
dense features as normalise + tanh embeddings, DAction = cart or wish):
  * dropout after each hidden layer; number of hidden layers; embedding dimension;
  * dense numeric features as normalise + tanh embeddings vs bucketised ids (the paper: +0.004 AUC
    for its normalise + tanh variant);
  * DAction = SCart only / Wish only / both (`model.daction_label`);
  * CVR and CTCVR AUC of ESMM and ESM2 per user purchase-count group — the ESM2 paper's groups
    [0,10], [11,20], [21,50], 51+ of the user's past purchase count (the synthetic feature
    user_buys_hist), and the user's buys in the training rows used (0, 1, 2+).
Writes experiments/results/esm2_ablations.{md,json}.
"""

from __future__ import annotations

import sys

from experiments import common, runs
from experiments import groups as groups_lib

BASE_LABEL = "ESM2 (configs/esm2.py)"
AXES = (  # (axis, [(label, overrides)]); the unmodified ESM2 run is every axis's reference
  ("dropout", [("0.2", {"model.dropout": 0.2}), ("0.5", {"model.dropout": 0.5})]),
  (
    "hidden layers",
    [("200", {"model.hidden": (200,)}), ("400-200-80", {"model.hidden": (400, 200, 80)})],
  ),
  ("embedding dim", [("8", {"model.embed_dim": 8}), ("32", {"model.embed_dim": 32})]),
  ("dense features", [("bucketised ids", {"model.dense_mode": "bucket"})]),
  (
    "DAction",
    [
      ("SCart only", {"model.daction_label": "cart"}),
      ("Wish only", {"model.daction_label": "wish"}),
    ],
  ),
)
REFERENCE = {
  "dropout": "0 (reference)",
  "hidden layers": "200-80 (reference)",
  "embedding dim": "18 (reference)",
  "dense features": "normalise + tanh (reference)",
  "DAction": "SCart or Wish (reference)",
}
QUICK_VARIANTS = {("DAction", "SCart only")}  # the smoke test exercises model.daction_label
SEEDS_FULL = (0, 1)  # ablations: two seeds fit the full mode's hour (pass --seeds to add more)
COLS = (
  ("cvr/auc", "CVR AUC"),
  ("ctcvr/auc", "CTCVR AUC"),
  ("ctcvr/gauc", "CTCVR GAUC"),
  ("cvr/entire_space_auc", "entire-space CVR AUC"),
)


def variants(quick: bool):
  for axis, vs in AXES:
    for label, over in vs:
      if not quick or (axis, label) in QUICK_VARIANTS:
        yield axis, label, over


def main(argv=None) -> dict:
  args = common.parse_args(argv, __doc__)
  if not args.quick and not args.seeds:
    args.seed_list = SEEDS_FULL
  use_cache = not args.no_cache
  print(f"esm2_ablations ({args.mode}): seeds {list(args.seed_list)}", flush=True)
  ref, res, groups = [], {}, {}
  for seed in args.seed_list:
    for name in ("esmm", "esm2"):
      cfg = common.experiment_config(name, args.mode, seed, args.cache_dir)
      r = runs.run(cfg, groups=True, use_cache=use_cache, label=f"{name} (groups)", args=args)
      if r is None:
        continue
      groups.setdefault(name, []).append(r)
      if name == "esm2":
        ref.append(r)
    for axis, label, over in variants(args.quick):
      cfg = common.experiment_config("esm2", args.mode, seed, args.cache_dir, **over)
      r = runs.run(cfg, use_cache=use_cache, label=f"{axis}: {label}", args=args)
      if r is not None:
        res.setdefault((axis, label), []).append(r)

  sections = [
    "# ESM2 paper's ablations — regenerated on synthetic data",
    common.describe_mode(args, "Seeds here: " + str(list(args.seed_list)) + "."),
  ]
  axes_done = []
  for axis, _ in AXES:
    vs = [(label, r) for (a, label), r in res.items() if a == axis]
    if not vs:
      continue
    axes_done.append(axis)
    rows = [
      [
        REFERENCE[axis],
        common.seeds_of(ref),
        *[common.fmt_num(common.metric_of(ref, k)) for k, _ in COLS],
        "",
      ]
    ]
    for label, r in vs:
      d = common.paired(r, ref, "cvr/auc")
      rows.append(
        [
          label,
          common.seeds_of(r),
          *[common.fmt_num(common.metric_of(r, k)) for k, _ in COLS],
          f"{common.mean_std(d)[0]:+.4f}",
        ]
      )
    sections += [
      f"## {axis}",
      common.markdown_table([axis, "seeds", *[t for _, t in COLS], "Δ CVR AUC vs ref."], rows),
    ]
  checks = []
  if ("dense features", "bucketised ids") in res:
    d = common.paired(ref, res[("dense features", "bucketised ids")], "cvr/auc")
    mu = common.mean_std(d)[0]
    checks.append(
      common.check(
        "normalise + tanh dense embeddings above bucketised ids (paper: +0.004 AUC)",
        mu > 0,
        f"tanh − bucket = {mu:+.4f} CVR AUC",
      )
    )
  sections += ["## Checked against the paper", common.checks_markdown(checks)] if checks else []
  sections += [common.missing_markdown(args)]

  group_kinds = (
    ("history", "user's past purchase count (user_buys_hist), the paper's groups"),
    ("train_buys", "user's buys in the training rows used"),
  )
  for kind, title in group_kinds if {"esmm", "esm2"} <= set(groups) else ():
    rows = []
    n_groups = len(groups["esm2"][0]["groups"][kind])
    for gi in range(n_groups):
      g0 = groups["esm2"][0]["groups"][kind][gi]
      cells = [g0["group"], f"{g0['impressions']:,}", f"{g0['clicks']:,}", f"{g0['buys']:,}"]
      for name in ("esmm", "esm2"):
        for col in ("cvr_auc", "ctcvr_auc"):
          cells.append(common.fmt_num([r["groups"][kind][gi][col] for r in groups[name]]))
      rows.append(cells)
    sections += [
      f"## AUC by {title}",
      common.markdown_table(
        [
          "group",
          "impressions",
          "clicks",
          "buys",
          "ESMM CVR AUC",
          "ESMM CTCVR AUC",
          "ESM2 CVR AUC",
          "ESM2 CTCVR AUC",
        ],
        rows,
      ),
      "Counts are of the evaluation rows (first seed); a group with no positive or no negative "
      "has no AUC (–).",
    ]
  payload = {
    "axes": [
      {"axis": a, "variants": [{"label": l, "overrides": o} for l, o in vs]} for a, vs in AXES
    ],
    "reference_runs": ref,
    "runs": {f"{a}: {l}": r for (a, l), r in res.items()},
    "group_runs": groups,
    "checks": checks,
    "purchase_groups": groups_lib.groups_json(groups_lib.PAPER_PURCHASE_GROUPS),
    "train_buy_groups": groups_lib.groups_json(groups_lib.TRAIN_BUY_GROUPS),
  }
  common.write_results(args, "esm2_ablations", "\n\n".join(sections), payload)
  return payload


if __name__ == "__main__":
  main(sys.argv[1:])
