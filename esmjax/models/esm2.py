"""ESM2 / ESM² (Wen et al., SIGIR 2020): impression → click → DAction / OAction → buy.

Four towers on shared embeddings: y1 = pCTR, y2 = p(DAction | click), y3 = p(buy | DAction),
y4 = p(buy | OAction). pCTAVR = y1·y2; pCVR = y2·y3 + (1 − y2)·y4; pCTCVR = y1·pCVR;
loss w1·BCE(click, y1) + w2·BCE(click∧daction, pCTAVR) + w3·BCE(click∧buy, pCTCVR).

DAction is the paper's "deterministic action": add-to-cart or wish-list. The label is the dataset's
`daction` column, or, on logs that record only `cart` and/or `wish`, their OR (no column to add).
`daction_label` = cart / wish trains DAction as one of them alone (the paper's ablation).
"""

from __future__ import annotations

import dataclasses

from esmjax.common import hparams
from esmjax.models import losses as L
from esmjax.models import model, registry

DACTION_PARTS = ("cart", "wish")  # DAction = cart ∨ wish


@dataclasses.dataclass(frozen=True)
class Hparams:
  loss_weights: tuple[float, float, float] = hparams.field(
    (1.0, 1.0, 1.0), "ESM2 w1 (CTR), w2 (CTAVR), w3 (CTCVR)", ge=0, length=3, not_all_zero=True
  )
  daction_label: str = hparams.field(
    "daction",
    "ESM2's DAction label: daction (cart or wish), cart, wish",
    choices=("daction", *DACTION_PARTS),
  )


@registry.register
class Esm2(model.Model):
  name = "esm2"
  order = 2
  towers = (("ctr", "shared"), ("daction", "shared"), ("buy_d", "shared"), ("buy_o", "shared"))
  labels = ("click", "buy", "daction")
  Hparams = Hparams

  def label_columns(self, dataset_labels):
    cols = {name: (i,) for i, name in enumerate(dataset_labels)}
    want = self.hp.daction_label
    if want == "daction" and "daction" not in cols:
      parts = tuple(cols[p][0] for p in DACTION_PARTS if p in cols)
      if parts:
        cols["daction"] = parts  # the paper's definition, from the columns the logs have
    elif want != "daction":
      if want not in cols:
        raise ValueError(
          f"model.daction_label={want!r}, but the dataset has only labels {list(dataset_labels)}"
        )
      cols["daction"] = cols[want]
    missing = [l for l in ("click", "buy") if l not in cols]
    if "daction" not in cols:
      raise ValueError(
        f"model.name='esm2' needs a DAction label: a 'daction' column, or 'cart' "
        f"and/or 'wish' (DAction = cart ∨ wish), but the dataset has only "
        f"{list(dataset_labels)}"
      )
    if missing:
      raise ValueError(
        f"model.name='esm2' needs label(s) {missing}, but the dataset has only "
        f"{list(dataset_labels)}"
      )
    return cols

  def log_probs(self, z):
    l1, l2 = L.log_sigmoid(z["ctr"]), L.log_sigmoid(z["daction"])
    log_pcvr = L.log_mix(
      L.log_sigmoid(z["buy_d"]), L.log_sigmoid(z["buy_o"]), l2, L.log_sigmoid(-z["daction"])
    )
    return {
      "log_pctr": l1,
      "log_pcvr": log_pcvr,
      "log_pctcvr": l1 + log_pcvr,
      "log_pctavr": l1 + l2,
    }

  def loss(self, z, labels, rng):
    lp = self.log_probs(z)
    click, buy = labels["click"], labels["buy"]
    w1, w2, w3 = self.hp.loss_weights
    ctr = L.bce_from_logits(click, z["ctr"])
    ctavr = L.bce_from_logp(click * labels["daction"], lp["log_pctavr"])
    ctcvr = L.bce_from_logp(click * buy, lp["log_pctcvr"])
    return w1 * ctr + w2 * ctavr + w3 * ctcvr, {"ctr": ctr, "ctavr": ctavr, "ctcvr": ctcvr}
