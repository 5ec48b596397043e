"""Tests of esmjax.evaluation.metrics: hand-computed cases, brute-force cross-checks, and
`evaluate`'s populations.

`python tests/test_metrics.py` also prints the time of auc / gauc on 2 M rows and 100 k users.
"""

import math
import time

import numpy as np
import pytest

from esmjax.evaluation import metrics as M


def brute_auc(y, s, w=None):
  """O(n_pos * n_neg) pairwise Mann–Whitney, ties counted half; the reference for `auc`."""
  y, s = np.asarray(y), np.asarray(s, np.float64)
  w = np.ones(len(y)) if w is None else np.asarray(w, np.float64)
  pos, neg = (y == 1) & (w > 0), (y == 0) & (w > 0)
  if not pos.any() or not neg.any():
    return float("nan")
  sp, sn = s[pos][:, None], s[neg][None, :]
  pair = (sp > sn) + 0.5 * (sp == sn)
  wp, wn = w[pos][:, None], w[neg][None, :]
  return float((pair * wp * wn).sum() / (wp.sum() * wn.sum()))


def loop_gauc(y, s, g, w=None):
  """A plain per-group Python loop over brute_auc; the reference for `gauc`."""
  y, s, g = np.asarray(y), np.asarray(s), np.asarray(g)
  w = np.ones(len(y)) if w is None else np.asarray(w, np.float64)
  num = den = 0.0
  for u in np.unique(g):
    m = (g == u) & (w > 0)
    a = brute_auc(y[m], s[m], w[m])
    if not math.isnan(a):
      num += w[m].sum() * a
      den += w[m].sum()
  return num / den if den else float("nan")


# ---------------------------------------------------------------------------------------------
# auc


def test_auc_perfect_reversed_tied():
  y = [0, 0, 1, 1, 0, 1]
  s = [0.1, 0.2, 0.7, 0.8, 0.3, 0.9]
  assert M.auc(y, s) == 1.0
  assert M.auc(y, [-x for x in s]) == 0.0
  assert M.auc(y, [0.5] * 6) == 0.5


def test_auc_hand_cases():
  # Positives 0.35, 0.8; negatives 0.1, 0.4. Pairs (pos > neg): 0.35>0.1 yes, 0.35>0.4 no,
  # 0.8>0.1 yes, 0.8>0.4 yes -> 3 of 4 = 0.75.
  assert M.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
  # Positives 0.5, 0.9; negatives 0.2, 0.5. 0.5 vs 0.2: 1; 0.5 vs 0.5: tie, 0.5;
  # 0.9 vs 0.2: 1; 0.9 vs 0.5: 1 -> 3.5 / 4 = 0.875.
  assert M.auc([0, 1, 0, 1], [0.2, 0.5, 0.5, 0.9]) == pytest.approx(0.875)
  # Ties inside one class do not matter: positives 0.6, 0.6; negatives 0.6, 0.1.
  # Each positive: 0.5 (vs 0.6) + 1 (vs 0.1) -> 3 / 4 = 0.75.
  assert M.auc([1, 1, 0, 0], [0.6, 0.6, 0.6, 0.1]) == pytest.approx(0.75)


def test_auc_weights_mask_and_multiplicity():
  y = np.array([0, 0, 1, 1, 1, 0])
  s = np.array([0.1, 0.4, 0.35, 0.8, 0.05, np.nan])  # masked rows may hold garbage
  w = np.array([1, 1, 1, 1, 0, 0])
  # With the masked rows out this is the 0.75 case above; the 0.05 positive would drag it down.
  assert M.auc(y, s, w) == pytest.approx(0.75)
  assert M.auc(y[:4], s[:4]) == pytest.approx(0.75)
  # Masked rows may even have labels outside {0, 1}.
  assert M.auc([0, 1, 7], [0.1, 0.9, 0.5], [1, 1, 0]) == 1.0
  # A weight of 2 counts like a duplicated row.
  assert M.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], [1, 2, 1, 1]) == pytest.approx(
    M.auc([0, 0, 0, 1, 1], [0.1, 0.4, 0.4, 0.35, 0.8])
  )


