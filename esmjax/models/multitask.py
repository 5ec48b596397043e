"""ESMM, ESMM-NS, ESM2 and the papers' baselines as one Flax module + a per-model objective.

Every model is a set of towers, each reading the embedding set it is assigned (`shared` for the
entire-space models; one set per network for the independently trained baselines). What differs is
how tower logits compose into probabilities and which loss trains them (DESIGN.md §1):

  esmm          pCTCVR = pCTR·pCVR; loss BCE(click, pCTR) + BCE(click∧buy, pCTCVR), all impressions
  esmm_ns       esmm without shared embeddings (one table per tower)
  esm2          pCTAVR = y1·y2; pCVR = y2·y3 + (1−y2)·y4; pCTCVR = y1·pCVR;
                loss w1·BCE(click, y1) + w2·BCE(click∧daction, pCTAVR) + w3·BCE(click∧buy, pCTCVR)
  base          CVR tower on clicked impressions only; an independent CTR network (own table) gives
                pCTR and pCTCVR = pCTR·pCVR (the ESMM paper's protocol for non-ESMM models)
  aman          base, plus unclicked impressions sampled as negatives at `aman_rate`
  oversampling  base, with click→buy positives weighted ×`oversample_k` (= copied k times)
  unbias        base, clicked rows weighted by 1/pCTR of the CTR network (importance / rejection)
  division      independent CTR and CTCVR networks; pCVR = min(pCTCVR / pCTR, 1)
  dnn, dnn_os   the ESM2 paper's names for base and oversampling

All probabilities are returned as logs; products are sums (models.losses).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from esmjax.models import layers
from esmjax.models import losses as L

ls = L.log_sigmoid


class ModelName(str, enum.Enum):
  ESMM = "esmm"  # entire-space CTR × CVR (Ma et al. 2018)
  ESMM_NS = "esmm_ns"  # ESMM without shared embeddings
  ESM2 = "esm2"  # four heads through DAction / OAction (Wen et al. 2020)
  BASE = "base"  # click-only CVR + independent CTR network
  AMAN = "aman"  # base + sampled unclicked negatives
  OVERSAMPLING = "oversampling"  # base with positives copied ×k
  UNBIAS = "unbias"  # base with clicked rows weighted by 1/pCTR
  DIVISION = "division"  # pCVR = pCTCVR / pCTR from independent networks
  DNN = "dnn"  # ESM2 paper's DNN (= base)
  DNN_OS = "dnn_os"  # ESM2 paper's DNN-OS (= oversampling)

  @classmethod
  def parse(cls, value: str, key: str = "model.name") -> "ModelName":
    try:
      return cls(value)
    except ValueError:
      raise ValueError(f"{key}={value!r} is not a model; allowed: {[m.value for m in cls]}") from None


# tower name -> embedding set it reads, per model.
_TOWERS: dict[ModelName, tuple[tuple[str, str], ...]] = {
    ModelName.ESMM: (("ctr", "shared"), ("cvr", "shared")),
    ModelName.ESMM_NS: (("ctr", "ctr"), ("cvr", "cvr")),
    ModelName.ESM2: (("ctr", "shared"), ("daction", "shared"), ("buy_d", "shared"), ("buy_o", "shared")),
    ModelName.DIVISION: (("ctr", "ctr"), ("ctcvr", "ctcvr")),
}
for _m in (ModelName.BASE, ModelName.AMAN, ModelName.OVERSAMPLING, ModelName.UNBIAS, ModelName.DNN,
           ModelName.DNN_OS):
  _TOWERS[_m] = (("ctr", "ctr"), ("cvr", "cvr"))


def towers_of(name: ModelName) -> tuple[tuple[str, str], ...]:
  return _TOWERS[name]


def table_sets(name: ModelName) -> tuple[str, ...]:
  return tuple(dict.fromkeys(s for _, s in _TOWERS[name]))


def required_labels(name: ModelName) -> tuple[str, ...]:
  return ("click", "buy", "daction") if name == ModelName.ESM2 else ("click", "buy")


class MultiTaskModel(nn.Module):
  """Towers over field inputs; returns {tower: logit [B]}."""

  towers: tuple[tuple[str, str], ...]
  inputs: dict[str, Any]  # FieldInputs kwargs (static schema facts)
  hidden: tuple[int, ...] = (200, 80)
  activation: str = "relu"
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, emb: dict[str, jax.Array], mv_w, dense, train: bool = False):
    feats = {}
    for s in dict.fromkeys(s for _, s in self.towers):
      feats[s] = layers.FieldInputs(**self.inputs, dtype=self.dtype, name=f"inputs_{s}")(emb[s], mv_w, dense)
    return {t: layers.Tower(self.hidden, self.activation, self.dropout, self.dtype, name=f"tower_{t}")(
        feats[s], train) for t, s in self.towers}


@dataclasses.dataclass(frozen=True)
class Objective:
  """How a model's logits become log-probabilities and a loss."""

  name: ModelName
  loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # ESM2 w1, w2, w3
  aman_rate: float = 0.1
  oversample_k: float = 5.0
  unbias_min_pctr: float = 0.01

  def log_probs(self, z: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """{log_pctr, log_pcvr, log_pctcvr[, log_pctavr]} from tower logits."""
    n = self.name
    if n == ModelName.ESM2:
      l1, l2 = ls(z["ctr"]), ls(z["daction"])
      log_pcvr = L.log_mix(ls(z["buy_d"]), ls(z["buy_o"]), l2, ls(-z["daction"]))
      return {"log_pctr": l1, "log_pcvr": log_pcvr, "log_pctcvr": l1 + log_pcvr, "log_pctavr": l1 + l2}
    if n == ModelName.DIVISION:
      l1, l13 = ls(z["ctr"]), ls(z["ctcvr"])
      return {"log_pctr": l1, "log_pcvr": jnp.minimum(l13 - l1, 0.0), "log_pctcvr": l13}
    l1, l3 = ls(z["ctr"]), ls(z["cvr"])
    return {"log_pctr": l1, "log_pcvr": l3, "log_pctcvr": l1 + l3}

  def loss(self, z: dict[str, jax.Array], labels: dict[str, jax.Array], rng: jax.Array):
    """(total loss, {per-task losses}) averaged over the batch's impressions."""
    n, lp = self.name, self.log_probs(z)
    click, buy = labels["click"], labels["buy"]
    ctr = L.bce_from_logits(click, z["ctr"])
    if n in (ModelName.ESMM, ModelName.ESMM_NS):
      ctcvr = L.bce_from_logp(click * buy, lp["log_pctcvr"])
      return ctr + ctcvr, {"ctr": ctr, "ctcvr": ctcvr}
    if n == ModelName.ESM2:
      w1, w2, w3 = self.loss_weights
      ctavr = L.bce_from_logp(click * labels["daction"], lp["log_pctavr"])
      ctcvr = L.bce_from_logp(click * buy, lp["log_pctcvr"])
      return w1 * ctr + w2 * ctavr + w3 * ctcvr, {"ctr": ctr, "ctavr": ctavr, "ctcvr": ctcvr}
    if n == ModelName.DIVISION:
      ctcvr = L.bce_from_logits(click * buy, z["ctcvr"])
      return ctr + ctcvr, {"ctr": ctr, "ctcvr": ctcvr}
    # Click-space CVR baselines: which rows train the CVR tower, and with what weight.
    w = click
    if n == ModelName.AMAN:
      sampled = jax.random.bernoulli(rng, self.aman_rate, click.shape).astype(click.dtype)
      w = click + (1.0 - click) * sampled
    elif n in (ModelName.OVERSAMPLING, ModelName.DNN_OS):
      w = click * (1.0 + (self.oversample_k - 1.0) * buy)
    elif n == ModelName.UNBIAS:
      pctr = jax.lax.stop_gradient(jnp.exp(lp["log_pctr"]))
      w = click / jnp.maximum(pctr, self.unbias_min_pctr)
    # Normalise by the clicked rows seen (not by w's sum) so the weighting changes the relative
    # pull of positives / sampled negatives as copying or sampling would.
    nll = jax.nn.softplus(z["cvr"]) - buy * click * z["cvr"]
    cvr = jnp.sum(w * nll) / jnp.maximum(jnp.sum(jnp.where(w > 0, 1.0, 0.0)), 1.0)
    return ctr + cvr, {"ctr": ctr, "cvr": cvr}


def probabilities(log_probs: dict[str, jax.Array]) -> dict[str, jax.Array]:
  return {k[4:]: jnp.exp(v) for k, v in log_probs.items()}
