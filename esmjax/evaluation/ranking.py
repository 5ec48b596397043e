"""Exact AUC, GAUC and population AUC of float32 scores in a few bytes per row.

`esmjax.evaluation.metrics` uses these for unweighted float32 (or narrower) scores, the
predictions of every model; its general path (weights, float64 scores) converts every input to
float64 and argsorts, ~150 B per row at its peak, 6 GB on the 43 M rows of the Ali-CCP test split.

Here each metric is one in-place sort of one uint64 key per row, then a scan of the sorted keys
in chunks of CHUNK rows carrying a few running sums, so the memory is 8 B per row plus the caller's
arrays. The key is, from the top bit down: the group (GAUC; its offset from the smallest user, or
its rank when those do not fit), the score's 32 order-preserving bits (equal bits = equal scores:
-0.0 is taken as 0.0), and the label (AUC, GAUC) or the row index (population AUC, which then reads
each row's probability). With the label as the lowest bit, a tie run's negatives sort before its
positives, so for a positive row i with C_i negatives before it, R_i before its tie run and G_i
before its group, the run's negatives are C_i - R_i and the group's negatives before the run are
R_i - G_i; the Mann–Whitney sum of metrics.py (docs there), doubled to stay an integer, is

    2 U_g = sum over positives i of the group of (C_i - 2 G_i + R_i),

and AUC_g = U_g / (P_g N_g). Integer counts make AUC bit-identical to metrics.auc (whose float64
sums of counts and halves are exact below 2**53); GAUC and population AUC sum floats in another
order, equal to ~1e-15.
"""

from __future__ import annotations

import numpy as np

CHUNK = 1 << 20  # rows per step of a scan: its scratch memory is ~50 B per row of a chunk
_SCORE_BITS = 32


def supported(scores: np.ndarray) -> bool:
  """Whether `scores` are float32 or narrower floats (exactly float32 keys)."""
  d = np.asarray(scores).dtype
  if d.kind == "f":
    return d.itemsize <= 4
  try:
    return np.finfo(d).bits <= 16  # ml_dtypes' bfloat16 and friends
  except ValueError:
    return False


def score_bits(scores: np.ndarray) -> np.ndarray:
  """uint32 keys in the scores' order: equal scores (0.0 and -0.0 too) get equal keys."""
  s = np.asarray(scores)
  s = s.astype(np.float32) + np.float32(0.0)  # -0.0 + 0.0 = +0.0
  b = s.view(np.uint32)
  return np.where(b >> 31 == 1, ~b, b | np.uint32(1 << 31))


def _group_keys(groups: np.ndarray):
  """A function (start, end) -> uint64 group keys of those rows: offsets from the smallest group
  when they fit in the 31 bits left by score and label (made a chunk at a time), else dense ranks
  (np.unique, made once: ~8 B per row more)."""
  g = np.asarray(groups)
  if g.size and g.dtype.kind in "iu":
    lo = g.min()
    if int(g.max()) - int(lo) < 1 << 31:
      return lambda s, e: (g[s:e] - lo).astype(np.uint64)
  ranks = np.unique(g, return_inverse=True)[1].reshape(-1).astype(np.uint64)
  return lambda s, e: ranks[s:e]


def label_keys(labels: np.ndarray, scores: np.ndarray, groups=None) -> np.ndarray:
  """The sorted uint64 keys [group | score bits | label] (module doc)."""
  n = len(scores)
  keys = np.empty(n, np.uint64)
  group = _group_keys(groups) if groups is not None else None
  shift = np.uint64(_SCORE_BITS + 1)
  for s in range(0, n, CHUNK):
    e = min(s + CHUNK, n)
    k = score_bits(scores[s:e]).astype(np.uint64) << np.uint64(1)
    k |= (np.asarray(labels[s:e]) != 0).astype(np.uint64)
    if group is not None:
      k |= group(s, e) << shift
    keys[s:e] = k
  del group
  keys.sort()
  return keys


