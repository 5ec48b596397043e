"""The synthetic world drawn from its config (`synthetic_config` states the causal process): users,
items, histories and intercepts (`build_world`), and the impressions of a split (`iter_blocks`).
The output is a function of the config only (bit-identical on one machine for one config).
"""

from __future__ import annotations

import dataclasses
import math

import ml_collections
import numpy as np

from esmjax.common.schema import DenseField, Schema
from esmjax.data.synthetic.worlds import (
  CROSS_LEVELS,
  DENSE_FIELDS,
  PROFILE_LEVELS,
  SPLITS,
  build_schema,
  resolve_config,
)


@dataclasses.dataclass
class World:
  """Everything drawn once per config: entity latents, features, intercepts and the schema."""

  cfg: ml_collections.ConfigDict
  schema: Schema
  # users
  user_cum: np.ndarray  # float64 [U] cumulative activity
  u_s: np.ndarray  # float32 [U, d] click interest
  u_c: np.ndarray  # float32 [U, d] purchase interest
  user_click_bias: np.ndarray
  user_propensity: np.ndarray
  user_sparse: np.ndarray  # int32 [U, 9] fields USER_FIELDS
  user_mv_ids: np.ndarray  # int32 [U, Luser] USER_LISTS side by side
  user_mv_w: np.ndarray  # float32 [U, Luser]
  user_dense: np.ndarray  # float32 [U, 2] user_activity, user_buys_hist
  # items
  cat_cum: np.ndarray  # float64 [C] cumulative category popularity
  cat_item_lo: np.ndarray  # float64 [C] popularity mass before category c in `items_by_cat`
  cat_item_hi: np.ndarray
  item_cum_by_cat: np.ndarray  # float64 [I] cumulative popularity in category order
  items_by_cat: np.ndarray  # int64 [I]
  cat_first: np.ndarray  # int64 [C] first/last index of category c in `items_by_cat`
  cat_last: np.ndarray
  cat_center: np.ndarray  # float32 [C, d] category part of click interest (unit variance)
  item_cat: np.ndarray
  item_shop: np.ndarray
  item_brand: np.ndarray
  item_nodes: np.ndarray  # int32 [I, 3] intention ids (PAD-padded)
  v_s: np.ndarray  # float32 [I, d]
  v_c: np.ndarray  # float32 [I, d]
  bait: np.ndarray
  item_click_bias: np.ndarray
  item_quality: np.ndarray  # includes −price_effect·standardised log-price
  item_daction_bias: np.ndarray
  item_price: np.ndarray
  item_ctr_hist: np.ndarray
  # intercepts
  c_ctr: float = 0.0
  c_daction: float = 0.0
  c_cvr: float = 0.0


def _zipf_weights(rng, n: int, a: float) -> np.ndarray:
  w = np.arange(1, n + 1, dtype=np.float64) ** -a
  return w[rng.permutation(n)]


def _group_pick(
  rng, owner_of: np.ndarray, n_owners: int, groups: np.ndarray, stray: float = 0.1
) -> np.ndarray:
  """For each element of `groups`, one member of that group (members: owner_of == group), uniformly;
  with probability `stray` (or if the group is empty) a member of any group."""
  order = np.argsort(owner_of, kind="stable")
  counts = np.bincount(owner_of, minlength=n_owners)
  start = np.concatenate([[0], np.cumsum(counts)[:-1]])
  n = len(groups)
  r = rng.random(n)
  own = start[groups] + np.minimum(
    (r * counts[groups]).astype(np.int64), np.maximum(counts[groups] - 1, 0)
  )
  anyone = rng.integers(0, len(owner_of), n)
  use_any = (rng.random(n) < stray) | (counts[groups] == 0)
  return np.where(use_any, anyone, order[np.minimum(own, len(order) - 1)])  # empty groups: masked


def _unit(rng, n: int, d: int) -> np.ndarray:
  return rng.standard_normal((n, d))


def _quantile_levels(x: np.ndarray, levels: int) -> np.ndarray:
  edges = np.quantile(x, np.linspace(0, 1, levels + 1)[1:-1])
  return np.searchsorted(edges, x, side="right")


