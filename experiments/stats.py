"""How much of an AUC is the evaluation sample: DeLong's variance of correlated AUCs.

DeLong, DeLong & Clarke-Pearson (Biometrics 1988), computed with midranks as in Sun & Xu (IEEE
Signal Processing Letters 2014): for positives X_1..X_m and negatives Y_1..Y_n scored by k models,
each positive's placement V10_i = P(score(X_i) > score(Y)) + ½P(=) and each negative's
V01_j = P(score(X) > score(Y_j)) + ½P(=); AUC = mean V10 = mean V01 and
Cov(AUC_a, AUC_b) = Cov(V10_a, V10_b) / m + Cov(V01_a, V01_b) / n. The standard error of a paired
difference of two models scored on the same rows follows from the 2×2 covariance.

`bootstrap_population` does the same for esmjax.evaluation.metrics.population_auc (AUC against the
true label
probabilities), which DeLong's placements do not cover: rows resampled with replacement, the same
resample for every model.
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sp_stats


def delong(labels: np.ndarray, scores: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """(AUCs [k], their covariance [k, k]) of k score vectors on the same 0/1 `labels`."""
  y = np.asarray(labels).astype(bool)
  m, n = int(y.sum()), int((~y).sum())
  if m < 2 or n < 2:
    raise ValueError(f"delong: needs at least 2 positives and 2 negatives; got {m} and {n}")
  s = np.stack([np.asarray(v, np.float64) for v in scores])
  x, z = s[:, y], s[:, ~y]
  v10, v01 = np.empty_like(x), np.empty_like(z)
  for r in range(s.shape[0]):
    tx = sp_stats.rankdata(x[r])
    ty = sp_stats.rankdata(z[r])
    tz = sp_stats.rankdata(np.concatenate([x[r], z[r]]))
    v10[r] = (tz[:m] - tx) / n
    v01[r] = 1.0 - (tz[m:] - ty) / m
  aucs = v10.mean(axis=1)
  cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
  return aucs, cov


def bootstrap_population(
  probs: np.ndarray, scores: list[np.ndarray], reps: int = 100, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """(population AUCs [k], their bootstrap covariance [k, k]) of k score vectors on the same rows
  with true label probabilities `probs`."""
  from esmjax.evaluation import metrics

  q = np.asarray(probs, np.float64)
  s = [np.asarray(v, np.float64) for v in scores]
  aucs = np.array([metrics.population_auc(q, v) for v in s])
  rng = np.random.default_rng(seed)
  reps_out = np.empty((reps, len(s)))
  for b in range(reps):
    idx = rng.integers(0, q.shape[0], q.shape[0])
    reps_out[b] = [metrics.population_auc(q[idx], v[idx]) for v in s]
  return aucs, np.atleast_2d(np.cov(reps_out, rowvar=False))


def auc_se(labels: np.ndarray, score: np.ndarray) -> float:
  """Standard error of one AUC over the evaluation sample."""
  return float(np.sqrt(delong(labels, [score])[1][0, 0]))


def paired_se(labels: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
  """(AUC(a) − AUC(b), its standard error over the evaluation sample)."""
  aucs, cov = delong(labels, [a, b])
  return float(aucs[0] - aucs[1]), float(np.sqrt(max(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1], 0.0)))
