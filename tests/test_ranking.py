"""esmjax.evaluation.ranking: the unweighted float32 path of metrics.auc / gauc / population_auc /
evaluate equals the general float64 path (weights of one), AUC bit for bit, across chunk
boundaries that split tie runs and groups."""

import math

import ml_dtypes
import numpy as np
import pytest
from test_metrics import brute_auc, loop_gauc

from esmjax.evaluation import metrics as M
from esmjax.evaluation import ranking


def _data(n, seed, levels=50, groups=40):
  rng = np.random.default_rng(seed)
  s = (rng.integers(0, levels, n) / levels).astype(np.float32)  # heavy ties, across classes
  y = (rng.random(n) < 0.1 + 0.6 * s).astype(np.uint8)
  g = rng.integers(0, groups, n) * 7919 - 3000  # negative and sparse user keys
  q = rng.random(n).astype(np.float32)
  return y, s, g, q


@pytest.fixture(params=[3, 64, ranking.CHUNK])
def chunk(request, monkeypatch):
  """Chunks of 3 and 64 rows split tie runs and groups at every kind of boundary."""
  monkeypatch.setattr(ranking, "CHUNK", request.param)
  return request.param


@pytest.mark.parametrize("seed", [0, 1])
def test_ranked_metrics_equal_the_float64_path(chunk, seed):
  y, s, g, q = _data(1000, seed)
  ones = np.ones(len(y))
  assert M.auc(y, s) == M.auc(y, s, ones)  # bit for bit
  assert M.auc(y, s) == pytest.approx(brute_auc(y, s), abs=1e-12)
  assert M.gauc(y, s, g) == pytest.approx(M.gauc(y, s, g, ones), abs=1e-13)
  assert M.gauc(y, s, g) == pytest.approx(loop_gauc(y, s, g), abs=1e-12)
  assert M.population_auc(q, s) == pytest.approx(M.population_auc(q, s, ones), abs=1e-13)
  assert M.logloss(y, s) == pytest.approx(M.logloss(y, s, ones), rel=1e-13)
  assert M.calibration(y, s) == pytest.approx(M.calibration(y, s, ones), rel=1e-13)


def test_ties_signed_zero_one_class_and_tiny_inputs(chunk):
  # 0.0 and -0.0 are one score, as in float64 comparisons.
  y = np.array([1, 0, 1, 0], np.uint8)
  s = np.array([0.0, -0.0, 0.5, 0.5], np.float32)
  assert M.auc(y, s) == M.auc(y, s, np.ones(4)) == 0.5
  assert M.gauc(y, s, np.array([1, 1, 2, 2])) == 0.5
  assert M.auc([1, 0], np.array([0.2, 0.1], np.float32)) == 1.0
  assert math.isnan(M.auc([1, 1], np.array([0.2, 0.1], np.float32)))
  assert math.isnan(M.auc(np.zeros(0), np.zeros(0, np.float32)))
  assert math.isnan(M.gauc([1, 0], np.array([0.2, 0.1], np.float32), [1, 2]))  # no mixed group
  assert math.isnan(M.population_auc([1.0], np.array([0.3], np.float32)))  # no pair
  # Negative, huge and subnormal float32 scores keep their order.
  v = np.array([-3e38, -1.0, -1e-45, 0.0, 1e-45, 1e-30, 1.0, 3e38], np.float32)
  assert np.all(np.diff(ranking.score_bits(v).astype(np.int64)) > 0)
  lab = np.array([0, 1, 0, 1, 0, 1, 0, 1], np.uint8)
  assert M.auc(lab, v) == M.auc(lab, v, np.ones(8)) == brute_auc(lab, v)


def test_groups_beyond_31_bits_are_ranked_and_narrow_floats_are_ranked():
  y, s, _, _ = _data(500, 3)
  g = np.random.default_rng(3).integers(-(2**62), 2**62, 500)  # offsets do not fit: dense ranks
  g[::2] = g[1::2]  # groups of two
  assert M.gauc(y, s, g) == pytest.approx(loop_gauc(y, s, g), abs=1e-12)
  bf = s.astype(ml_dtypes.bfloat16)
  assert ranking.supported(bf) and not ranking.supported(s.astype(np.float64))
  assert M.auc(y, bf) == M.auc(y, bf.astype(np.float32), np.ones(500))


def test_evaluate_without_weights_equals_evaluate_with_unit_weights(chunk):
  rng = np.random.default_rng(5)
  n = 3000
  y, s, g, q = _data(n, 5)
  click = (rng.random(n) < 0.3).astype(np.uint8)
  buy = click * (rng.random(n) < 0.3).astype(np.uint8)
  would_buy = np.maximum(buy, (rng.random(n) < 0.05).astype(np.uint8))
  preds = {"pctr": s, "pcvr": q, "pctcvr": (s * q).astype(np.float32)}
  labels = {"click": click, "buy": buy}
  truth = {"would_buy": would_buy, "pcvr": rng.random(n).astype(np.float32)}
  lean = M.evaluate(preds, labels, g, truth=truth)
  full = M.evaluate(preds, labels, g, weights=np.ones(n), truth=truth)
  assert lean.keys() == full.keys() and len(lean) == 21
  for k in lean:
    assert lean[k] == pytest.approx(full[k], rel=1e-12, abs=1e-13), k
  for k in ("ctr/auc", "cvr/auc", "ctcvr/auc", "cvr/entire_space_auc", "n/clicks", "n/buys"):
    assert lean[k] == full[k], k  # bit for bit


def test_unweighted_checks_name_the_problem():
  f32 = np.array([0.1, np.nan], np.float32)
  with pytest.raises(ValueError, match="auc: `scores` has non-finite values"):
    M.auc([0, 1], f32)
  with pytest.raises(ValueError, match=r"labels.*0/1, found \[2\]"):
    M.gauc([0, 2], np.array([0.1, 0.2], np.float32), [1, 1])
  with pytest.raises(ValueError, match=r"`probs` must lie in \[0, 1\]"):
    M.logloss([0, 1], np.array([0.1, 1.5], np.float32))
  with pytest.raises(ValueError, match="probs` must be probabilities"):
    M.population_auc([0.5, 2.0], np.array([0.1, 0.2], np.float32))
  with pytest.raises(ValueError, match=r"preds\['pctr'\].*\[0, 1\]"):
    M.evaluate({"pctr": f32}, {"click": [0, 1], "buy": [0, 0]}, [1, 2])


def test_logit_std_in_chunks_equals_numpy_std(chunk):
  p = np.random.default_rng(2).random(500).astype(np.float32)
  p[:3] = [0.0, 1.0, 0.5]  # clipped to [1e-7, 1 - 1e-7] for the log
  c = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
  z = np.log(c) - np.log1p(-c)
  assert M.logit_std(p) == pytest.approx(float(np.std(z - z[0])), rel=1e-12)
  assert M.logit_std(np.full(10, 0.3, np.float32)) == 0.0  # equal logits: exactly 0