def _search(cum: np.ndarray, u: np.ndarray, lo=0, hi=None) -> np.ndarray:
  idx = np.searchsorted(cum, u, side="right")
  return np.clip(idx, lo, (len(cum) - 1) if hi is None else hi)


def _top_counts(owner: np.ndarray, value: np.ndarray, n_owners: int, n_values: int, L: int):
  """Per owner, its L most frequent values (ids = value + 2, weights = counts; ties: smaller
  value)."""
  key = owner.astype(np.int64) * n_values + value
  uniq, counts = np.unique(key, return_counts=True)
  o, v = uniq // n_values, uniq % n_values
  order = np.lexsort((v, -counts, o))
  o, v, counts = o[order], v[order], counts[order]
  idx = np.arange(len(o))
  first = np.maximum.accumulate(np.where(np.r_[True, o[1:] != o[:-1]], idx, 0))
  rank = idx - first
  keep = rank < L
  ids = np.zeros((n_owners, L), np.int32)
  w = np.zeros((n_owners, L), np.float32)
  ids[o[keep], rank[keep]] = (v[keep] + 2).astype(np.int32)
  w[o[keep], rank[keep]] = counts[keep].astype(np.float32)
  return ids, w


def _hash2(a: np.ndarray, b: np.ndarray, salt: int, buckets: int) -> np.ndarray:
  h = a.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
  h ^= (b.astype(np.uint64) + np.uint64(salt)) * np.uint64(0xC2B2AE3D27D4EB4F)
  h ^= h >> np.uint64(31)
  h *= np.uint64(0x94D049BB133111EB)
  h ^= h >> np.uint64(29)
  return (h % np.uint64(buckets)).astype(np.int64)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _solve(f, target: float, lo: float = -30.0, hi: float = 30.0, iters: int = 60) -> float:
  """x with f(x) = target for increasing f, by bisection."""
  for _ in range(iters):
    mid = 0.5 * (lo + hi)
    if f(mid) < target:
      lo = mid
    else:
      hi = mid
  return 0.5 * (lo + hi)


def build_world(cfg=None) -> World:
  """Draws the world of a config (entities, histories, intercepts, dense statistics).

  Every draw comes from one stream in a fixed order (catalogue, item latents, users, histories),
  then the calibration sample from a second one: the order of the calls below is the data.
  """
  cfg = resolve_config(cfg)
  rng = np.random.default_rng([cfg.seed, 0])
  item_pop, item_cat, item_shop, item_brand, item_nodes = _draw_catalogue(rng, cfg)
  item_fields, ctr_terms = _draw_item_latents(rng, cfg, item_cat, item_shop, item_brand)
  pop = _popularity(item_pop, item_cat, cfg.num_categories)
  user_fields, n_events = _draw_users(rng, cfg)
  ev_user, ev_cat, ev_item = _draw_histories(rng, cfg, n_events, user_fields, item_fields, pop)
  user_mv_ids, user_mv_w = _history_lists(
    cfg, ev_user, ev_cat, ev_item, item_shop, item_brand, item_nodes
  )
  world = World(
    cfg=cfg,
    schema=build_schema(cfg),
    **user_fields,
    user_mv_ids=user_mv_ids,
    user_mv_w=user_mv_w,
    **pop,
    item_cat=item_cat,
    item_shop=item_shop,
    item_brand=item_brand,
    item_nodes=item_nodes,
    **item_fields,
    item_ctr_hist=np.zeros(cfg.num_items, np.float32),
  )
  cal = _calibrate(world, *ctr_terms)
  world.schema = build_schema(cfg, _dense_fields(world, cal))
  return world


