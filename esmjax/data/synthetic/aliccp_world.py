r"""A synthetic Ali-CCP public set in the raw file layout, at its size and shape, with ground truth.

    python -m esmjax.data.synthetic.aliccp_world --out_dir=DIR [--scale=1.0] [--seed=0] [--level=1]

Writes, per split (`train`, `test`), gzip-compressed (level `--level`), streaming:

    DIR/sample_skeleton_<split>.csv.gz   sample_id,click,buy,common_feature_index,feature_num,
                                         feature_list
    DIR/common_features_<split>.csv.gz   common_feature_index,feature_num,feature_list
    DIR/truth_<split>.npy                float32 [rows, 3]: the true pCTR, the true pCVR (buy given
                                         a click) and would_buy (0/1, drawn for every impression);
                                         row i is sample_id i + 1
    DIR/world.json                       written last: the scale, seed, sizes, counts and rates

A feature list is `field\x02id\x03value` items joined by `\x01` (`esmjax.data.aliccp`'s input),
with the public set's field ids: in the common-features file the user (101), profile fields
121-129 and the behaviour lists 109_14 / 110_14 / 127_14 / 150_14 (categories, shops, brands and
intentions the user interacted with, log-count weights, ~400 items a row); in the skeleton the item
(205), its category (206), shop (207), brand (216), intentions (210, multi-valued), the
user-category / user-shop / user-brand crosses 508 / 509 / 702 (with log-count values) and the
intention cross 853 (multi-valued, weighted), and the scenario (301).

At scale 1 the sizes are the ESMM paper's Table 1: 42.3 M training and 43.0 M test impressions,
0.4 M users, 4.3 M items; categories, shops, brands and intentions in proportion (all counts scale
with `--scale`, with small floors). One common-features row stands for one request of a user and
covers ~58 impressions on average, as in the public set (~0.73 M common rows per split).

Ground truth: every user, category and intention has a latent vector; the true click logit is
an intercept + user·category affinity + item popularity + a scenario effect, the true
conversion logit an intercept + the same affinity (the part that makes clicked impressions a
biased sample of the space) + item quality + a per-user propensity. Both intercepts are solved
(bisection on a fixed sample) so that CTR ≈ 4 % and CVR | click ≈ 0.53 % (the public set's 3.4 M
clicks and 18 k conversions). Everything is drawn from `numpy.random.default_rng` streams seeded by
`(seed, what)`: the same seed and scale give byte-identical files. Memory is bounded by the entity
tables (~60 B per item, a few hundred MB at scale 1), never by the number of rows: rows are drawn
and written one request batch at a time. Each file is written to `.tmp` and renamed when complete;
`world.json` last, so a directory with it is complete (`generate` returns it at once then).
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import time
from collections.abc import Sequence

import numpy as np

from esmjax.data.format.files import read_json, write_json_atomic

TRAIN_ROWS, TEST_ROWS = 42_300_000, 43_000_000
CTR, CVR = 0.04, 0.0053
WORLD_FILE = "world.json"
SPLITS = ("train", "test")
_VERSION = 1
_LATENT = 4
_ROWS_PER_REQUEST = 58
# entity: (count at scale 1, floor)
_SIZES = {
  "users": (400_000, 200),
  "items": (4_300_000, 500),
  "categories": (8_000, 20),
  "shops": (300_000, 50),
  "brands": (200_000, 50),
  "intentions": (100_000, 50),
}
_PROFILE = (("121", 98), ("122", 14), ("124", 3), ("125", 8), ("126", 4), ("127", 4), ("128", 3))
_PROFILE += (("129", 5),)
_BEHAVIOUR = (("109_14", "categories", 40), ("110_14", "shops", 150))
_BEHAVIOUR += (("127_14", "brands", 100), ("150_14", "intentions", 120))


def split_rows(scale: float) -> dict[str, int]:
  return {"train": max(1, round(TRAIN_ROWS * scale)), "test": max(1, round(TEST_ROWS * scale))}


def sizes(scale: float) -> dict[str, int]:
  return {k: max(floor, round(n * scale)) for k, (n, floor) in _SIZES.items()}


@dataclasses.dataclass
class Entities:
  """The world's users, items and their latent truth (shared by both splits)."""

  sizes: dict
  user_z: np.ndarray  # float32 [U, L]
  user_buy: np.ndarray  # float32 [U]
  user_profile: np.ndarray  # int64 [U, len(_PROFILE)]
  cat_z: np.ndarray  # float32 [C, L]
  item_cat: np.ndarray  # int32 [I]
  item_shop: np.ndarray  # int32 [I]
  item_brand: np.ndarray  # int32 [I]
  item_pop: np.ndarray  # float32 [I]
  item_quality: np.ndarray  # float32 [I]
  item_cdf: np.ndarray  # float64 [I]: impression share (Zipf-like), cumulative
  cat_intent: np.ndarray  # int32 [C, 5]: each category's intentions
  cat_shops: np.ndarray  # int32 [C, 8]: shops and brands that sell the category
  cat_brands: np.ndarray  # int32 [C, 8]


