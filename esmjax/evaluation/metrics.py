"""Evaluation metrics: exact global AUC, GAUC, log-loss, calibration, and `evaluate`.

Pure NumPy on host arrays: evaluation gathers the whole evaluation set's predictions first, because
AUC is a property of the whole ranking and must never be averaged over batches.

AUC is the Mann–Whitney statistic with ties counted half. After one sort by score, rows with equal
scores form tie runs; with P_t / N_t the (weighted) positives / negatives of run t,

    AUC = sum_t P_t * (N_before_t + N_t / 2) / (P * N),

which is exactly the average-rank formula and costs one sort plus segment sums. GAUC sorts once by
(group, score) so that the same sum, restarted at each group, gives every group's AUC at once.

Weights are per-row and non-negative; a weight of 0 removes the row entirely (it is the mask of
padded rows), so such rows may carry any label or score, NaN included.

Without weights, float32 scores (every model's predictions) are ranked by
esmjax.evaluation.ranking (one uint64 key per row, sorted in place: 8 B per row instead of ~150)
and log-loss and calibration are summed a chunk at a time; the results equal this module's
float64 path (AUC bit for bit, the others to ~1e-15; tests/test_ranking.py).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from esmjax.evaluation import ranking

_PROB_CLIP = 1e-7  # for the log of log-loss only; evaluation, so bending gradients is not a concern
PRED_KEYS = ("pctr", "pcvr", "pctcvr", "pctavr")
LABEL_KEYS = (
  "click",
  "buy",
  "cart",
  "wish",
  "daction",
)  # the dataset's labels; cart/wish unused here
TRUTH_KEYS = ("would_buy", "pcvr")


# ---------------------------------------------------------------------------------------------
# Input checks.


def _vector(x, name: str, n: int | None, fn: str) -> np.ndarray:
  a = np.asarray(x)
  if a.ndim != 1:
    raise ValueError(f"{fn}: `{name}` must be 1-D, got shape {a.shape}")
  if n is not None and a.shape[0] != n:
    raise ValueError(
      f"{fn}: `{name}` has {a.shape[0]} rows, expected {n} (the length of the first argument)"
    )
  return a


def _prepare(fn: str, labels, values, weights, values_name: str, groups=None, probs: bool = False):
  """Checks shapes and values; drops zero-weight rows; returns float64 (y, v, w[, g])."""
  y = _vector(labels, "labels", None, fn)
  n = y.shape[0]
  v = _vector(values, values_name, n, fn)
  g = None if groups is None else _vector(groups, "groups", n, fn)
  if weights is None:
    w = None
  else:
    w = _vector(weights, "weights", n, fn).astype(np.float64, copy=False)
    if not np.all(np.isfinite(w)) or np.any(w < 0):
      raise ValueError(f"{fn}: `weights` must be finite and >= 0")
    keep = w > 0
    if not keep.all():
      # Masked rows go before any value check: padding may hold garbage labels or NaN scores.
      y, v, w = y[keep], v[keep], w[keep]
      g = None if g is None else g[keep]
  if y.dtype != np.bool_:
    if not np.all((y == 0) | (y == 1)):
      bad = np.unique(y[~((y == 0) | (y == 1))])[:5]
      raise ValueError(f"{fn}: `labels` must be 0/1, found {bad.tolist()}")
  y = y.astype(np.float64, copy=False)
  if v.dtype.kind not in "biuf":
    raise ValueError(f"{fn}: `{values_name}` must be numeric, got dtype {v.dtype}")
  v = v.astype(np.float64, copy=False)
  if not np.all(np.isfinite(v)):
    raise ValueError(f"{fn}: `{values_name}` has non-finite values")
  if probs and (np.any(v < 0) or np.any(v > 1)):
    raise ValueError(f"{fn}: `{values_name}` must lie in [0, 1]")
  if w is None:
    w = np.ones_like(y)
  return (y, v, w) if groups is None else (y, v, w, g)


def _unweighted(fn: str, labels, values, values_name: str, probs: bool = False, groups=None):
  """`_prepare`'s checks without its float64 copies, for unweighted inputs: (y, v[, g]) as given."""
  y = _vector(labels, "labels", None, fn)
  n = y.shape[0]
  v = _vector(values, values_name, n, fn)
  g = None if groups is None else _vector(groups, "groups", n, fn)
  if y.dtype != np.bool_ and not np.all((y == 0) | (y == 1)):
    bad = np.unique(y[~((y == 0) | (y == 1))])[:5]
    raise ValueError(f"{fn}: `labels` must be 0/1, found {bad.tolist()}")
  if v.dtype.kind not in "biuf" and not ranking.supported(v):
    raise ValueError(f"{fn}: `{values_name}` must be numeric, got dtype {v.dtype}")
  if v.dtype.kind == "f" or ranking.supported(v):
    if not np.all(np.isfinite(v)):
      raise ValueError(f"{fn}: `{values_name}` has non-finite values")
  if probs and (np.any(v < 0) or np.any(v > 1)):
    raise ValueError(f"{fn}: `{values_name}` must lie in [0, 1]")
  return (y, v) if groups is None else (y, v, g)