def _draw_catalogue(rng, cfg):
  """Items: popularity, category, shop, brand and intention nodes."""
  I, C = cfg.num_items, cfg.num_categories
  item_pop = _zipf_weights(rng, I, cfg.popularity_skew)
  cat_size = _zipf_weights(rng, C, 0.5)
  item_cat = rng.choice(C, size=I, p=cat_size / cat_size.sum())
  shop_cat = rng.integers(0, C, cfg.num_shops)
  brand_cat = rng.integers(0, C, cfg.num_brands)
  node_cat = rng.integers(0, C, cfg.num_intentions)
  item_shop = _group_pick(rng, shop_cat, C, item_cat)
  item_brand = _group_pick(rng, brand_cat, C, item_cat)
  item_nodes = _draw_item_nodes(rng, node_cat, C, item_cat)
  return item_pop, item_cat, item_shop, item_brand, item_nodes


def _draw_item_nodes(rng, node_cat: np.ndarray, C: int, item_cat: np.ndarray) -> np.ndarray:
  """int32 [I, 3]: 1 to 3 intention ids (+2, PAD-padded) per item, its category's nodes
  consecutively from a first node drawn in the category."""
  N, I = len(node_cat), len(item_cat)
  first_node = _group_pick(rng, node_cat, C, item_cat, stray=0.0)
  node_order = np.argsort(node_cat, kind="stable")
  node_rank = np.empty(N, np.int64)
  node_rank[node_order] = np.arange(N)
  node_count = np.bincount(node_cat, minlength=C)
  node_start = np.concatenate([[0], np.cumsum(node_count)[:-1]])
  n_nodes = np.minimum(rng.integers(1, 4, I), np.maximum(node_count[item_cat], 1))
  item_nodes = np.zeros((I, 3), np.int32)
  for j in range(3):  # the item's category's nodes, consecutively from its first node
    cnt = np.maximum(node_count[item_cat], 1)
    pos = node_start[item_cat] + (node_rank[first_node] - node_start[item_cat] + j) % cnt
    node = np.where(node_count[item_cat] > 0, node_order[np.minimum(pos, N - 1)], first_node)
    item_nodes[:, j] = np.where(j < n_nodes, node + 2, 0)
  return item_nodes


def _draw_item_latents(rng, cfg, item_cat, item_shop, item_brand):
  """Item latents and scalars: the World's item fields (float32), and the float64 terms of the
  items' historical CTR (click bias, bait, noise), which needs the CTR intercept first."""
  I, C, B, S, d = cfg.num_items, cfg.num_categories, cfg.num_brands, cfg.num_shops, cfg.latent_dim
  a = cfg.category_strength
  cat_s = _unit(rng, C, d)
  cat_c = _unit(rng, C, d)
  brand_c = _unit(rng, B, d)
  v_s = (math.sqrt(a) * cat_s[item_cat] + math.sqrt(1 - a) * _unit(rng, I, d)) / math.sqrt(d)
  v_c = (
    math.sqrt(0.5) * cat_c[item_cat]
    + math.sqrt(0.3) * brand_c[item_brand]
    + math.sqrt(0.2) * _unit(rng, I, d)
  ) / math.sqrt(d)
  shop_bait, shop_quality = rng.standard_normal(S), rng.standard_normal(S)
  bait = math.sqrt(0.5) * shop_bait[item_shop] + math.sqrt(0.5) * rng.standard_normal(I)
  item_click_bias = cfg.item_bias_std * rng.standard_normal(I)
  log_price = rng.normal(3.5, 1.0, C)[item_cat] + 0.5 * rng.standard_normal(I)
  item_price = np.round(np.exp(log_price), 2)
  z_price = (log_price - log_price.mean()) / log_price.std()
  item_quality = (
    cfg.item_bias_std
    * (math.sqrt(0.5) * shop_quality[item_shop] + math.sqrt(0.5) * rng.standard_normal(I))
    - cfg.price_effect * z_price
  )
  item_daction_bias = cfg.daction_item_std * rng.standard_normal(I)
  ctr_noise = 0.3 * rng.standard_normal(I)
  fields = dict(
    cat_center=cat_s,
    v_s=v_s,
    v_c=v_c,
    bait=bait,
    item_click_bias=item_click_bias,
    item_quality=item_quality,
    item_daction_bias=item_daction_bias,
    item_price=item_price,
  )
  return {k: v.astype(np.float32) for k, v in fields.items()}, (item_click_bias, bait, ctr_noise)