def test_auc_one_class_or_empty_is_nan():
  assert math.isnan(M.auc([1, 1, 1], [0.1, 0.2, 0.3]))
  assert math.isnan(M.auc([0, 0], [0.1, 0.2]))
  assert math.isnan(M.auc([0, 1], [0.1, 0.2], [1, 0]))
  assert math.isnan(M.auc([], []))


def test_auc_accepts_bool_labels_and_int_scores():
  assert M.auc(np.array([False, True, True]), np.array([1, 2, 2])) == 1.0


# ---------------------------------------------------------------------------------------------
# gauc


def test_gauc_hand_case():
  # User 7: labels [0,1,0,1], scores [0.3,0.6,0.7,0.8]; positive 0.6 beats 0.3 not 0.7 -> 1,
  #   positive 0.8 beats both -> 2; AUC = 3/4 = 0.75 over 4 rows.
  # User 3: labels [1,0], scores [0.2,0.2]; one tied pair -> AUC 0.5 over 2 rows.
  # User 11: labels [1,1,1] -> one class, skipped (its rows do not count in the weights).
  # GAUC = (4 * 0.75 + 2 * 0.5) / (4 + 2) = 4 / 6 = 0.6667.
  rows = [  # (user, label, score), users interleaved and unsorted on purpose
    (7, 0, 0.3),
    (3, 1, 0.2),
    (11, 1, 0.9),
    (7, 1, 0.6),
    (11, 1, 0.1),
    (7, 0, 0.7),
    (3, 0, 0.2),
    (7, 1, 0.8),
    (11, 1, 0.5),
  ]
  g, y, s = map(np.array, zip(*rows, strict=True))
  assert M.gauc(y, s, g) == pytest.approx(4 / 6)
  # A mask that leaves user 3 single-class drops it: GAUC = user 7 alone = 0.75.
  w = np.where((g == 3) & (y == 0), 0, 1)
  assert M.gauc(y, s, g, w) == pytest.approx(0.75)


def test_gauc_nan_when_no_group_qualifies():
  assert math.isnan(M.gauc([1, 0, 1], [0.1, 0.2, 0.3], [1, 2, 3]))
  assert math.isnan(M.gauc([], [], []))


# ---------------------------------------------------------------------------------------------
# brute-force cross-checks on random data with heavy ties


@pytest.mark.parametrize("seed", [0, 1])
def test_auc_and_gauc_match_brute_force(seed):
  rng = np.random.default_rng(seed)
  n = 5000
  s = np.round(rng.random(n), 2)  # ~100 distinct values: many ties, across classes too
  y = (rng.random(n) < 0.2 + 0.5 * s).astype(np.int8)
  g = rng.integers(-50, 150, n) * 1_000_003  # 200 users, negative and sparse keys
  w = rng.integers(0, 3, n).astype(np.float32)  # 0 = masked, 2 = counted twice
  assert M.auc(y, s) == pytest.approx(brute_auc(y, s), abs=1e-12)
  assert M.auc(y, s, w) == pytest.approx(brute_auc(y, s, w), abs=1e-12)
  assert M.gauc(y, s, g) == pytest.approx(loop_gauc(y, s, g), abs=1e-12)
  assert M.gauc(y, s, g, w) == pytest.approx(loop_gauc(y, s, g, w), abs=1e-12)
  # float32 scores with the same ties give the same answer.
  assert M.auc(y, s.astype(np.float32)) == pytest.approx(
    brute_auc(y, s.astype(np.float32)), abs=1e-12
  )


# ---------------------------------------------------------------------------------------------
# logloss, calibration


def test_logloss_and_calibration():
  y, p = [1, 0, 1, 0], [0.8, 0.4, 0.5, 0.1]
  expect = -(math.log(0.8) + math.log(0.6) + math.log(0.5) + math.log(0.9)) / 4
  assert M.logloss(y, p) == pytest.approx(expect)
  assert M.logloss([1, 0], [1.0, 0.0]) == pytest.approx(-math.log(1 - 1e-7))  # clipped, finite
  assert M.logloss([1, 0, 1], [0.8, 0.4, 0.0], [1, 1, 0]) == pytest.approx(
    -(math.log(0.8) + math.log(0.6)) / 2
  )
  # Mean prediction 0.45 / mean label 0.5.
  assert M.calibration(y, p) == pytest.approx(0.9)
  assert math.isnan(M.calibration([0, 0], [0.1, 0.2]))