def _ranked(weights, scores) -> bool:
  """Whether the metric goes through esmjax.evaluation.ranking (module doc)."""
  return weights is None and ranking.supported(scores)


def _run_starts(*sorted_keys: np.ndarray) -> np.ndarray:
  """Bool mask of the rows that start a run of equal keys (all keys equal to the previous row's)."""
  n = sorted_keys[0].shape[0]
  start = np.zeros(n, dtype=bool)
  if n:
    start[0] = True
  for k in sorted_keys:
    start[1:] |= k[1:] != k[:-1]
  return start


# ---------------------------------------------------------------------------------------------
# Metrics.


def _tie_runs(scores, pos, weights):
  """Rows sorted by score: their positive weight `pos` and negative weight `weights − pos`, and
  both summed per run of equal scores; None without rows. The sort's stability is irrelevant:
  equal scores are summed as one tie run."""
  order = np.argsort(scores)
  s, pos = scores[order], pos[order]
  neg = weights[order] - pos
  starts = np.flatnonzero(_run_starts(s))
  if starts.size == 0:
    return None
  return pos, neg, np.add.reduceat(pos, starts), np.add.reduceat(neg, starts)


def auc(labels, scores, weights=None) -> float:
  """Exact ROC AUC over all rows, ties counted half; nan when only one class is present."""
  if _ranked(weights, scores):
    return ranking.auc(*_unweighted("auc", labels, scores, "scores"))
  y, s, w = _prepare("auc", labels, scores, weights, "scores")
  runs = _tie_runs(s, w * y, w)
  if runs is None:
    return float("nan")
  _, _, p_t, n_t = runs
  p, n = p_t.sum(), n_t.sum()
  if p <= 0 or n <= 0:
    return float("nan")
  n_before = np.cumsum(n_t) - n_t
  return float(np.dot(p_t, n_before + 0.5 * n_t) / (p * n))


def population_auc(probs, scores, weights=None) -> float:
  """AUC against known label probabilities instead of drawn labels (synthetic truth: row i is
  positive with probability q_i = probs[i], independently): the chance that a positive row
  outscores a negative one over the label draws, ties counted half, pairs of distinct rows only:

    sum_{i != j} w_i q_i · w_j (1 − q_j) · ([s_i > s_j] + ½[s_i = s_j])
    / sum_{i != j} w_i q_i · w_j (1 − q_j).

  An AUC on one draw of rare labels estimates it with the noise of the few positives; with 0/1
  probabilities it is `auc` exactly. nan when no pair of distinct rows can differ in label.
  """
  fn = "population_auc"
  q = _vector(probs, "probs", None, fn)
  if _ranked(weights, scores):
    _, s, q = _unweighted(fn, np.zeros(q.shape[0], bool), scores, "scores", groups=q)
    if q.dtype.kind not in "biuf" or not np.all((q >= 0) & (q <= 1)):
      raise ValueError(f"{fn}: `probs` must be probabilities in [0, 1] (NaN found or out of range)")
    return ranking.population_auc(q, s)
  # `groups` carries q through the same zero-weight filter as the scores.
  _, s, w, q = _prepare(fn, np.zeros(q.shape[0]), scores, weights, "scores", groups=q)
  if q.dtype.kind not in "biuf" or not np.all((q >= 0) & (q <= 1)):
    raise ValueError(f"{fn}: `probs` must be probabilities in [0, 1] (NaN found or out of range)")
  runs = _tie_runs(s, w * q.astype(np.float64), w)
  if runs is None:
    return float("nan")
  pos, neg, p_t, n_t = runs
  own = float(np.dot(pos, neg))  # each row paired with itself: a tie, left out
  pairs = p_t.sum() * n_t.sum() - own
  if pairs <= 0:
    return float("nan")
  n_before = np.cumsum(n_t) - n_t
  return float((np.dot(p_t, n_before + 0.5 * n_t) - 0.5 * own) / pairs)


