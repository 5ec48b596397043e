"""AITM (Xi et al., KDD 2021): sequential click → conversion towers with Adaptive Information
Transfer, and a behavioural expectation calibrator.

Network (its own Flax module, `AitmNet`): shared embeddings feed two MLP towers (hidden sizes
`model.hidden`, activation and dropout after every layer) giving q_click and q_conv [B, h]. The
information the click task passes on is p = act(W_p·q_click + b_p) (dropout too), and the
conversion task attends over {q_conv, p}:

  Q, K, V = {q_conv, p}·W_q, ·W_k, ·W_v   (h × h, no bias)
  a = softmax over the two of <Q, K>/√h,  z_conv = Σ a·V
  ŷ_click = σ(head_click(q_click)),  ŷ_ctcvr = σ(head_conv(z_conv))

ŷ_ctcvr is the impression → purchase probability (conversion label click ∧ buy), so
pCTR = ŷ_click, pCTCVR = ŷ_ctcvr and pCVR = min(ŷ_ctcvr / ŷ_click, 1), computed in log space.

Loss: BCE(click, ŷ_click) + BCE(click∧buy, ŷ_ctcvr) + α·mean(max(ŷ_ctcvr − ŷ_click, 0)), the
calibrator penalising a later step more likely than an earlier one. α = `aitm_calibrator_weight`,
0.6 as in the paper and PaddleRec's models/multitask/aitm (which sums the penalty over the batch;
here it is the batch mean, so α does not scale with the batch size). The paper's towers are
128-64-32 and its info layer 32-wide; here both follow `model.hidden`, like every other model.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from esmjax.common import hparams
from esmjax.models import layers, model, registry
from esmjax.models import losses as L


@dataclasses.dataclass(frozen=True)
class Hparams:
  aitm_calibrator_weight: float = hparams.field(
    0.6, "AITM: α of the calibrator α·mean(max(pCTCVR − pCTR, 0))", ge=0
  )


class InfoTransfer(nn.Module):
  """Self-attention over the stacked [B, 2, h] {q_t, p_(t−1)}: the attention-weighted sum of V."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = x.shape[-1]
    q, k, v = (
      nn.Dense(h, use_bias=False, dtype=self.dtype, name=n)(x) for n in ("query", "key", "value")
    )
    a = jax.nn.softmax(jnp.sum(q * k, axis=-1) / jnp.sqrt(jnp.asarray(h, x.dtype)), axis=1)
    return jnp.sum(a[..., None] * v, axis=1)


class AitmNet(nn.Module):
  """{'shared': rows} -> {'click': logit [B], 'ctcvr': logit [B]} (see the module docstring)."""

  spec: layers.InputSpec
  hidden: tuple[int, ...]
  activation: str = "relu"
  dropout: float = 0.0
  dtype: Any = jnp.float32
  fuse: bool = True

  @nn.compact
  def __call__(self, emb, mv_w, dense, train: bool = False):
    x = layers.FieldInputs(self.spec, self.dtype, name="inputs_shared")(emb["shared"], mv_w, dense)
    q = layers.tower_group(
      ("click", "conversion"),
      x,
      hidden=self.hidden,
      activation=self.activation,
      dropout=self.dropout,
      dtype=self.dtype,
      train=train,
      fuse=self.fuse,
      head=False,
    )
    info = nn.Dense(self.hidden[-1], dtype=self.dtype, name="info")(q["click"])
    p = layers.ACTIVATIONS[self.activation](info)
    p = nn.Dropout(self.dropout, deterministic=not train, name="info_dropout")(p)
    z = InfoTransfer(self.dtype, name="transfer")(jnp.stack([q["conversion"], p], axis=1))
    head = lambda n, h: nn.Dense(1, dtype=self.dtype, name=n)(h)[:, 0].astype(jnp.float32)
    return {"click": head("head_click", q["click"]), "ctcvr": head("head_conversion", z)}


@registry.register
class Aitm(model.Model):
  name = "aitm"
  order = 5
  towers = (("click", "shared"), ("conversion", "shared"))
  Hparams = Hparams

  @functools.cached_property
  def module(self):
    n = self.net
    return AitmNet(
      spec=n.spec,
      hidden=n.hidden,
      activation=n.activation,
      dropout=n.dropout,
      dtype=n.dtype,
      fuse=n.fuse_towers,
    )

  def tower_flops(self):
    n = self.net
    h = n.hidden[-1]
    body = (n.in_dim, *n.hidden)
    # The info layer on q_click; Q, K, V on both of {q_conv, p}; the conversion head.
    transfer = layers.mlp_flops((h, h)) * (1 + 3 * 2) + layers.mlp_flops((h, 1))
    return {"click": layers.mlp_flops((*body, 1)), "conversion": layers.mlp_flops(body) + transfer}

  def log_probs(self, z):
    l1, l13 = L.log_sigmoid(z["click"]), L.log_sigmoid(z["ctcvr"])
    return {"log_pctr": l1, "log_pcvr": jnp.minimum(l13 - l1, 0.0), "log_pctcvr": l13}

  def loss(self, z, labels, rng):
    click, buy = labels["click"], labels["buy"]
    ctr = L.bce_from_logits(click, z["click"])
    ctcvr = L.bce_from_logits(click * buy, z["ctcvr"])
    gap = jax.nn.sigmoid(z["ctcvr"]) - jax.nn.sigmoid(z["click"])
    calibrator = jnp.mean(jnp.maximum(gap, 0.0))
    total = ctr + ctcvr + self.hp.aitm_calibrator_weight * calibrator
    return total, {"ctr": ctr, "ctcvr": ctcvr, "calibrator": calibrator}
