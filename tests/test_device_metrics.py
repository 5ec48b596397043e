"""esmjax.evaluation.device_metrics, the metrics sorted on the device, against
esmjax.evaluation.metrics (NumPy): equal
on hand-built cases with ties, masks and one-class populations, and through the evaluator."""

import math

import jax
import numpy as np
import pytest
import tiny

from esmjax.evaluation import device_metrics as D
from esmjax.evaluation import metrics as M
from esmjax.evaluation import scoring as evaluation


def same(a: float, b: float, rel: float = 0.0) -> bool:
  """Equal (to `rel`), nan equal to nan."""
  if math.isnan(a) or math.isnan(b):
    return math.isnan(a) and math.isnan(b)
  return a == b if rel == 0.0 else a == pytest.approx(b, rel=rel, abs=1e-15)


HAND = [  # (labels, scores, weights): the hand cases of tests/test_metrics.py
  ([0, 0, 1, 1, 0, 1], [0.1, 0.2, 0.7, 0.8, 0.3, 0.9], None),
  ([0, 0, 1, 1, 0, 1], [0.5] * 6, None),  # one tie run: 0.5
  ([0, 1, 0, 1], [0.2, 0.5, 0.5, 0.9], None),  # a tie across the classes: 0.875
  ([1, 1, 0, 0], [0.6, 0.6, 0.6, 0.1], None),  # ties inside one class: 0.75
  ([0, 0, 1, 1, 1], [0.1, 0.4, 0.35, 0.8, 0.05], [1, 1, 1, 1, 0]),  # a masked row: 0.75
  ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], [1, 2, 1, 1]),  # a weight of 2 = a duplicated row
  ([1, 1, 1], [0.1, 0.2, 0.3], None),  # one class: nan
  ([0, 1], [0.1, 0.2], [1, 0]),  # one class after the mask: nan
]


@pytest.mark.parametrize("y, s, w", HAND)
def test_auc_equals_numpy_on_hand_cases(y, s, w):
  assert same(D.auc(y, s, w), M.auc(y, s, w))
  q = np.asarray(y, np.float64)  # 0/1 label probabilities: population AUC is AUC exactly
  assert same(D.population_auc(q, s, w), M.population_auc(q, s, w))


def test_hand_values_and_empty():
  assert D.auc([0, 1, 0, 1], [0.2, 0.5, 0.5, 0.9]) == 0.875
  assert math.isnan(D.auc([], []))
  assert math.isnan(D.gauc([1, 0, 1], [0.1, 0.2, 0.3], [1, 2, 3]))  # no group has both classes


def test_gauc_hand_case():
  rows = [(7, 0, 0.3), (3, 1, 0.2), (11, 1, 0.9), (7, 1, 0.6), (11, 1, 0.1), (7, 0, 0.7)]
  rows += [(3, 0, 0.2), (7, 1, 0.8), (11, 1, 0.5)]
  g, y, s = map(np.array, zip(*rows, strict=True))
  assert D.gauc(y, s, g) == pytest.approx(4 / 6, rel=1e-15) and same(
    D.gauc(y, s, g), M.gauc(y, s, g)
  )
  w = np.where((g == 3) & (y == 0), 0, 1)  # user 3 left with one class: user 7 alone
  assert D.gauc(y, s, g, w) == 0.75 == M.gauc(y, s, g, w)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_heavy_ties_equal_numpy(seed):
  rng = np.random.default_rng(seed)
  n = 3000
  y = (rng.random(n) < 0.2).astype(np.float64)
  s = rng.integers(0, 12, n).astype(np.float32) / 11  # 12 distinct scores: every row tied
  g = rng.integers(0, 200, n) * 10**11  # int64 user keys beyond int32
  w = rng.integers(0, 3, n).astype(np.float64)  # 0 masks, 2 duplicates
  q = rng.random(n)
  assert D.auc(y, s, w) == M.auc(y, s, w)  # integer weights: bit-equal
  assert same(D.gauc(y, s, g, w), M.gauc(y, s, g, w), rel=1e-13)
  assert same(D.population_auc(q, s, w), M.population_auc(q, s, w), rel=1e-13)
  p = np.clip(s, 0.01, 0.99)
  assert same(D.logloss(y, p, w), M.logloss(y, p, w), rel=1e-13)
  assert same(D.calibration(y, p, w), M.calibration(y, p, w), rel=1e-13)
  assert same(D.logit_std(p), M.logit_std(p), rel=1e-12)