def gauc(labels, scores, groups, weights=None) -> float:
  """Group AUC: per-group AUC averaged with weights = the group's (weighted) row count.

  Groups whose (kept) rows are all one class are skipped; nan when no group has both classes.
  """
  if _ranked(weights, scores):
    return ranking.gauc(*_unweighted("gauc", labels, scores, "scores", groups=groups))
  y, s, w, g = _prepare("gauc", labels, scores, weights, "scores", groups=groups)
  if y.size == 0:
    return float("nan")
  # Order by (group, score), so tie runs never cross a group boundary. Two passes (any sort by
  # score, then a stable sort by group) measured ~1.5x faster than np.lexsort on 2 M rows.
  order = np.argsort(s)
  order = order[np.argsort(g[order], kind="stable")]
  g, s, pos = g[order], s[order], (w * y)[order]
  neg = w[order] - pos
  group_start = _run_starts(g)
  tie_start = group_start.copy()
  tie_start[1:] |= s[1:] != s[:-1]
  ties = np.flatnonzero(tie_start)
  p_t = np.add.reduceat(pos, ties)
  n_t = np.add.reduceat(neg, ties)
  # Which tie runs open a group; negatives before each run counted from its group's start.
  opens = group_start[ties]
  first = np.flatnonzero(opens)
  gid = np.cumsum(opens) - 1
  n_cum = np.cumsum(n_t) - n_t
  n_before = n_cum - n_cum[first][gid]
  num = np.add.reduceat(p_t * (n_before + 0.5 * n_t), first)
  p_g = np.add.reduceat(p_t, first)
  n_g = np.add.reduceat(n_t, first)
  ok = (p_g > 0) & (n_g > 0)
  if not ok.any():
    return float("nan")
  size = p_g[ok] + n_g[ok]
  return float(np.dot(size, num[ok] / (p_g[ok] * n_g[ok])) / size.sum())


def logloss(labels, probs, weights=None) -> float:
  """Weighted mean binary cross-entropy; probs clipped to [1e-7, 1 - 1e-7] for the log only."""
  if weights is None:
    y, p = _unweighted("logloss", labels, probs, "probs", probs=True)
    total = 0.0
    for s in range(0, len(y), ranking.CHUNK):
      yc = y[s : s + ranking.CHUNK].astype(np.float64)
      pc = np.clip(p[s : s + ranking.CHUNK].astype(np.float64), _PROB_CLIP, 1.0 - _PROB_CLIP)
      total += float(-(yc * np.log(pc) + (1.0 - yc) * np.log1p(-pc)).sum())
    return total / len(y) if len(y) else float("nan")
  y, p, w = _prepare("logloss", labels, probs, weights, "probs", probs=True)
  total = w.sum()
  if total <= 0:
    return float("nan")
  p = np.clip(p, _PROB_CLIP, 1.0 - _PROB_CLIP)
  ll = -(y * np.log(p) + (1.0 - y) * np.log1p(-p))
  return float(np.dot(w, ll) / total)


def calibration(labels, probs, weights=None) -> float:
  """Mean prediction / mean label (1 = calibrated on average); nan if the mean label is 0."""
  if weights is None:
    y, p = _unweighted("calibration", labels, probs, "probs", probs=True)
    pos = float(np.count_nonzero(y))
    if pos <= 0:
      return float("nan")
    c = ranking.CHUNK
    return sum(float(p[s : s + c].sum(dtype=np.float64)) for s in range(0, len(p), c)) / pos
  y, p, w = _prepare("calibration", labels, probs, weights, "probs", probs=True)
  pos = np.dot(w, y)
  if pos <= 0:
    return float("nan")
  return float(np.dot(w, p) / pos)