def _popularity(item_pop: np.ndarray, item_cat: np.ndarray, C: int) -> dict[str, np.ndarray]:
  """Popularity sampling structures (category, then item inside the category): World fields."""
  cat_pop = np.bincount(item_cat, weights=item_pop, minlength=C)
  cat_cum = np.cumsum(cat_pop)
  items_by_cat = np.argsort(item_cat, kind="stable")
  cat_n = np.bincount(item_cat, minlength=C)
  cat_first = np.concatenate([[0], np.cumsum(cat_n)[:-1]])
  return dict(
    cat_cum=cat_cum,
    cat_item_lo=cat_cum - cat_pop,
    cat_item_hi=cat_cum.copy(),
    item_cum_by_cat=np.cumsum(item_pop[items_by_cat]),
    items_by_cat=items_by_cat,
    cat_first=cat_first,
    cat_last=np.maximum(cat_first + cat_n - 1, cat_first),  # empty categories are never drawn
  )


def _draw_users(rng, cfg):
  """Users: the World's user fields but the history lists, and each user's event count."""
  U, K, d, b = cfg.num_users, cfg.num_profiles, cfg.latent_dim, cfg.profile_strength
  user_w = _zipf_weights(rng, U, cfg.user_activity_skew)
  prof_w = _zipf_weights(rng, K, 0.5)
  prof = rng.choice(K, size=U, p=prof_w / prof_w.sum())
  prof_s, prof_c, prof_p = _unit(rng, K, d), _unit(rng, K, d), rng.standard_normal(K)
  u_s = math.sqrt(b) * prof_s[prof] + math.sqrt(1 - b) * _unit(rng, U, d)
  u_c = math.sqrt(b) * prof_c[prof] + math.sqrt(1 - b) * _unit(rng, U, d)
  user_click_bias = cfg.user_bias_std * rng.standard_normal(U)
  user_propensity = cfg.user_bias_std * (
    math.sqrt(b) * prof_p[prof] + math.sqrt(1 - b) * rng.standard_normal(U)
  )
  rel = user_w / user_w.mean()
  n_events = 1 + rng.poisson(cfg.history_len * np.clip(np.sqrt(rel), 0.3, 4.0))
  profile = _draw_profile(rng, cfg, u_s, u_c, user_propensity, n_events)
  user_sparse = np.stack(
    [np.arange(U) + 2, prof + 2, prof // 8 + 2, *[profile[f] + 2 for f in PROFILE_LEVELS]], axis=1
  ).astype(np.int32)
  user_buys = rng.poisson(0.1 * n_events * np.exp(user_propensity)).astype(np.float64)
  fields = dict(
    user_cum=np.cumsum(user_w),
    u_s=u_s.astype(np.float32),
    u_c=u_c.astype(np.float32),
    user_click_bias=user_click_bias.astype(np.float32),
    user_propensity=user_propensity.astype(np.float32),
    user_sparse=user_sparse,
    user_dense=np.stack([n_events, user_buys], 1).astype(np.float32),
  )
  return fields, n_events


def _draw_profile(rng, cfg, u_s, u_c, user_propensity, n_events) -> dict[str, np.ndarray]:
  """The profile fields' levels: noisy quantiles of the user's latents, 129 uniform."""
  U = len(u_s)
  noise = lambda: 0.5 * rng.standard_normal(U)
  return {
    "124": _quantile_levels(u_s[:, 0] + noise(), 2),
    "125": _quantile_levels(u_s[:, 1] + noise(), 7),
    "126": _quantile_levels(user_propensity / max(cfg.user_bias_std, 1e-9) + noise(), 3),
    "127": _quantile_levels(u_c[:, 0] + noise(), 4),
    "128": _quantile_levels(np.log(n_events) + noise(), 2),
    "129": rng.integers(0, 4, U),
  }


def _draw_histories(rng, cfg, n_events, users: dict, items: dict, pop: dict):
  """Behaviour events (user, category, item): the category by click interest, the item inside it
  by purchase interest."""
  ev_user = np.repeat(np.arange(cfg.num_users), n_events)
  n_ev = len(ev_user)
  Hc = cfg.history_candidates
  ev_cat = np.empty(n_ev, np.int64)
  ev_item = np.empty(n_ev, np.int64)
  u_s32, u_c32, cat_s32, v_c32 = users["u_s"], users["u_c"], items["cat_center"], items["v_c"]
  for lo in range(0, n_ev, cfg.chunk_rows):  # chunks bound the [n, k, d] temporaries
    sl = slice(lo, min(lo + cfg.chunk_rows, n_ev))
    eu = ev_user[sl]
    ec = _choose_category(rng, u_s32[eu], cat_s32, pop["cat_cum"], Hc, cfg.interest_temperature)
    cand = _item_in_category(
      rng,
      ec[:, None].repeat(Hc, 1),
      pop["cat_item_lo"],
      pop["cat_item_hi"],
      pop["item_cum_by_cat"],
      pop["items_by_cat"],
      pop["cat_first"],
      pop["cat_last"],
    )
    score = cfg.purchase_temperature * np.einsum("nd,nkd->nk", u_c32[eu], v_c32[cand])
    ev_cat[sl] = ec
    ev_item[sl] = cand[np.arange(len(eu)), np.argmax(score + rng.gumbel(size=score.shape), axis=1)]
  return ev_user, ev_cat, ev_item


def _history_lists(cfg, ev_user, ev_cat, ev_item, item_shop, item_brand, item_nodes):
  """The users' behaviour lists (categories, shops, brands, intentions: most frequent first), side
  by side: (ids, weights)."""
  U, L = cfg.num_users, cfg.list_len
  short = max(1, (L * 4) // 5)
  nodes = item_nodes[ev_item]
  has = nodes > 0
  node_user = np.broadcast_to(ev_user[:, None], nodes.shape)[has]
  ids, w = zip(
    _top_counts(ev_user, ev_cat, U, cfg.num_categories, L),
    _top_counts(ev_user, item_shop[ev_item], U, cfg.num_shops, short),
    _top_counts(ev_user, item_brand[ev_item], U, cfg.num_brands, short),
    _top_counts(node_user, nodes[has] - 2, U, cfg.num_intentions, L),
    strict=True,
  )
  return np.concatenate(ids, axis=1), np.concatenate(w, axis=1)


def _calibrate(world: World, item_click_bias, bait, ctr_noise) -> dict[str, np.ndarray]:
  """Sets the world's intercepts, E[pctr] = ctr, E[pdaction | click] = daction_rate and
  E[pcvr | click] = cvr on a calibration sample, then the items' historical CTR; returns the
  sample."""
  cfg = world.cfg
  cal_rng = np.random.default_rng([cfg.seed, 1])
  parts = [
    _draw(world, cal_rng, min(cfg.chunk_rows, cfg.calibration_rows - lo))
    for lo in range(0, cfg.calibration_rows, cfg.chunk_rows)
  ]
  cal = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  zc, zv, zd = cal["z_click"], cal["z_conv"], cal["z_daction"]
  world.c_ctr = _solve(lambda c: _sigmoid(c + zc).mean(), cfg.ctr)
  w = _sigmoid(world.c_ctr + zc)
  world.c_daction = _solve(lambda c: np.average(_sigmoid(c + zd), weights=w), cfg.daction_rate)
  pd = _sigmoid(world.c_daction + zd)
  kappa = cfg.daction_informativeness
  world.c_cvr = _solve(
    lambda c: np.average(pd * _sigmoid(c + zv + kappa) + (1 - pd) * _sigmoid(c + zv), weights=w),
    cfg.cvr,
  )
  world.item_ctr_hist = _sigmoid(
    world.c_ctr + item_click_bias + cfg.click_bait * bait + ctr_noise
  ).astype(np.float32)
  return cal


def _dense_fields(world: World, cal: dict) -> tuple[DenseField, ...]:
  """Dense statistics over the impression distribution (the calibration sample)."""
  dense = _dense(world, cal["user"], cal["item"])
  fields = []
  for j, name in enumerate(DENSE_FIELDS):
    x = dense[:, j].astype(np.float64)
    edges = np.quantile(x, np.linspace(0, 1, 17)[1:-1])
    fields.append(
      DenseField(name, float(x.mean()), float(x.std()) or 1.0, tuple(float(e) for e in edges))
    )
  return tuple(fields)


def _choose_category(
  rng, u: np.ndarray, centers: np.ndarray, cat_cum: np.ndarray, k: int, temp: float
) -> np.ndarray:
  """k categories drawn by popularity, the one the interest ranks best (Gumbel noise) is chosen."""
  n = len(u)
  cand = _search(cat_cum, rng.random((n, k)) * cat_cum[-1])
  if temp == 0.0:
    return cand[:, 0]
  score = temp * np.einsum("nd,nkd->nk", u, centers[cand]) / math.sqrt(u.shape[1])
  return cand[np.arange(n), np.argmax(score + rng.gumbel(size=score.shape), axis=1)]


def _item_in_category(
  rng,
  cat: np.ndarray,
  lo: np.ndarray,
  hi: np.ndarray,
  cum: np.ndarray,
  items_by_cat: np.ndarray,
  first: np.ndarray,
  last: np.ndarray,
) -> np.ndarray:
  """An item of each category by popularity; `first`/`last` bound the category in `items_by_cat`."""
  u = lo[cat] + rng.random(cat.shape) * (hi[cat] - lo[cat])
  pos = np.searchsorted(cum, u, side="right")
  return items_by_cat[np.clip(pos, first[cat], last[cat])]  # guards float edges


def _dense(world: World, user: np.ndarray, item: np.ndarray) -> np.ndarray:
  return np.stack(
    [
      world.user_dense[user, 0],
      world.item_price[item],
      world.item_ctr_hist[item],
      world.user_dense[user, 1],
    ],
    axis=1,
  ).astype(np.float32)


def _draw(world: World, rng, n: int) -> dict[str, np.ndarray]:
  """Impressions (user, item, position) and their logits without intercepts."""
  cfg = world.cfg
  user = _search(world.user_cum, rng.random(n) * world.user_cum[-1])
  if cfg.targeting > 0:
    cat = _choose_category(
      rng, world.u_s[user], world.cat_center, world.cat_cum, cfg.exposure_candidates, cfg.targeting
    )
  else:
    cat = _search(world.cat_cum, rng.random(n) * world.cat_cum[-1])
  item = _item_in_category(
    rng,
    cat,
    world.cat_item_lo,
    world.cat_item_hi,
    world.item_cum_by_cat,
    world.items_by_cat,
    world.cat_first,
    world.cat_last,
  )
  pos = rng.integers(1, cfg.num_positions + 1, n)
  a_s = np.einsum("nd,nd->n", world.u_s[user], world.v_s[item], dtype=np.float64)
  a_c = np.einsum("nd,nd->n", world.u_c[user], world.v_c[item], dtype=np.float64)
  rho = cfg.shared_structure
  bait = world.bait[item].astype(np.float64)
  z_click = (
    cfg.ctr_signal * a_s
    + cfg.click_bait * bait
    + world.user_click_bias[user]
    + world.item_click_bias[item]
    - cfg.position_effect * np.log(pos)
  )
  z_conv = (
    cfg.cvr_signal * (math.sqrt(rho) * a_s + math.sqrt(1 - rho) * a_c)
    - cfg.click_bait * bait
    + world.item_quality[item]
    + world.user_propensity[user]
  )
  z_daction = cfg.daction_coupling * z_conv + world.item_daction_bias[item]
  return {
    "user": user,
    "item": item,
    "pos": pos,
    "z_click": z_click,
    "z_conv": z_conv,
    "z_daction": z_daction,
  }


def _cross(
  ids: np.ndarray, w: np.ndarray, value_id: np.ndarray, salt: int, buckets: int
) -> np.ndarray:
  """PAD if the item's value is not in the user's list, else a hash of (value, count level)."""
  count = (w * (ids == value_id[:, None])).sum(1)
  level = np.searchsorted(np.asarray(CROSS_LEVELS, np.float64), count, side="right")  # 0 = absent
  h = _hash2(value_id, level, salt, buckets) + 2
  return np.where(level > 0, h, 0)


def _chunk(world: World, rng, n: int, first_sample_id: int) -> dict[str, np.ndarray]:
  cfg = world.cfg
  r = _draw(world, rng, n)
  user, item, pos = r["user"], r["item"], r["pos"]
  kappa = cfg.daction_informativeness
  pctr = _sigmoid(world.c_ctr + r["z_click"])
  pd = _sigmoid(world.c_daction + r["z_daction"])
  y4 = _sigmoid(world.c_cvr + r["z_conv"])
  y3 = _sigmoid(world.c_cvr + r["z_conv"] + kappa)
  pcvr = pd * y3 + (1 - pd) * y4
  u = rng.random((n, 5))
  click = u[:, 0] < pctr
  d_cf = u[:, 1] < pd  # counterfactual DAction, for every impression
  would_buy = u[:, 2] < np.where(d_cf, y3, y4)
  daction = click & d_cf
  cart = daction & (u[:, 3] < np.where(would_buy, cfg.cart_share_buyers, cfg.cart_share))
  wish = daction & (~cart | (u[:, 4] < cfg.both_share))
  buy = click & would_buy

  mv_ids = np.concatenate([world.user_mv_ids[user], world.item_nodes[item]], axis=1)
  mv_w = np.concatenate(
    [world.user_mv_w[user], (world.item_nodes[item] > 0).astype(np.float32)], axis=1
  )
  offs = world.schema.mv_offsets
  lens = [f.max_len for f in world.schema.multi]
  seg = lambda k: slice(offs[k], offs[k] + lens[k])
  cb = cfg.cross_buckets
  crosses = [
    _cross(mv_ids[:, seg(0)], mv_w[:, seg(0)], world.item_cat[item] + 2, 508, cb),
    _cross(mv_ids[:, seg(1)], mv_w[:, seg(1)], world.item_shop[item] + 2, 509, cb),
    _cross(mv_ids[:, seg(2)], mv_w[:, seg(2)], world.item_brand[item] + 2, 702, cb),
    _cross(mv_ids[:, seg(3)], mv_w[:, seg(3)], world.item_nodes[item, 0].astype(np.int64), 853, cb),
  ]
  sparse = np.concatenate(
    [
      world.user_sparse[user],
      np.stack(
        [
          item + 2,
          world.item_cat[item] + 2,
          world.item_shop[item] + 2,
          world.item_brand[item] + 2,
          pos + 1,
          *crosses,
        ],
        axis=1,
      ).astype(np.int32),
    ],
    axis=1,
  )
  return {
    "sparse": sparse.astype(np.int32),
    "mv_ids": mv_ids.astype(np.int32),
    "mv_w": mv_w.astype(np.float32),
    "dense": _dense(world, user, item),
    "labels": np.stack([click, buy, cart, wish, daction], axis=1).astype(np.uint8),
    "user": (user + 2).astype(np.int64),  # = field 101
    "sample_id": np.arange(first_sample_id, first_sample_id + n, dtype=np.int64),
    "truth": np.stack([pctr, pcvr, pd, would_buy], axis=1).astype(np.float32),
  }


def iter_blocks(world: World, split: str):
  """The split's rows as chunks; chunk j uses rng stream (seed, split, j), so chunks are
  independent."""
  if split not in SPLITS:
    raise ValueError(f"split={split!r}; allowed: {list(SPLITS)}")
  cfg = world.cfg
  total = cfg.num_train if split == "train" else cfg.num_eval
  base = 0 if split == "train" else cfg.num_train
  for j, start in enumerate(range(0, total, cfg.chunk_rows)):
    n = min(cfg.chunk_rows, total - start)
    yield _chunk(world, np.random.default_rng([cfg.seed, SPLITS[split], j]), n, base + start)
