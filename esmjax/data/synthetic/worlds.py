"""The synthetic world's knobs (`default_config`), their validation and the schema it writes.

Why synthetic: no real dataset says whether an unclicked impression *would* have converted, so
sample selection bias can only be measured where the counterfactual is known (docs/design.md,
Synthetic world). `synthetic_world` draws the world and its impressions; `synthetic` writes them.

The causal process (one impression; every probability below is known and written as truth)
------------------------------------------------------------------------------------------
World (drawn once from `seed`, shared by train and eval):
  * Users have a Zipf activity weight, a profile prototype k (field 121; 122 is a coarse group of
    k), a *click-interest* vector u_s and a *purchase-interest* vector u_c (a `profile_strength`
    share from the prototype, the rest individual), a click bias and a purchase propensity.
    Gender, age, consumption I/II and occupation (124-128) are noisy quantiles of those latents
    and of activity; geography (129) is pure noise. A user's individual part shows only through
    101 and the lists.
  * Items have a Zipf popularity (`popularity_skew`), a category, a shop and a brand (mostly from
    their category), 1-3 intention nodes of their category (210), vectors v_s (category + own) and
    v_c (category + brand + own), a click bias, a quality (shop + own − `price_effect`·log-price),
    a DAction bias, a price, and a **bait** score b ~ N(0, 1) (half shop, half own).
  * Behaviour lists (109_14 categories, 110_14 shops, 127_14 brands, 150_14 intention nodes; weights
    = counts) come from each user's history: ~`history_len` events whose category follows the user's
    click interest and whose item inside the category follows the purchase interest (u_c·v_c), so
    the lists carry signal for both tasks. Dense: history length, item price, a noisy item CTR at an
    average user (bait included), the user's past buys (from the propensity). Crosses 508/509/702/
    853 hash (item category/shop/brand/first node, how often it is in the user's list) into
    `cross_buckets` buckets (PAD when it is not in the list).
Impression: user ~ activity; item: the system draws `exposure_candidates` categories by popularity
and shows the one the user's click interest ranks best (`targeting`, 0 = pure popularity), then an
item of that category by popularity; position p uniform in 1..`num_positions` (field 301).
  a_s = u_s·v_s (click affinity), a_c = u_c·v_c (CVR-only affinity), unit variance over random
  pairs.
  click logit  = c_ctr + ctr_signal·a_s + click_bait·b + user click bias + item click bias
                 − position_effect·log p                               (position: clicks only)
  conv score z = cvr_signal·(√ρ·a_s + √(1−ρ)·a_c) − click_bait·b + item quality + user propensity
                 with ρ = `shared_structure`
  pdaction     = σ(c_d + daction_coupling·z + item DAction bias)                 p(DAction | click)
  y3 = σ(c_cvr + z + κ) = p(buy | click, DAction),   y4 = σ(c_cvr + z) = p(buy | click, OAction),
  κ = `daction_informativeness` (log-odds ratio), pcvr = pdaction·y3 + (1 − pdaction)·y4 exactly
  (ESM2's decomposition), pctr = σ(click logit).
  Sampled for EVERY impression: click ~ B(pctr); a counterfactual DAction d ~ B(pdaction);
  would_buy ~ B(y3 if d else y4) (so would_buy ~ B(pcvr)); click and (d, would_buy) are independent
  given the impression. Recorded: buy = click ∧ would_buy, daction = click ∧ d; a DAction is a cart
  (probability `cart_share`, `cart_share_buyers` when would_buy), else a wish, and a cart is also a
  wish with probability `both_share`: daction = cart ∨ wish, and nothing but click happens
  unclicked.
  The intercepts c_ctr, c_d, c_cvr are solved on a calibration sample so that E[pctr] = `ctr`,
  E[pdaction | click] = `daction_rate`, E[pcvr | click] = `cvr` whatever the other knobs are.

Selection mechanism: clicked impressions are not a random sample of impressions. Click-bait raises
the click logit and lowers the conversion score by the same `click_bait`·b, so clicked rows over-
represent items that convert badly; the shared affinity a_s raises both, so clicked rows over-
represent rows that convert well. Which wins depends on the knobs (defaults: the shared part wins,
E[pcvr | click] > E[pcvr]; `world_stats` prints both). Click biases and positions move clicks only.
Shared structure: ρ is the fraction of the variance of the CVR affinity that is the CTR affinity;
the biases, quality, propensity and bait scores are drawn independently of each other.

Honest notes: the defaults were chosen for base rates (CTR ≈ 5 %, buys ≈ 0.45 % of impressions,
enough buys to learn from 1 M rows) and for features that carry signal, not to make any model win;
experiments vary `click_bait`, `shared_structure` and `popularity_skew` and report what they see.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

from esmjax.common.schema import DenseField, MultiField, Schema, SparseField

LABELS = ("click", "buy", "cart", "wish", "daction")
TRUTH = ("pctr", "pcvr", "pdaction", "would_buy")
SPLITS = {"train": 2, "eval": 3}  # rng stream per split; the world is stream 0, calibration 1

USER_FIELDS = ("101", "121", "122", "124", "125", "126", "127", "128", "129")
ITEM_FIELDS = ("205", "206", "207", "216")
CONTEXT_FIELDS = ("301",)
CROSS_FIELDS = ("508", "509", "702", "853")  # item cat/shop/brand/node x user list 109/110/127/150
USER_LISTS = ("109_14", "110_14", "127_14", "150_14")
DENSE_FIELDS = ("user_activity", "item_price", "item_ctr_hist", "user_buys_hist")
PROFILE_LEVELS = {"124": 2, "125": 7, "126": 3, "127": 4, "128": 2, "129": 4}  # levels per field
CROSS_LEVELS = (1, 2, 3, 6)  # count buckets of a cross: 1, 2, 3-5, 6+


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Sizes.
  c.seed = 0  # the world and both splits; same config -> identical dataset
  c.num_users = 50_000  # users (field 101), Zipf activity
  c.num_items = 20_000  # items (field 205), Zipf popularity
  c.num_categories = 200  # item categories (206, 109_14)
  c.num_shops = 2_000  # shops (207, 110_14)
  c.num_brands = 1_000  # brands (216, 127_14)
  c.num_intentions = 1_000  # intention nodes (210, 150_14)
  c.num_profiles = 98  # user profile prototypes (121); 122 groups them by 8
  c.num_positions = 10  # display positions (301)
  c.cross_buckets = 4_096  # hash buckets of each cross field (508, 509, 702, 853)
  c.num_train = 1_000_000  # train impressions
  c.num_eval = 200_000  # eval impressions
  c.block_rows = 8_192  # rows per on-disk block
  c.blocks_per_shard = 32  # blocks per shard file
  c.chunk_rows = 65_536  # rows generated at once (bounds memory; part of the rng stream layout)
  c.calibration_rows = 200_000  # impressions used to solve the intercepts and dense statistics
  c.latent_dim = 8  # dimension of the user/item interest vectors
  # Base rates (intercepts are solved to hit them).
  c.ctr = 0.05  # E[p(click | impression)]
  c.cvr = 0.09  # E[p(buy | click)] over clicked impressions (buys ≈ ctr·cvr ≈ 0.45 %)
  c.daction_rate = 0.2  # E[p(DAction | click)] over clicked impressions
  # Selection, shared structure, popularity.
  c.click_bait = 0.5  # bait b ~ N(0,1): +click_bait·b on the click logit, − on conversion
  c.shared_structure = 0.5  # ρ: share of the CVR affinity's variance that is the CTR one (0..1)
  c.popularity_skew = 0.8  # Zipf exponent of item popularity (0 = uniform)
  c.user_activity_skew = 0.6  # Zipf exponent of user activity (0 = uniform)
  c.targeting = 1.0  # how strongly exposure follows the user's click interest (0 = popularity only)
  c.exposure_candidates = 8  # categories the exposure policy chooses among per impression
  # Click and conversion signal.
  c.ctr_signal = 1.0  # weight of the click affinity a_s in the click logit
  c.cvr_signal = 1.0  # weight of the CVR affinity in the conversion score
  c.position_effect = 0.3  # click logit −= position_effect·log(position); moves clicks only
  c.user_bias_std = 0.5  # std of user click bias and of user purchase propensity
  c.item_bias_std = 0.5  # std of item click bias and of item quality
  c.price_effect = 0.3  # conversion score −= price_effect·standardised log-price
  # DAction (cart / wish) between click and buy.
  c.daction_informativeness = 2.0  # κ: log-odds ratio of buy with vs without DAction (0 = none)
  c.daction_coupling = 1.0  # weight of the conversion score in the DAction logit
  c.daction_item_std = 0.5  # std of an item's DAction bias (DAction variation unrelated to buying)
  c.cart_share = 0.6  # p(cart | DAction) for impressions that would not buy
  c.cart_share_buyers = 0.85  # p(cart | DAction) for impressions that would buy
  c.both_share = 0.15  # p(also wish | cart)
  # How features reveal the latents.
  c.profile_strength = 0.5  # share of a user's interest variance explained by the profile (121)
  c.category_strength = 0.6  # share of an item's click-interest variance explained by its category
  c.history_len = 20  # mean behaviour events per user (scaled by activity)
  c.interest_temperature = 1.5  # how strongly history categories follow the user's click interest
  c.purchase_temperature = 1.5  # how strongly history items follow the user's purchase interest
  c.history_candidates = 8  # candidates per history choice
  c.list_len = 10  # max_len of 109_14 and 150_14 (110_14, 127_14: 8; 210: 3)
  return c


# Named worlds: the knobs that differ from `default_config`.
WORLDS = {
  "default": {},
  # The ESMM paper's public Ali-CCP set (Table 1): 84 M impressions, 3.4 M clicks, 18 k
  # conversions: CTR 3.4 / 84 = 4.0 %, CVR | click 18 k / 3.4 M = 0.53 %. DAction stays at the
  # default 0.2 of clicks (the ESM2 paper's dataset statistics were not at hand). Sized so that a
  # CVR AUC on clicked rows rests on a few hundred conversions: 4 M training impressions (~850
  # clicked conversions) and 1 M for evaluation (~210).
  "paper": {"ctr": 0.04, "cvr": 0.0053, "num_train": 4_000_000, "num_eval": 1_000_000},
}


def world_config(name: str = "default", **overrides) -> ml_collections.ConfigDict:
  """The knobs of a named world (`WORLDS`), with `overrides` (validated like `resolve_config`).

  Conversion-rate sweeps hold the impressions: worlds that differ in `cvr` alone have the same
  users, items, impressions, features, clicks and DActions (every draw and intercept but c_cvr is
  the same), and differ in conversions only (and the cart / wish split, which depends on them).
  """
  if name not in WORLDS:
    raise ValueError(f"synthetic world {name!r} is not defined; allowed: {sorted(WORLDS)}")
  return resolve_config({**WORLDS[name], **overrides})


def _is_number(value) -> bool:
  try:
    float(value)
  except (TypeError, ValueError):
    return False
  return True


def resolve_config(
  cfg: Mapping[str, Any] | ml_collections.ConfigDict | None = None,
) -> ml_collections.ConfigDict:
  """Defaults overridden by `cfg`; unknown keys and out-of-range values raise, naming the key."""
  out = default_config()
  given = dict(cfg.items()) if cfg is not None else {}
  for k, v in given.items():
    if k not in out:
      raise ValueError(f"synthetic config: unknown key {k!r}; known keys: {sorted(out.keys())}")
    if type(out[k]) in (int, float) and not _is_number(v):
      raise ValueError(f"synthetic config: {k}={v!r} must be a number")
    if type(out[k]) is int and float(v) != int(v):
      raise ValueError(f"synthetic config: {k}={v!r} must be an integer")
    out[k] = type(out[k])(v) if type(out[k]) in (int, float) else v  # numpy scalars too
  for k in (
    "num_users",
    "num_items",
    "num_categories",
    "num_shops",
    "num_brands",
    "num_intentions",
    "num_profiles",
    "num_positions",
    "cross_buckets",
    "block_rows",
    "blocks_per_shard",
    "chunk_rows",
    "calibration_rows",
    "latent_dim",
    "exposure_candidates",
    "history_candidates",
    "list_len",
    "history_len",
  ):
    if int(out[k]) < 1:
      raise ValueError(f"synthetic config: {k}={out[k]!r} must be >= 1")
  for k in ("num_train", "num_eval"):
    if int(out[k]) < 0:
      raise ValueError(f"synthetic config: {k}={out[k]!r} must be >= 0")
  for k in ("ctr", "cvr", "daction_rate"):
    if not 0.0 < out[k] < 1.0:
      raise ValueError(f"synthetic config: {k}={out[k]!r} must be in (0, 1)")
  for k in (
    "shared_structure",
    "cart_share",
    "cart_share_buyers",
    "both_share",
    "profile_strength",
    "category_strength",
  ):
    if not 0.0 <= out[k] <= 1.0:
      raise ValueError(f"synthetic config: {k}={out[k]!r} must be in [0, 1]")
  return out


def build_schema(cfg, dense: tuple[DenseField, ...] | None = None) -> Schema:
  cfg = resolve_config(cfg)
  g = 2  # PAD, OOV
  n_groups = -(-cfg.num_profiles // 8)
  user_n = (cfg.num_users, cfg.num_profiles, n_groups, *PROFILE_LEVELS.values())
  item_n = (cfg.num_items, cfg.num_categories, cfg.num_shops, cfg.num_brands)
  sparse = [
    *[SparseField(f, n + g, "user") for f, n in zip(USER_FIELDS, user_n, strict=True)],
    *[SparseField(f, n + g, "item") for f, n in zip(ITEM_FIELDS, item_n, strict=True)],
    SparseField(CONTEXT_FIELDS[0], cfg.num_positions + g, "context"),
    *[SparseField(f, cfg.cross_buckets + g, "combo") for f in CROSS_FIELDS],
  ]
  short = max(1, (cfg.list_len * 4) // 5)
  list_n = (cfg.num_categories, cfg.num_shops, cfg.num_brands, cfg.num_intentions)
  list_len = (cfg.list_len, short, short, cfg.list_len)
  multi = (
    *[
      MultiField(f, n + g, L, "mean", "user")
      for f, n, L in zip(USER_LISTS, list_n, list_len, strict=True)
    ],
    MultiField("210", cfg.num_intentions + g, 3, "sum", "item"),
  )
  if dense is None:
    dense = tuple(DenseField(n) for n in DENSE_FIELDS)
  return Schema(sparse=tuple(sparse), multi=multi, dense=tuple(dense), labels=LABELS, truth=TRUTH)