# ---------------------------------------------------------------------------------------------
# evaluate


def _world(n=4000, seed=0):
  rng = np.random.default_rng(seed)
  users = rng.integers(0, 100, n).astype(np.int64)
  click = rng.random(n) < 0.3
  would_buy = rng.random(n) < 0.4
  buy = click & would_buy
  daction = click & (rng.random(n) < 0.5)
  # A pCVR that ranks clicked rows well but unclicked rows badly, so the populations differ.
  pcvr = np.where(click, np.where(buy, 0.7, 0.3), np.where(would_buy, 0.2, 0.8))
  pcvr = np.clip(pcvr + rng.normal(0, 0.05, n), 0, 1)
  pctr = np.clip(0.3 + 0.4 * click - 0.2 + rng.normal(0, 0.1, n), 0, 1)
  preds = {"pctr": pctr, "pcvr": pcvr, "pctcvr": pctr * pcvr, "pctavr": pctr * 0.5}
  labels = {
    "click": click.astype(np.uint8),
    "buy": buy.astype(np.uint8),
    "daction": daction.astype(np.uint8),
  }
  truth = {"would_buy": would_buy.astype(np.uint8), "pcvr": np.where(would_buy, 0.6, 0.4)}
  return preds, labels, users, truth


def test_evaluate_populations():
  preds, labels, users, truth = _world()
  out = M.evaluate(preds, labels, users, truth=truth)
  click = labels["click"] == 1
  cvr_clicked = M.auc(labels["buy"][click], preds["pcvr"][click])
  cvr_all_rows = M.auc(labels["buy"], preds["pcvr"])
  assert abs(cvr_clicked - cvr_all_rows) > 0.1  # the case is built so the population matters
  assert out["cvr/auc"] == pytest.approx(cvr_clicked)
  assert out["cvr/gauc"] == pytest.approx(
    M.gauc(labels["buy"][click], preds["pcvr"][click], users[click])
  )
  assert out["cvr/calibration"] == pytest.approx(
    M.calibration(labels["buy"][click], preds["pcvr"][click])
  )
  # Entire space: all rows against would-buy.
  assert out["cvr/entire_space_auc"] == pytest.approx(M.auc(truth["would_buy"], preds["pcvr"]))
  assert out["cvr/entire_space_auc"] != pytest.approx(out["cvr/auc"])
  assert out["cvr/entire_space_logloss"] == pytest.approx(
    M.logloss(truth["would_buy"], preds["pcvr"])
  )
  assert out["cvr/entire_space_oracle_auc"] == pytest.approx(
    M.auc(truth["would_buy"], truth["pcvr"])
  )
  assert out["ctr/auc"] == pytest.approx(M.auc(labels["click"], preds["pctr"]))
  ctcvr = labels["click"] & labels["buy"]
  assert out["ctcvr/auc"] == pytest.approx(M.auc(ctcvr, preds["pctcvr"]))
  assert out["ctavr/auc"] == pytest.approx(
    M.auc(labels["click"] & labels["daction"], preds["pctavr"])
  )
  assert out["n/impressions"] == 4000
  assert out["n/clicks"] == click.sum()
  assert out["n/buys"] == labels["buy"].sum()
  assert all(isinstance(v, float) for v in out.values())


def test_evaluate_keys_follow_inputs():
  preds, labels, users, truth = _world()
  tasks = lambda out: {k.split("/")[0] for k in out}
  full = M.evaluate(preds, labels, users, truth=truth)
  assert tasks(full) == {"ctr", "cvr", "ctcvr", "ctavr", "n"}
  for m in ("auc", "gauc", "logloss", "calibration"):
    assert f"ctavr/{m}" in full
  # No daction label, or no pctavr: no ctavr keys.
  no_da = {k: v for k, v in labels.items() if k != "daction"}
  assert "ctavr/auc" not in M.evaluate(preds, no_da, users)
  esmm = {k: v for k, v in preds.items() if k != "pctavr"}
  out = M.evaluate(esmm, labels, users)
  assert tasks(out) == {"ctr", "cvr", "ctcvr", "n"}
  assert not any("entire_space" in k for k in out)  # no truth given