def group_auc_sums(keys: np.ndarray, grouped: bool) -> tuple[float, float, tuple[int, int, int]]:
  """Scans sorted `label_keys`: (sum over groups with both classes of size x AUC, sum of their
  sizes, (2U, P, N) of the last group — of all rows when not `grouped`)."""
  one = np.uint64(1)
  gshift = np.uint64(_SCORE_BITS + 1)
  cneg = 0  # negatives before the chunk
  carry_r = carry_g = 0  # negatives before the current tie run / group
  open_g = [0, 0, 0]  # the current group's 2U, P, N so far
  num = den = 0.0
  prev = None
  for s in range(0, len(keys), CHUNK):
    c = keys[s : s + CHUNK]
    lab = (c & one).astype(bool)
    negs = np.cumsum(~lab, dtype=np.int64)
    before = negs - ~lab + cneg  # C_i: negatives strictly before row i
    run_key = c >> one
    run_start = np.empty(len(c), bool)
    run_start[1:] = run_key[1:] != run_key[:-1]
    run_start[0] = prev is None or run_key[0] != prev >> one
    r = np.maximum.accumulate(np.where(run_start, before, carry_r))
    group_start = np.zeros(len(c), bool)
    if grouped:
      gk = c >> gshift
      group_start[1:] = gk[1:] != gk[:-1]
      group_start[0] = prev is None or gk[0] != prev >> gshift
      del gk
    else:
      group_start[0] = prev is None
    g = np.maximum.accumulate(np.where(group_start, before, carry_g))
    term = np.where(lab, before - 2 * g + r, 0)
    starts = np.flatnonzero(group_start)
    bounds = starts if starts.size and starts[0] == 0 else np.concatenate([[0], starts])
    u2 = np.add.reduceat(term, bounds)
    p = np.add.reduceat(lab.astype(np.int64), bounds)
    n = (np.diff(np.append(bounds, len(c))) - p).astype(np.int64)
    if not (starts.size and starts[0] == 0):  # the leading segment continues the open group
      open_g = [open_g[0] + int(u2[0]), open_g[1] + int(p[0]), open_g[2] + int(n[0])]
      u2, p, n = u2[1:], p[1:], n[1:]
    if len(u2):  # the open group ends before the first new one; the last new one stays open
      done_u2 = np.concatenate([[open_g[0]], u2[:-1]])
      done_p = np.concatenate([[open_g[1]], p[:-1]])
      done_n = np.concatenate([[open_g[2]], n[:-1]])
      if prev is None:  # no group was open before the first chunk
        done_u2, done_p, done_n = done_u2[1:], done_p[1:], done_n[1:]
      a, b = _finish(done_u2, done_p, done_n)
      num, den = num + a, den + b
      open_g = [int(u2[-1]), int(p[-1]), int(n[-1])]
    cneg += int(negs[-1])
    carry_r, carry_g, prev = int(r[-1]), int(g[-1]), c[-1]
  a, b = _finish(np.array([open_g[0]]), np.array([open_g[1]]), np.array([open_g[2]]))
  return num + a, den + b, tuple(open_g)


def _finish(u2, p, n) -> tuple[float, float]:
  """(sum of size x AUC, sum of size) over the groups with both classes."""
  ok = (p > 0) & (n > 0)
  if not ok.any():
    return 0.0, 0.0
  p, n, u2 = p[ok].astype(np.float64), n[ok].astype(np.float64), u2[ok].astype(np.float64)
  size = p + n
  return float(np.dot(size, (u2 / 2) / (p * n))), float(size.sum())


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """metrics.auc without weights: exact, bit-identical (module doc)."""
  if len(scores) == 0:
    return float("nan")
  _, _, (u2, p, n) = group_auc_sums(label_keys(labels, scores), grouped=False)
  if p <= 0 or n <= 0:
    return float("nan")
  return float((u2 / 2) / (float(p) * float(n)))


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
  """metrics.gauc without weights (module doc)."""
  if len(scores) == 0:
    return float("nan")
  num, den, _ = group_auc_sums(label_keys(labels, scores, groups), grouped=True)
  return float(num / den) if den > 0 else float("nan")


def population_auc(probs: np.ndarray, scores: np.ndarray) -> float:
  """metrics.population_auc without weights: keys [score bits | row index], the probabilities
  read in sorted order a chunk at a time; tie runs summed in float64 with carries."""
  n = len(scores)
  if n == 0:
    return float("nan")
  if n >= 1 << 32:
    raise ValueError(f"population_auc: {n} rows do not fit the 32-bit row index of its keys")
  keys = np.empty(n, np.uint64)
  for s in range(0, n, CHUNK):
    e = min(s + CHUNK, n)
    keys[s:e] = (score_bits(scores[s:e]).astype(np.uint64) << np.uint64(32)) | np.arange(
      s, e, dtype=np.uint64
    )
  keys.sort()
  q_all = np.asarray(probs)
  low = np.uint64(0xFFFFFFFF)
  total = own = p_sum = n_sum = n_before = 0.0
  run_p = run_n = 0.0  # the open tie run's sums
  prev = None
  for s in range(0, n, CHUNK):
    c = keys[s : s + CHUNK]
    q = q_all[(c & low).astype(np.intp)].astype(np.float64)
    neg = 1.0 - q
    own += float(np.dot(q, neg))
    p_sum, n_sum = p_sum + float(q.sum()), n_sum + float(neg.sum())
    sk = c >> np.uint64(32)
    start = np.empty(len(c), bool)
    start[1:] = sk[1:] != sk[:-1]
    start[0] = prev is None or sk[0] != prev
    starts = np.flatnonzero(start)
    bounds = starts if starts.size and starts[0] == 0 else np.concatenate([[0], starts])
    p_t, n_t = np.add.reduceat(q, bounds), np.add.reduceat(neg, bounds)
    if not start[0]:  # the leading segment continues the open run
      run_p, run_n = run_p + float(p_t[0]), run_n + float(n_t[0])
      p_t, n_t = p_t[1:], n_t[1:]
    if len(p_t):  # the open run ends; the chunk's last run stays open
      if prev is not None:
        p_t, n_t = np.concatenate([[run_p], p_t]), np.concatenate([[run_n], n_t])
      done_p, done_n = p_t[:-1], n_t[:-1]
      nb = n_before + np.cumsum(done_n) - done_n
      total += float(np.dot(done_p, nb + 0.5 * done_n))
      n_before += float(done_n.sum())
      run_p, run_n = float(p_t[-1]), float(n_t[-1])
    prev = sk[-1]
  total += run_p * (n_before + 0.5 * run_n)
  pairs = p_sum * n_sum - own
  if pairs <= 0:
    return float("nan")
  return float((total - 0.5 * own) / pairs)