def _columns(n, seed, constant_pcvr=None):
  """Host columns of an evaluation set with truth, daction and tied predictions."""
  rng = np.random.default_rng(seed)
  click = rng.random(n) < 0.3
  buy = click & (rng.random(n) < 0.2)
  daction = click & (rng.random(n) < 0.4)
  would_buy = buy | (~click & (rng.random(n) < 0.05))
  tie = lambda: (rng.integers(1, 40, n) / 41).astype(np.float32)  # noqa: E731
  cols = {
    "labels": np.stack([click, buy, daction], 1).astype(np.uint8),
    "user": rng.integers(0, 30, n).astype(np.int64),
    "truth": np.stack([would_buy, rng.random(n)], 1).astype(np.float32),
    "pctr": tie(),
    "pcvr": tie() if constant_pcvr is None else np.full(n, constant_pcvr, np.float32),
    "pctavr": tie(),
  }
  cols["pctcvr"] = cols["pctr"] * cols["pcvr"]
  return cols


SCHEMA = tiny.tiny_schema(labels=("click", "buy", "daction"), truth=("would_buy", "pcvr"))


@pytest.mark.parametrize("constant_pcvr", [None, 0.125])
def test_evaluator_metrics_on_device_equal_the_host_ones(constant_pcvr):
  cols = _columns(2000, 0, constant_pcvr)
  host = evaluation.compute_metrics(cols, SCHEMA)
  with jax.enable_x64(True):
    dev_cols = jax.device_put(cols)
  dev = evaluation.compute_metrics_on_device(dev_cols, SCHEMA)
  assert sorted(dev) == sorted(host)
  assert "cvr/population_auc" in dev and "ctavr/gauc" in dev and "cvr/entire_space_auc" in dev
  for k in host:
    # AUCs of 0/1 labels are sums of half-integers: bit-equal; population AUCs (fractional
    # truth) and the means sum fractions in another order than NumPy.
    exact = k.endswith(("/auc", "/collapsed")) or k.startswith("n/")
    assert same(dev[k], host[k], rel=0.0 if exact else 1e-12), (k, dev[k], host[k])
  assert (dev["cvr/collapsed"] == 1.0) == (constant_pcvr is not None)


def test_evaluator_device_checks_name_the_input():
  cols = _columns(100, 1)
  cols["pcvr"] = cols["pcvr"].copy()
  cols["pcvr"][5] = np.nan
  with pytest.raises(ValueError, match=r"`preds\['pcvr'\]` must be probabilities"):
    evaluation.compute_metrics_on_device(jax.device_put(cols), SCHEMA)
  cols = _columns(100, 1)
  cols["labels"][:, 1] = 1  # buys on unclicked impressions
  with pytest.raises(ValueError, match="unclicked impression"):
    evaluation.compute_metrics_on_device(jax.device_put(cols), SCHEMA)


def test_metrics_on_is_resolved_and_checked():
  # auto: the host path on CPU, the device on an accelerator (one process here)
  expected = "host" if jax.default_backend() == "cpu" else "device"
  assert evaluation.resolve_metrics_on("auto") == expected
  assert evaluation.resolve_metrics_on("device") == "device"
  with pytest.raises(ValueError, match="train.eval_metrics_on='gpu' is not allowed"):
    evaluation.resolve_metrics_on("gpu")


def test_batches_are_concatenated_in_rounds_in_order():
  parts = [jax.numpy.arange(3 * i, 3 * i + 3) for i in range(70)]
  assert (np.asarray(evaluation._concatenate(parts, fan_in=8)) == np.arange(210)).all()
  assert evaluation._concatenate(parts[:1]) is parts[0]
