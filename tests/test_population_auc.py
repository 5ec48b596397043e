"""metrics.population_auc (AUC against known label probabilities) and its place in evaluate."""

import itertools

import numpy as np
import pytest

from esmjax.evaluation import metrics as M


def _pairs_reference(q, s, w):
  """The definition, pair by pair (distinct rows only)."""
  num = den = 0.0
  for i, j in itertools.permutations(range(len(q)), 2):
    m = w[i] * q[i] * w[j] * (1 - q[j])
    num += m * ((s[i] > s[j]) + 0.5 * (s[i] == s[j]))
    den += m
  return num / den


def test_hand_computed_case():
  # Rows (q, s): A (1, 0.9), B (0.5, 0.5), C (0, 0.1). Pairs (pos i, neg j) with mass q_i(1-q_j):
  # A>B 0.5, A>C 1, B>C 0.5 (all i above j) and B-as-positive vs A-as-negative: 0.5·0 = 0;
  # so every pair with mass ranks the positive above: AUC 1.
  assert M.population_auc([1.0, 0.5, 0.0], [0.9, 0.5, 0.1]) == 1.0
  # Scores A 0.1, B 0.5, C 0.3: A<B mass 0.5 (wrong), A<C 1 (wrong), B>C 0.5 (right): 0.5 / 2.
  assert M.population_auc([1.0, 0.5, 0.0], [0.1, 0.5, 0.3]) == pytest.approx(0.25)
  # A tie between B and C counts half of its mass: (0.5 · ½) / 2.
  assert M.population_auc([1.0, 0.5, 0.0], [0.1, 0.3, 0.3]) == pytest.approx(0.125)
  # Every row a coin flip with equal scores: all ties, 0.5 (own pairs left out).
  assert M.population_auc([0.5, 0.5], [0.2, 0.2]) == pytest.approx(0.5)


def test_matches_the_pairwise_definition_with_ties_and_weights():
  rng = np.random.default_rng(0)
  q = rng.random(40) ** 2
  s = np.round(rng.random(40), 1)  # many ties
  w = rng.integers(0, 3, 40).astype(float)  # zero weights drop rows
  assert M.population_auc(q, s, w) == pytest.approx(_pairs_reference(q, s, w), rel=1e-12)
  keep = w > 0
  assert M.population_auc(q, s, w) == pytest.approx(
    M.population_auc(q[keep], s[keep], w[keep]), rel=1e-12
  )


def test_zero_one_probabilities_give_the_auc():
  rng = np.random.default_rng(1)
  y = (rng.random(200) < 0.2).astype(float)
  s = np.round(rng.random(200), 2)
  assert M.population_auc(y, s) == pytest.approx(M.auc(y, s), rel=1e-12)


def test_bad_input():
  with pytest.raises(ValueError, match="population_auc: `probs` must be probabilities"):
    M.population_auc([0.2, 1.5], [0.1, 0.2])
  with pytest.raises(ValueError, match="population_auc: `probs` must be probabilities"):
    M.population_auc([0.2, np.nan], [0.1, 0.2])
  with pytest.raises(ValueError, match="`scores` has 1 rows, expected 2"):
    M.population_auc([0.2, 0.3], [0.1])
  assert np.isnan(M.population_auc([0.0, 0.0], [0.1, 0.2]))  # no row can be positive


def test_evaluate_reports_both_populations():
  rng = np.random.default_rng(2)
  n = 500
  click = rng.random(n) < 0.3
  q = rng.random(n) * 0.5
  buy = click & (rng.random(n) < q)
  pcvr = np.clip(q + rng.normal(0, 0.1, n), 0, 1)
  out = M.evaluate(
    {"pcvr": pcvr},
    {"click": click.astype(float), "buy": buy.astype(float)},
    rng.integers(0, 20, n),
    truth={"would_buy": (rng.random(n) < q).astype(float), "pcvr": q},
  )
  assert out["cvr/population_auc"] == pytest.approx(M.population_auc(q[click], pcvr[click]))
  assert out["cvr/entire_space_population_auc"] == pytest.approx(M.population_auc(q, pcvr))
  assert out["cvr/population_auc"] != pytest.approx(out["cvr/entire_space_population_auc"])
  no_truth = M.evaluate(
    {"pcvr": pcvr}, {"click": click.astype(float), "buy": buy.astype(float)}, np.zeros(n)
  )
  assert "cvr/population_auc" not in no_truth
