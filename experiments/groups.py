"""CVR and CTCVR AUC per user purchase-count group (the ESM2 paper's analysis)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# Purchase-count groups of the ESM2 paper's analysis (inclusive bounds).
PAPER_PURCHASE_GROUPS = ((0, 10), (11, 20), (21, 50), (51, math.inf))
TRAIN_BUY_GROUPS = ((0, 0), (1, 1), (2, math.inf))  # buys of the user in the training rows used


def groups_json(bounds) -> list[list]:
  return [[lo, None if math.isinf(hi) else hi] for lo, hi in bounds]  # None = no upper bound


def purchase_group_aucs(
  cols: dict[str, np.ndarray], schema, train: dict[str, np.ndarray]
) -> dict[str, Any]:
  """CVR AUC (clicked rows) and CTCVR AUC per user purchase-count group, two ways:

  `history`: the user's past purchase count (dense feature user_buys_hist, the synthetic analogue
  of the ESM2 paper's per-user purchase count) in the paper's groups [0,10], [11,20], [21,50], 51+;
  `train_buys`: the user's buys in the training rows used, in groups 0, 1, 2+.
  """
  from esmjax.evaluation import metrics

  lab = {name: cols["labels"][:, i].astype(bool) for i, name in enumerate(schema.labels)}
  click, buy = lab["click"], lab["buy"]
  dense_names = [f.name for f in schema.dense]
  hist = (
    cols["dense"][:, dense_names.index("user_buys_hist")]
    if "user_buys_hist" in dense_names
    else None
  )
  users = cols["user"].astype(np.int64)
  tb = train["labels"][:, schema.labels.index("buy")].astype(bool)
  tu = train["user"].astype(np.int64)
  size = int(max(users.max(initial=0), tu.max(initial=0))) + 1
  buys_per_user = np.bincount(tu[tb], minlength=size)[users]
  out = {}
  for name, counts, bounds in (
    ("history", hist, PAPER_PURCHASE_GROUPS),
    ("train_buys", buys_per_user, TRAIN_BUY_GROUPS),
  ):
    if counts is None:
      continue
    rows = []
    for lo, hi in bounds:
      g = (counts >= lo) & (counts <= hi)
      gc = g & click
      rows.append(
        {
          "group": f"[{lo},{'+' if math.isinf(hi) else int(hi)}]" if lo != hi else f"{lo}",
          "impressions": int(g.sum()),
          "clicks": int(gc.sum()),
          "buys": int((gc & buy).sum()),
          "cvr_auc": float(metrics.auc(buy[gc], cols["pcvr"][gc])) if gc.any() else float("nan"),
          "ctcvr_auc": float(metrics.auc((click & buy)[g], cols["pctcvr"][g]))
          if g.any()
          else float("nan"),
        }
      )
    out[name] = rows
  return out