def logit_std(probs) -> float:
  """The standard deviation of the predictions' logits, log(p / (1 - p)) with p clipped to
  [1e-7, 1 - 1e-7] as for log-loss; nan for fewer than two rows.

  A spread that means the same in both tails: near p = 0 it is the spread of log p (the relative
  spread), so a CTCVR at 0.5 % and a CTR at 5 % are measured alike.
  """
  p = _vector(probs, "probs", None, "logit_std")
  if p.size < 2:
    return float("nan")
  if not np.all((p >= 0) & (p <= 1)):
    raise ValueError(
      "logit_std: `probs` must be probabilities in [0, 1] (NaN found or out of range)"
    )

  def logits(s: int):  # float64 logits of one chunk, shifted by the first row's
    c = np.clip(p[s : s + ranking.CHUNK].astype(np.float64), _PROB_CLIP, 1.0 - _PROB_CLIP)
    return np.log(c) - np.log1p(-c) - z0

  z0 = 0.0
  z0 = float(logits(0)[0])  # shifted: equal logits give exactly 0
  chunks = range(0, p.size, ranking.CHUNK)
  mean = sum(float(logits(s).sum()) for s in chunks) / p.size
  return float(np.sqrt(sum(float(((logits(s) - mean) ** 2).sum()) for s in chunks) / p.size))


# ---------------------------------------------------------------------------------------------
# The evaluation (docs/design.md, Evaluation).


def _task(out: dict, name: str, y, p, users, w) -> None:
  out[f"{name}/auc"] = auc(y, p, w)
  out[f"{name}/gauc"] = gauc(y, p, users, w)
  out[f"{name}/logloss"] = logloss(y, p, w)
  out[f"{name}/calibration"] = calibration(y, p, w)


def evaluate(
  preds: Mapping[str, np.ndarray],
  labels: Mapping[str, np.ndarray],
  users,
  weights=None,
  truth: Mapping[str, np.ndarray] | None = None,
) -> dict[str, float]:
  """All metrics of one whole evaluation set.

  Args:
    preds: 1-D probabilities, keys among `PRED_KEYS` (pctr, pcvr, pctcvr, pctavr).
    labels: 1-D 0/1 arrays; `click` and `buy` required, `daction` optional.
    users: 1-D user keys (the GAUC groups).
    weights: optional 1-D per-row weights; 0 masks a (padded) row out.
    truth: optional synthetic ground truth: `would_buy` (0/1, buy-if-clicked for every impression)
      and `pcvr` (the true conversion probability).

  Returns:
    Python floats keyed `task/metric` (tasks ctr, cvr, ctcvr, ctavr), only for what the inputs
    allow; CVR on clicked impressions only, the others (and `cvr/entire_space_*`) on all
    impressions; `n/*` are weighted counts.
  """
  fn = "evaluate"
  _check_keys(preds, labels, truth)
  u = _vector(users, "users", None, fn)
  n = u.shape[0]
  # Without weights every row is live: no per-row weights or live mask are made (memory).
  w = live = None
  if weights is not None:
    w = _vector(weights, "weights", n, fn).astype(np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0):
      raise ValueError(f"{fn}: `weights` must be finite and >= 0")
    live = w > 0
  click, buy, daction = _event_labels(labels, live, n)
  p = {k: _prob(preds, k, "preds", live, n) for k in preds}

  def count(mask) -> float:
    return float(np.count_nonzero(mask)) if w is None else float(w[mask].sum())

  out: dict[str, float] = {
    "n/impressions": float(n) if w is None else float(w.sum()),
    "n/clicks": count(click),
    "n/buys": count(click & buy),
  }
  if daction is not None:
    out["n/dactions"] = count(click & daction)
  if "pctr" in p:
    _task(out, "ctr", click, p["pctr"], u, w)
  if "pcvr" in p:
    # Selection: CVR is only observed where the user clicked, so that is its population.
    _task(out, "cvr", buy[click], p["pcvr"][click], u[click], _rows(w, click))
  if "pctcvr" in p:
    _task(out, "ctcvr", click & buy, p["pctcvr"], u, w)
  if "pctavr" in p and daction is not None:
    _task(out, "ctavr", click & daction, p["pctavr"], u, w)
  if truth:
    _truth_metrics(out, truth, p, click, w, live)
  return out


