"""The evaluation's metrics computed where the predictions are: on the device, by one sort.

The same definitions as esmjax.evaluation.metrics (exact global AUC, ties counted half; GAUC;
population AUC;
log-loss; calibration; logit spread), for predictions that stay on the accelerator: millions of
rows are sorted there (`lax.sort`), and the host receives a few dozen numbers instead of every
row's predictions and labels.

After the sort by score (by (group, score) for GAUC), every row finds the first and the last row
of its tie run and of its group with a cumulative max / min of row indices, and reads from the
cumulative sums of positive and negative weight:

  n_before(row) = negatives before its tie run (in its group),  n_run(row) = negatives in its run,
  AUC numerator = sum_rows pos(row) · (n_before(row) + n_run(row) / 2),

which is the tie-run formula of esmjax.evaluation.metrics summed by rows instead of runs.
Everything runs in
float64 (`jax.enable_x64` around these functions only): with integer weights (the evaluation's
0/1 masks) every partial sum is an integer or a half-integer below 2^53, so AUC and population
AUC with 0/1 labels are bit-equal to esmjax.evaluation.metrics; GAUC, log-loss, calibration and the
logit spread sum in another order than NumPy and agree to ~1e-15 relative.

A weight of 0 removes a row exactly as in esmjax.evaluation.metrics (it adds nothing to any run or
group), so
the CVR metrics on clicked rows weigh every row by `click` instead of compacting the arrays (no
shape depends on the data, one compilation per evaluation size).

float64 needs a backend that has it: CPU and GPU do; `supported()` is False on TPU (the evaluator
then gathers to the host and uses esmjax.evaluation.metrics).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

_PROB_CLIP = 1e-7  # esmjax.evaluation.metrics._PROB_CLIP


def supported() -> bool:
  """float64 on the default backend (every backend but TPU)."""
  return jax.default_backend() != "tpu"


# ---------------------------------------------------------------------------------------------
# Building blocks (inside jit, float64).


def _run_bounds(start: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(first row, last row) of the run of each row, from the bool mask of run starts."""
  n = start.shape[0]
  idx = jnp.arange(n)
  first = lax.cummax(jnp.where(start, idx, 0))
  end = jnp.concatenate([start[1:], jnp.ones((1,), bool)])  # the next row starts a run
  last = lax.cummin(jnp.where(end, idx, n - 1), reverse=True)
  return first, last