def test_evaluate_weights_mask_padding():
  preds, labels, users, truth = _world()
  n = len(users)
  pad = 96  # padded tail of the last batch: garbage that the mask must hide
  cat = lambda a, v: np.concatenate([a, np.full(pad, v, a.dtype)])
  p2 = {k: cat(v, 0.99) for k, v in preds.items()}
  l2 = {k: cat(v, 1 if k != "buy" else 0) for k, v in labels.items()}
  t2 = {k: cat(v, 0) for k, v in truth.items()}
  w = np.r_[np.ones(n), np.zeros(pad)]
  a = M.evaluate(preds, labels, users, truth=truth)
  b = M.evaluate(p2, l2, cat(users, 0), weights=w, truth=t2)
  assert a.keys() == b.keys()
  for k in a:
    assert b[k] == pytest.approx(a[k], nan_ok=True), k


# ---------------------------------------------------------------------------------------------
# bad inputs


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match="scores"):
    M.auc([0, 1, 1], [0.1, 0.2])
  with pytest.raises(ValueError, match="weights"):
    M.auc([0, 1], [0.1, 0.2], [1, 1, 1])
  with pytest.raises(ValueError, match="groups"):
    M.gauc([0, 1], [0.1, 0.2], [1])
  with pytest.raises(ValueError, match="labels.*0/1"):
    M.auc([0, 2, 1], [0.1, 0.2, 0.3])
  with pytest.raises(ValueError, match="1-D"):
    M.auc(np.zeros((2, 2)), np.zeros((2, 2)))
  with pytest.raises(ValueError, match="non-finite"):
    M.auc([0, 1], [0.1, np.nan])
  with pytest.raises(ValueError, match="weights"):
    M.auc([0, 1], [0.1, 0.2], [1, -1])
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    M.logloss([0, 1], [0.1, 1.5])
  with pytest.raises(ValueError, match="labels"):
    M.calibration([0, 3], [0.1, 0.2])


def test_evaluate_bad_inputs_raise():
  preds, labels, users, _ = _world(100)
  with pytest.raises(ValueError, match=r"preds\['pcvr'\]"):
    M.evaluate(dict(preds, pcvr=preds["pcvr"][:-1]), labels, users)
  with pytest.raises(ValueError, match=r"labels\['buy'\].*0/1"):
    M.evaluate(preds, dict(labels, buy=labels["buy"] * 2), users)
  with pytest.raises(ValueError, match="unknown key"):
    M.evaluate(dict(preds, pcrv=preds["pcvr"]), labels, users)
  with pytest.raises(ValueError, match="'buy'"):
    M.evaluate(preds, {"click": labels["click"]}, users)
  with pytest.raises(ValueError, match="unclicked"):
    M.evaluate(preds, dict(labels, buy=np.ones(100, np.uint8)), users)
  with pytest.raises(ValueError, match="weights"):
    M.evaluate(preds, labels, users, weights=np.ones(99))
  with pytest.raises(ValueError, match=r"preds\['pctr'\].*\[0, 1\]"):
    M.evaluate(dict(preds, pctr=np.full(100, np.nan)), labels, users)
  with pytest.raises(ValueError, match="users"):
    M.evaluate(preds, labels, users[:, None])


if __name__ == "__main__":
  # Timing on the scale of a real evaluation shard: 2 M rows, 100 k users.
  rng = np.random.default_rng(0)
  n = 2_000_000
  users = rng.integers(0, 100_000, n).astype(np.int64)
  scores = rng.random(n).astype(np.float32)
  labels = (rng.random(n) < 0.3 * scores).astype(np.uint8)
  mask = (rng.random(n) < 0.99).astype(np.float32)
  for name, fn, args in (
    ("auc", M.auc, (labels, scores)),
    ("auc+mask", M.auc, (labels, scores, mask)),
    ("gauc", M.gauc, (labels, scores, users)),
    ("gauc+mask", M.gauc, (labels, scores, users, mask)),
  ):
    t = time.perf_counter()
    fn(*args)
    print(f"{name:10s} {n:,} rows: {time.perf_counter() - t:.3f} s")