def _check_keys(preds: Mapping, labels: Mapping, truth: Mapping | None) -> None:
  """No unknown key in `preds`, `labels`, `truth`; `labels` has click and buy."""
  for what, d, allowed in (
    ("preds", preds, PRED_KEYS),
    ("labels", labels, LABEL_KEYS),
    ("truth", truth or {}, TRUTH_KEYS),
  ):
    unknown = sorted(set(d) - set(allowed))
    if unknown:
      raise ValueError(f"evaluate: `{what}` has unknown key(s) {unknown}; allowed: {list(allowed)}")
  for k in ("click", "buy"):
    if k not in labels:
      raise ValueError(f"evaluate: `labels` needs key {k!r}; got {sorted(labels)}")


def _rows(w, mask):
  """`w[mask]`, or None (no weights)."""
  return None if w is None else w[mask]


def _label(src: Mapping, k: str, what: str, live, n: int) -> np.ndarray:
  """`src[k]` as bool, checked to be 0/1 on the live rows (all rows when `live` is None)."""
  a = _vector(src[k], f"{what}[{k!r}]", n, "evaluate")
  v = a if live is None else a[live]
  if not np.all((v == 0) | (v == 1)):
    raise ValueError(f"evaluate: `{what}[{k!r}]` must be 0/1")
  return a.astype(bool)


def _prob(src: Mapping, k: str, what: str, live, n: int) -> np.ndarray:
  """`src[k]`, checked to be probabilities on the live rows (all when `live` is None; here, so
  that an error names the prediction, not the inner metric's argument)."""
  a = _vector(src[k], f"{what}[{k!r}]", n, "evaluate")
  v = a if live is None else a[live]
  numeric = v.dtype.kind in "biuf" or ranking.supported(v)
  if not numeric or not np.all((v >= 0) & (v <= 1)):
    raise ValueError(
      f"evaluate: `{what}[{k!r}]` must be probabilities in [0, 1] (NaN found or out of range)"
    )
  return a


def _event_labels(labels: Mapping, live, n: int):
  """(click, buy, daction or None) as bool, checked: 0/1, and nothing after an unclicked
  impression (on the live rows; all when `live` is None)."""
  click = _label(labels, "click", "labels", live, n)
  buy = _label(labels, "buy", "labels", live, n)
  on = True if live is None else live
  # The causal chain is impression -> click -> action -> buy; an unclicked buy is corrupt data.
  if np.any(buy & ~click & on):
    raise ValueError("evaluate: `labels['buy']` is 1 on an unclicked impression (click=0, buy=1)")
  daction = None
  if "daction" in labels:
    daction = _label(labels, "daction", "labels", live, n)
    if np.any(daction & ~click & on):
      raise ValueError("evaluate: `labels['daction']` is 1 on an unclicked impression")
  return click, buy, daction


def _truth_metrics(out: dict, truth: Mapping, p: dict, click, w, live) -> None:
  """The CVR metrics against the synthetic ground truth, into `out`."""
  if "would_buy" in truth:
    n = len(click)
    would_buy = _label(truth, "would_buy", "truth", live, n)
    if "pcvr" in p:
      # Entire-space CVR: the whole impression space against the counterfactual buy label,
      # the direct measure of sample selection bias.
      out["cvr/entire_space_auc"] = auc(would_buy, p["pcvr"], w)
      out["cvr/entire_space_logloss"] = logloss(would_buy, p["pcvr"], w)
      out["cvr/entire_space_calibration"] = calibration(would_buy, p["pcvr"], w)
    if "pcvr" in truth:
      # The ceiling: the best entire-space AUC any model could reach in this world.
      q = _prob(truth, "pcvr", "truth", live, n)
      out["cvr/entire_space_oracle_auc"] = auc(would_buy, q, w)
  if "pcvr" in truth and "pcvr" in p:
    # The same CVR AUCs against the true pCVR instead of drawn buys: without the label noise of
    # rare conversions, which dominates an AUC on a few hundred buyers.
    q = _prob(truth, "pcvr", "truth", live, len(click))
    out["cvr/population_auc"] = population_auc(q[click], p["pcvr"][click], _rows(w, click))
    out["cvr/entire_space_population_auc"] = population_auc(q, p["pcvr"], w)