def _cumsums(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(exclusive, inclusive) cumulative sums; the exclusive one is the inclusive one shifted, so
  both are non-decreasing for x >= 0."""
  inc = jnp.cumsum(x)
  return jnp.concatenate([jnp.zeros((1,), x.dtype), inc[:-1]]), inc


def _rank_sum(s, pos, neg, group_start=None):
  """Rows sorted by (group, score): per row pos · (negatives before its tie run in its group +
  half the negatives of its run)."""
  tie_start = jnp.concatenate([jnp.ones((1,), bool), s[1:] != s[:-1]])
  if group_start is not None:
    tie_start = tie_start | group_start
  t_first, t_last = _run_bounds(tie_start)
  n_ex, n_in = _cumsums(neg)
  before = n_ex[t_first]
  if group_start is not None:
    g_first, _ = _run_bounds(group_start)
    before = before - n_ex[g_first]
  return pos * (before + 0.5 * (n_in[t_last] - n_ex[t_first]))


def _auc(y, s, w):
  pos = w * y
  neg = w - pos
  s, pos, neg = lax.sort((s, pos, neg), num_keys=1)
  p, n = jnp.sum(pos), jnp.sum(neg)
  num = jnp.sum(_rank_sum(s, pos, neg))
  return jnp.where((p > 0) & (n > 0), num / jnp.where((p > 0) & (n > 0), p * n, 1.0), jnp.nan)


def _population_auc(q, s, w):
  pos = w * q
  neg = w - pos
  s, pos, neg = lax.sort((s, pos, neg), num_keys=1)
  own = jnp.sum(pos * neg)  # each row paired with itself: a tie, left out
  pairs = jnp.sum(pos) * jnp.sum(neg) - own
  num = jnp.sum(_rank_sum(s, pos, neg)) - 0.5 * own
  return jnp.where(pairs > 0, num / jnp.where(pairs > 0, pairs, 1.0), jnp.nan)


def _gauc(y, s, g, w):
  pos = w * y
  neg = w - pos
  g, s, pos, neg = lax.sort((g, s, pos, neg), num_keys=2)
  group_start = jnp.concatenate([jnp.ones((1,), bool), g[1:] != g[:-1]])
  contrib = _rank_sum(s, pos, neg, group_start)
  first, last = _run_bounds(group_start)

  def per_group(x):  # the group's sum, on every row of the group
    ex, inc = _cumsums(x)
    return inc[last] - ex[first]

  num, p_g, n_g = per_group(contrib), per_group(pos), per_group(neg)
  is_last = jnp.arange(g.shape[0]) == last
  ok = is_last & (p_g > 0) & (n_g > 0)
  size = jnp.where(ok, p_g + n_g, 0.0)
  total = jnp.sum(size)
  group_auc = num / jnp.where(ok, p_g * n_g, 1.0)
  return jnp.where(total > 0, jnp.sum(size * group_auc) / jnp.where(total > 0, total, 1.0), jnp.nan)


def _logloss(y, p, w):
  total = jnp.sum(w)
  p = jnp.clip(p, _PROB_CLIP, 1.0 - _PROB_CLIP)
  ll = -(y * jnp.log(p) + (1.0 - y) * jnp.log1p(-p))
  return jnp.where(total > 0, jnp.sum(w * ll) / jnp.where(total > 0, total, 1.0), jnp.nan)


def _calibration(y, p, w):
  pos = jnp.sum(w * y)
  return jnp.where(pos > 0, jnp.sum(w * p) / jnp.where(pos > 0, pos, 1.0), jnp.nan)


def _logit_std(p, w=None):
  """metrics.logit_std over the rows of weight 1 (all rows when `w` is None); nan under two."""
  p = jnp.clip(p, _PROB_CLIP, 1.0 - _PROB_CLIP)
  z = (jnp.log(p) - jnp.log1p(-p)).astype(jnp.float64)
  w = jnp.ones_like(z) if w is None else w
  n = jnp.sum(w)
  mean = jnp.sum(w * z) / jnp.maximum(n, 1.0)
  std = jnp.sqrt(jnp.sum(w * (z - mean) ** 2) / jnp.maximum(n, 1.0))
  return jnp.where(n >= 2, std, jnp.nan)


def _task(out: dict, name: str, y, p, users, w) -> None:
  out[f"{name}/auc"] = _auc(y, p, w)
  out[f"{name}/gauc"] = _gauc(y, p, users, w)
  out[f"{name}/logloss"] = _logloss(y, p, w)
  out[f"{name}/calibration"] = _calibration(y, p, w)


def _is01(x) -> jax.Array:
  return jnp.all((x == 0) | (x == 1))


def _is_prob(x) -> jax.Array:
  return jnp.all((x >= 0) & (x <= 1))  # False for NaN


# ---------------------------------------------------------------------------------------------
# The evaluation: esmjax.evaluation.metrics.evaluate (all rows live) plus the collapse spreads.


@jax.jit
def _evaluate(preds: dict, labels: dict, users, truth: dict):
  f64 = jnp.float64
  preds = {k: v.astype(f64) for k, v in preds.items()}
  checks = {f"preds[{k!r}]": _is_prob(v) for k, v in preds.items()}
  checks.update({f"labels[{k!r}]": _is01(v) for k, v in labels.items()})
  checks.update({f"truth[{k!r}]": _is01(v) for k, v in truth.items() if k == "would_buy"})
  if "pcvr" in truth:
    checks["truth['pcvr']"] = _is_prob(truth["pcvr"])
  click, buy = labels["click"] == 1, labels["buy"] == 1
  checks["buy only after a click"] = ~jnp.any(buy & ~click)
  w = jnp.ones(users.shape, f64)
  wc = click.astype(f64)
  out = {
    "n/impressions": jnp.sum(w),
    "n/clicks": jnp.sum(wc),
    "n/buys": jnp.sum((click & buy).astype(f64)),
  }
  daction = None
  if "daction" in labels:
    daction = labels["daction"] == 1
    checks["daction only after a click"] = ~jnp.any(daction & ~click)
    out["n/dactions"] = jnp.sum((click & daction).astype(f64))
  if "pctr" in preds:
    _task(out, "ctr", click.astype(f64), preds["pctr"], users, w)
  if "pcvr" in preds:
    _task(out, "cvr", buy.astype(f64), preds["pcvr"], users, wc)  # on clicked rows: weight click
  if "pctcvr" in preds:
    _task(out, "ctcvr", (click & buy).astype(f64), preds["pctcvr"], users, w)
  if "pctavr" in preds and daction is not None:
    _task(out, "ctavr", (click & daction).astype(f64), preds["pctavr"], users, w)
  if "would_buy" in truth and "pcvr" in preds:
    wb = truth["would_buy"].astype(f64)
    out["cvr/entire_space_auc"] = _auc(wb, preds["pcvr"], w)
    out["cvr/entire_space_logloss"] = _logloss(wb, preds["pcvr"], w)
    out["cvr/entire_space_calibration"] = _calibration(wb, preds["pcvr"], w)
  if "would_buy" in truth and "pcvr" in truth:
    out["cvr/entire_space_oracle_auc"] = _auc(
      truth["would_buy"].astype(f64), truth["pcvr"].astype(f64), w
    )
  if "pcvr" in truth and "pcvr" in preds:
    q = truth["pcvr"].astype(f64)
    out["cvr/population_auc"] = _population_auc(q, preds["pcvr"], wc)
    out["cvr/entire_space_population_auc"] = _population_auc(q, preds["pcvr"], w)
  spread = {}  # each task on its own rows: CVR on the clicked ones, the others on all
  for k, p in preds.items():
    on = wc if k == "pcvr" else w
    live = on > 0
    lo, hi = jnp.min(jnp.where(live, p, jnp.inf)), jnp.max(jnp.where(live, p, -jnp.inf))
    spread[k] = (_logit_std(p, on), lo, hi, jnp.sum(on))
  return out, spread, checks


def evaluate(
  preds: dict[str, jax.Array],
  labels: dict[str, jax.Array],
  users: jax.Array,
  truth: dict[str, jax.Array] | None = None,
) -> tuple[dict[str, float], dict[str, tuple[float, float, float, float]]]:
  """esmjax.evaluation.metrics.evaluate(preds, labels, users, truth=truth) on device arrays (every
  row live,
  no weights), plus {prediction key: (logit std, min, max, rows)} for the collapse check, each
  over the task's own rows (CVR: the clicked ones).

  Arrays are 1-D with one row per impression: preds among pctr/pcvr/pctcvr/pctavr, labels click,
  buy (required) and daction, truth would_buy and pcvr. Raises ValueError naming the first input
  that is not 0/1 or not a probability, or a buy/daction on an unclicked impression, as
  esmjax.evaluation.metrics does.
  """
  for k in ("click", "buy"):
    if k not in labels:
      raise ValueError(f"evaluate: `labels` needs key {k!r}; got {sorted(labels)}")
  with jax.enable_x64(True):
    out, spread, checks = jax.device_get(_evaluate(preds, labels, users, dict(truth or {})))
  for what, ok in checks.items():
    if not bool(ok):
      raise ValueError(_check_message(what))
  return (
    {k: float(v) for k, v in out.items()},
    {k: tuple(float(x) for x in v) for k, v in spread.items()},
  )


def _check_message(what: str) -> str:
  if what.startswith("preds") or what == "truth['pcvr']":
    return f"evaluate: `{what}` must be probabilities in [0, 1] (NaN found or out of range)"
  if what.startswith(("labels", "truth")):
    return f"evaluate: `{what}` must be 0/1"
  if what.startswith("buy"):
    return "evaluate: `labels['buy']` is 1 on an unclicked impression (click=0, buy=1)"
  return "evaluate: `labels['daction']` is 1 on an unclicked impression"


# ---------------------------------------------------------------------------------------------
# Single metrics on device arrays (the same arguments as esmjax.evaluation.metrics; no input
# checks).


def _single(fn, *arrays, weights=None, groups=None):
  """fn(*arrays as float64[, groups], weights) under jit; nan without rows."""
  with jax.enable_x64(True):
    arrays = [jnp.asarray(a, jnp.float64) for a in arrays]
    if arrays[0].shape[0] == 0:
      return float("nan")
    if groups is not None:
      arrays.append(jnp.asarray(groups))
    w = jnp.ones(arrays[0].shape, jnp.float64) if weights is None else weights
    return float(jax.jit(fn)(*arrays, jnp.asarray(w, jnp.float64)))


def auc(labels, scores, weights=None) -> float:
  return _single(_auc, labels, scores, weights=weights)


def population_auc(probs, scores, weights=None) -> float:
  return _single(_population_auc, probs, scores, weights=weights)


def gauc(labels, scores, groups, weights=None) -> float:
  return _single(_gauc, labels, scores, groups=groups, weights=weights)


def logloss(labels, probs, weights=None) -> float:
  return _single(_logloss, labels, probs, weights=weights)


def calibration(labels, probs, weights=None) -> float:
  return _single(_calibration, labels, probs, weights=weights)


def logit_std(probs) -> float:
  with jax.enable_x64(True):
    p = jnp.asarray(probs)
    return float(jax.jit(_logit_std)(p.astype(jnp.float64)))


__all__ = [
  "auc",
  "calibration",
  "evaluate",
  "gauc",
  "logit_std",
  "logloss",
  "population_auc",
  "supported",
]