def _stable_seed(seed: int, name: str) -> np.random.Generator:
  # Python's str hash is randomised per process: derive the purpose word from its bytes instead.
  return np.random.default_rng([seed, int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little")])


def make_entities(scale: float, seed: int) -> Entities:
  n = sizes(scale)
  r = _stable_seed(seed, "entities")
  clusters = r.normal(0, 1, (_PROFILE[0][1], _LATENT))
  user_cluster = r.integers(0, len(clusters), n["users"])
  user_z = clusters[user_cluster] * 0.8 + r.normal(0, 0.6, (n["users"], _LATENT))
  profile = np.stack([r.integers(0, card, n["users"]) for _, card in _PROFILE], 1)
  profile[:, 0] = user_cluster  # 121: the user's cluster (predictive, as profile fields are)
  ni = n["items"]
  item_cat = r.integers(0, n["categories"], ni).astype(np.int32)
  rank_w = 1.0 / np.arange(1, ni + 1) ** 0.9
  perm = r.permutation(ni)
  cdf = np.cumsum(rank_w[perm])
  return Entities(
    sizes=n,
    user_z=user_z.astype(np.float32),
    user_buy=r.normal(0, 0.5, n["users"]).astype(np.float32),
    user_profile=profile.astype(np.int64),
    cat_z=r.normal(0, 1, (n["categories"], _LATENT)).astype(np.float32),
    item_cat=item_cat,
    item_shop=r.integers(0, n["shops"], ni).astype(np.int32),
    item_brand=r.integers(0, n["brands"], ni).astype(np.int32),
    item_pop=r.normal(0, 0.5, ni).astype(np.float32),
    item_quality=r.normal(0, 0.7, ni).astype(np.float32),
    item_cdf=cdf / cdf[-1],
    cat_intent=r.integers(0, n["intentions"], (n["categories"], 5)).astype(np.int32),
    cat_shops=r.integers(0, n["shops"], (n["categories"], 8)).astype(np.int32),
    cat_brands=r.integers(0, n["brands"], (n["categories"], 8)).astype(np.int32),
  )


@dataclasses.dataclass
class Impressions:
  user: np.ndarray  # [n] user index
  item: np.ndarray  # [n] item index
  scenario: np.ndarray  # [n] 0..2
  click_logit: np.ndarray  # [n] without the intercept
  buy_logit: np.ndarray  # [n] without the intercept


def draw_impressions(e: Entities, r: np.random.Generator, users: np.ndarray) -> Impressions:
  """One impression per entry of `users` (a user index each)."""
  n = len(users)
  item = np.minimum(np.searchsorted(e.item_cdf, r.random(n)), len(e.item_cdf) - 1)
  scenario = r.integers(0, 3, n)
  aff = (e.user_z[users] * e.cat_z[e.item_cat[item]]).sum(1) / np.sqrt(_LATENT)
  click = 0.9 * aff + e.item_pop[item] + np.array([0.0, 0.3, -0.3])[scenario]
  buy = 0.6 * aff + e.item_quality[item] + e.user_buy[users]
  return Impressions(users, item, scenario, click, buy)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _solve(f, target: float) -> float:
  """The intercept b with f(b) = target (f increasing), by bisection."""
  lo, hi = -30.0, 10.0
  for _ in range(60):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
  return (lo + hi) / 2


def intercepts(e: Entities, seed: int, ctr: float = CTR, cvr: float = CVR) -> tuple[float, float]:
  """(click, buy) intercepts giving mean pCTR = ctr and click-weighted mean pCVR = cvr on a fixed
  sample of 200 k impressions."""
  r = _stable_seed(seed, "intercepts")
  imp = draw_impressions(e, r, r.integers(0, len(e.user_z), 200_000))
  a = _solve(lambda b: _sigmoid(imp.click_logit + b).mean(), ctr)
  pc = _sigmoid(imp.click_logit + a)
  b = _solve(lambda b: (pc * _sigmoid(imp.buy_logit + b)).sum() / pc.sum(), cvr)
  return a, b


def _fmt_items(field: str, ids: np.ndarray, vals: Sequence[str] | None = None) -> list[str]:
  if vals is None:
    return [f"{field}\x02{i}\x031" for i in ids.tolist()]
  return [f"{field}\x02{i}\x03{v}" for i, v in zip(ids.tolist(), vals, strict=True)]


def _logcounts(r: np.random.Generator, n: int) -> list[str]:
  # Distinct spellings stay few (as in the public set's log-counts), which the converter relies on.
  table = [f"{np.log1p(k):.5f}" for k in range(1, 65)]
  return [table[k] for k in r.integers(0, 64, n).tolist()]


def _common_line(e: Entities, r, key: str, user: int, history: dict) -> str:
  items = [f"101\x02{user + 1}\x031"]
  base = 1000
  for j, (name, _) in enumerate(_PROFILE):
    items.append(f"{name}\x02{base * (j + 1) + int(e.user_profile[user, j])}\x031")
  for name, what, mean in _BEHAVIOUR:
    ids = history[what]
    k = min(int(r.geometric(1 / mean)), 4 * mean)
    pick = ids[r.integers(0, len(ids), k)] + 1 if k else ids[:0]
    items += _fmt_items(name, pick, _logcounts(r, k))
  return f"{key},{len(items)},{chr(1).join(items)}\n"


def _user_history(e: Entities, r, user: int) -> dict[str, np.ndarray]:
  """Entities the user interacted with: mostly categories it likes (its behaviour lists)."""
  z = e.user_z[user]
  n = len(e.cat_z)
  cand = r.integers(0, n, 64)
  score = e.cat_z[cand] @ z
  cats = cand[np.argsort(-score)[:16]]
  return {
    "categories": cats,
    "shops": e.cat_shops[cats].reshape(-1),
    "brands": e.cat_brands[cats].reshape(-1),
    "intentions": e.cat_intent[cats].reshape(-1),
  }


def _skeleton_lines(e: Entities, imp: Impressions, sid0: int, key: str, click, buy, r) -> list[str]:
  n = len(imp.item)
  item = imp.item
  cat, shop, brand = e.item_cat[item], e.item_shop[item], e.item_brand[item]
  u = imp.user.astype(np.int64)
  crosses = [
    (name, r.random(n) < p, (u * 1_000_003 + ent.astype(np.int64)) % 50_000_000 + 1)
    for name, p, ent in (("508", 0.6, cat), ("509", 0.3, shop), ("702", 0.3, brand))
  ]
  cvals = [_logcounts(r, n) for _ in crosses]
  w853 = _logcounts(r, n)
  n210 = r.integers(1, 4, n)
  n853 = r.integers(0, 4, n)
  lines = []
  cols = [x.tolist() for x in (item + 1, cat + 1, shop + 1, brand + 1, imp.scenario + 1)]
  intents = e.cat_intent[cat].tolist()
  cl, bl = click.tolist(), buy.tolist()
  for j in range(n):
    it = [
      f"205\x02{cols[0][j]}\x031\x01206\x02{cols[1][j]}\x031\x01207\x02{cols[2][j]}\x031\x01"
      f"216\x02{cols[3][j]}\x031\x01301\x02{cols[4][j]}\x031"
    ]
    ij = intents[j]
    it += [f"210\x02{ij[k] + 1}\x031" for k in range(int(n210[j]))]
    for (name, has, ids), vals in zip(crosses, cvals, strict=True):
      if has[j]:
        it.append(f"{name}\x02{int(ids[j])}\x03{vals[j]}")
    for k in range(int(n853[j])):
      it.append(f"853\x02{(u[j] % 1000) * 100_000 + ij[k] + 1}\x03{w853[j]}")
    nf = 5 + int(n210[j]) + sum(int(h[j]) for _, h, _ in crosses) + int(n853[j])
    lines.append(f"{sid0 + j},{cl[j]},{bl[j]},{key},{nf},{chr(1).join(it)}\n")
  return lines


def _gzip_text(path: str, level: int) -> io.TextIOWrapper:
  """A text file written gzip-compressed with no name or time in its header (byte-identical
  reruns)."""
  raw = open(path, "wb")
  z = gzip.GzipFile(filename="", mode="wb", compresslevel=level, fileobj=raw, mtime=0)
  z.myfileobj = raw  # closed with the GzipFile
  return io.TextIOWrapper(z, encoding="ascii", newline="")


def write_split(
  out_dir: str, split: str, scale: float, seed: int, level: int = 1, progress: bool = True
) -> dict:
  """Writes one split's three files; returns its counts."""
  e = make_entities(scale, seed)
  a, b = intercepts(e, seed)
  n_rows = split_rows(scale)[split]
  r = _stable_seed(seed, split)
  paths = {
    "skeleton": os.path.join(out_dir, f"sample_skeleton_{split}.csv.gz"),
    "common": os.path.join(out_dir, f"common_features_{split}.csv.gz"),
    "truth": os.path.join(out_dir, f"truth_{split}.npy"),
  }
  truth_tmp = paths["truth"] + ".tmp.npy"
  truth = np.lib.format.open_memmap(truth_tmp, "w+", np.float32, (n_rows, 3))
  bar = None
  if progress:
    from tqdm import tqdm

    bar = tqdm(total=n_rows, desc=f"generate {split}", unit="rows", unit_scale=True, mininterval=1)
  done = clicks = buys = requests = 0
  with (
    _gzip_text(paths["skeleton"] + ".tmp", level) as sk,
    _gzip_text(paths["common"] + ".tmp", level) as cf,
  ):
    while done < n_rows:
      # A batch of requests: each one user, one common row, ~58 impressions.
      n_req = 256
      users = r.integers(0, len(e.user_z), n_req)
      counts = np.minimum(r.poisson(_ROWS_PER_REQUEST - 1, n_req) + 1, n_rows - done)
      counts = counts[np.cumsum(counts) - counts < n_rows - done]
      users = users[: len(counts)]
      counts[-1] = min(counts[-1], n_rows - done - int(counts[:-1].sum()))
      cf_lines, sk_lines = [], []
      imp = draw_impressions(e, r, np.repeat(users, counts))
      pctr = _sigmoid(imp.click_logit + a)
      pcvr = _sigmoid(imp.buy_logit + b)
      click = (r.random(len(pctr)) < pctr).astype(np.int64)
      would_buy = (r.random(len(pcvr)) < pcvr).astype(np.int64)
      buy = click * would_buy
      off = np.concatenate([[0], np.cumsum(counts)])
      for q in range(len(counts)):
        key = f"{r.integers(0, 2**63):016x}"
        u = int(users[q])
        cf_lines.append(_common_line(e, r, key, u, _user_history(e, r, u)))
        s = slice(int(off[q]), int(off[q + 1]))
        sub = Impressions(*(getattr(imp, f.name)[s] for f in dataclasses.fields(imp)))
        sk_lines += _skeleton_lines(e, sub, done + off[q] + 1, key, click[s], buy[s], r)
      n = int(off[-1])
      truth[done : done + n] = np.stack([pctr, pcvr, would_buy], 1)
      cf.write("".join(cf_lines))
      sk.write("".join(sk_lines))
      done += n
      clicks += int(click.sum())
      buys += int(buy.sum())
      requests += len(counts)
      if bar is not None:
        bar.update(n)
  if bar is not None:
    bar.close()
  truth.flush()
  del truth
  os.replace(truth_tmp, paths["truth"])
  for k in ("skeleton", "common"):
    os.replace(paths[k] + ".tmp", paths[k])
  return {
    "rows": n_rows,
    "clicks": clicks,
    "buys": buys,
    "common_rows": requests,
    "files": {k: os.path.basename(p) for k, p in paths.items()},
    "bytes": {k: os.path.getsize(p) for k, p in paths.items()},
  }


def _split_job(args) -> dict:
  return write_split(*args)


def generate(
  out_dir: str,
  scale: float = 1.0,
  seed: int = 0,
  level: int = 1,
  progress: bool = True,
  workers: int = 2,
) -> dict:
  """Writes both splits into `out_dir` (one process per split) unless its world.json says they are
  there for this scale and seed; returns world.json's content."""
  if not scale > 0:
    raise ValueError(f"scale={scale}; must be > 0")
  wpath = os.path.join(out_dir, WORLD_FILE)
  old = read_json(wpath) if os.path.exists(wpath) else None
  if old and (old.get("scale"), old.get("seed"), old.get("version")) == (scale, seed, _VERSION):
    return old
  os.makedirs(out_dir, exist_ok=True)
  if os.path.exists(wpath):
    os.remove(wpath)
  t0 = time.time()
  jobs = [(out_dir, s, scale, seed, level, progress) for s in SPLITS]
  if workers > 1:
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
      splits = dict(zip(SPLITS, pool.map(_split_job, jobs), strict=True))
  else:
    splits = {s: _split_job(j) for s, j in zip(SPLITS, jobs, strict=True)}
  a, b = intercepts(make_entities(scale, seed), seed)
  world = {
    "version": _VERSION,
    "scale": scale,
    "seed": seed,
    "gzip_level": level,
    "sizes": sizes(scale),
    "intercepts": {"click": a, "buy": b},
    "target_rates": {"ctr": CTR, "cvr_given_click": CVR},
    "splits": splits,
    "truth_columns": ["pctr", "pcvr", "would_buy"],
    "truth_rows": "row i is sample_id i + 1",
    "seconds": round(time.time() - t0, 1),
    "made_by": "python -m esmjax.data.synthetic.aliccp_world",
  }
  write_json_atomic(wpath, world, indent=1)
  return world


def main(argv: Sequence[str]) -> None:
  from absl import flags

  from esmjax import exits

  if len(argv) > 1:
    exits.fail(f"unexpected arguments: {list(argv[1:])}", exits.USER_ERROR)
  F = flags.FLAGS
  if not F.scale > 0:
    exits.fail(f"--scale={F.scale}; must be > 0", exits.USER_ERROR)
  w = generate(F.out_dir, F.scale, F.seed, F.level, workers=F.workers)
  print(json.dumps({s: {k: w["splits"][s][k] for k in ("rows", "clicks", "buys")} for s in SPLITS}))


if __name__ == "__main__":
  from absl import app, flags

  from esmjax import exits

  flags.DEFINE_string("out_dir", None, "where the raw files go", required=True)
  flags.DEFINE_float("scale", 1.0, "fraction of the public set's size (1.0: 42.3 M + 43.0 M rows)")
  flags.DEFINE_integer("seed", 0, "the world's seed")
  flags.DEFINE_integer("level", 1, "gzip level (1: fastest)")
  flags.DEFINE_integer("workers", 2, "processes (one per split at most)")
  app.run(main, flags_parser=exits.parse_flags)
