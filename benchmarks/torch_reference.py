r"""ESMM, ESMM-NS and ESM2 in PyTorch: the same model as esmjax, written the way a PyTorch user
would.

    from torch_reference import TorchMultiTask, Trainer, Variant
    model = TorchMultiTask.from_config(config, schema)        # esmjax config + dataset schema
    trainer = Trainer(model, config, Variant.parse("eager-sparse-rowwise_adagrad"))
    loss = trainer.step(batch)                                 # batch: esmjax NumPy block

What is mirrored exactly (and checked by tests/test_torch_reference.py on copied weights):
  * one stacked table per embedding set, with esmjax's `FeatureLayout` offsets (field f owns rows
    offset_f : offset_f + vocab_f), initialised N(0, embedding.init_std²);
  * single-valued (and bucketised dense) fields: one `F.embedding` over the stacked table;
    multi-valued fields: one `F.embedding_bag(mode='sum', per_sample_weights=...)` over all bags of
    the batch (a `mean` field's weights are divided by their sum, clamped at 1e-6, as esmjax does);
  * dense fields as normalise + tanh embeddings tanh(x̂·u + b) per field (or bucketised ids);
  * towers hidden-…-1 with the configured activation, Flax's default init (LeCun truncated normal
    kernels, zero biases) so neither framework starts from a friendlier point;
  * the log-space losses of esmjax.models.losses (log σ, stable log1mexp, logaddexp), no clipping;
  * towers and dense-feature params trained with Adam (torch.optim.Adam, eps 1e-8 = optax's);
  * tables trained with the configured row-wise optimizer, or dense Adam:
      rowwise_adagrad  a custom optimizer (one accumulator per row, as torchrec/FBGEMM's
                       EXACT_ROWWISE_ADAGRAD; PyTorch has none built in) on the coalesced sparse
                       gradient, or on the dense one (zero rows stay put: the same steps);
      adagrad          torch.optim.Adagrad (element-wise; sparse or dense gradients: same steps);
      lazy_adam        torch.optim.SparseAdam (moments of touched rows only). PyTorch folds the bias
                       corrections into the step size, so its eps acts as eps/√(1−β2ᵗ) in esmjax's
                       terms (30× larger at step 1): the same optimizer, but rows with tiny early
                       gradients move less; the test compares them with eps = 1e-12;
      adam             torch.optim.Adam on dense gradients with lazy_adam's hyperparameters
                       (embedding.learning_rate, beta1, beta2, eps): what a PyTorch user writes
                       for a small table. Not an esmjax optimizer: its moments decay and move
                       every row each step, so it equals lazy_adam only where every row a step
                       skips was skipped by all the steps before (the test checks this and the
                       difference).
Variants (`Variant`): sparse or dense [V, D] table gradients (`nn.Embedding(sparse=...)`), eager or
`torch.compile`, f32 or bf16 autocast (suffix `-bf16`: `torch.autocast(device, torch.bfloat16)`
around the forward pass, the one line a PyTorch user adds for mixed precision: the towers' matmuls
run in bf16 (oneDNN, AMX where the CPU has it), weights, tables and optimizer state stay f32, and
the logits are cast to f32 before the log-space loss). With sparse gradients compile takes the
dense part (pooling, towers, loss) and the lookups stay eager (inductor does not produce sparse
gradients); with dense gradients it takes the whole forward pass and loss, lookups included.

Only the entire-space models (esmm, esmm_ns, esm2) are mirrored; the baselines are not needed for
the comparison. Torch is an optional dependency (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from typing import Any

import common
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from esmjax.core import state as state_lib

SUPPORTED_MODELS = ("esmm", "esmm_ns", "esm2")
TABLE_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "lazy_adam", "adam")
_ACTIVATIONS = {
  "relu": nn.ReLU,
  "gelu": lambda: nn.GELU(approximate="tanh"),
  "tanh": nn.Tanh,
  "sigmoid": nn.Sigmoid,
  "swish": nn.SiLU,
  "leaky_relu": lambda: nn.LeakyReLU(0.01),
}
_LN2 = 0.6931471805599453
_TRUNC_STD = 0.87962566103423978  # std of a unit normal truncated to [-2, 2] (Flax's correction)


# ---------------------------------------------------------------------------------------------
# Variants and losses.


@dataclasses.dataclass(frozen=True)
class Variant:
  """How the PyTorch side is run: table optimizer, sparse or dense gradients, eager or compiled."""

  table_optimizer: str = "rowwise_adagrad"  # rowwise_adagrad | adagrad | lazy_adam | adam
  sparse: bool = True  # nn.Embedding(sparse=True): gradients of touched rows only
  compile: bool = False  # torch.compile: pooling + towers + loss; with dense gradients lookups too
  bf16: bool = False  # torch.autocast(bfloat16) around the forward pass; loss in f32

  def __post_init__(self):
    if self.table_optimizer not in TABLE_OPTIMIZERS:
      raise ValueError(
        f"variant table_optimizer={self.table_optimizer!r}; allowed: {list(TABLE_OPTIMIZERS)}"
      )
    if self.table_optimizer == "lazy_adam" and not self.sparse:
      raise ValueError(
        "variant lazy_adam needs sparse gradients (torch.optim.SparseAdam); dense Adam "
        "is the variant '*-dense-adam' (it decays untouched rows)"
      )
    if self.table_optimizer == "adam" and self.sparse:
      raise ValueError(
        "variant adam needs dense gradients (torch.optim.Adam); with sparse ones "
        "use '*-sparse-lazy_adam' (torch.optim.SparseAdam)"
      )

  @property
  def config_optimizer(self) -> str:
    """The esmjax embedding.optimizer whose hyperparameters this variant takes (adam: lazy
    Adam's)."""
    return "lazy_adam" if self.table_optimizer == "adam" else self.table_optimizer

  @property
  def name(self) -> str:
    mode = "compile" if self.compile else "eager"
    grads = "sparse" if self.sparse else "dense"
    return f"{mode}-{grads}-{self.table_optimizer}" + ("-bf16" if self.bf16 else "")

  @classmethod
  def parse(cls, name: str) -> Variant:
    """'eager-sparse-rowwise_adagrad', 'compile-dense-adam-bf16', ... (see `name`)."""
    bf16 = name.endswith("-bf16")
    parts = name.removesuffix("-bf16").split("-", 2)
    if (
      len(parts) != 3 or parts[0] not in ("eager", "compile") or parts[1] not in ("sparse", "dense")
    ):
      raise ValueError(
        f"torch variant {name!r}: expected '{{eager|compile}}-{{sparse|dense}}-"
        f"{{{'|'.join(TABLE_OPTIMIZERS)}}}[-bf16]'"
      )
    return cls(parts[2], sparse=parts[1] == "sparse", compile=parts[0] == "compile", bf16=bf16)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
  """log(1 − eˣ) for x ≤ 0 (esmjax.models.losses.log1mexp, same branches and safe dummies)."""
  x = torch.clamp(x, max=0.0)
  near = x > -_LN2
  x_near = torch.where(near, x, torch.full_like(x, -1.0))
  x_far = torch.where(near, torch.full_like(x, -1.0), x)
  return torch.where(near, torch.log(-torch.expm1(x_near)), torch.log1p(-torch.exp(x_far)))


def bce_from_logp(y, logp):
  return torch.mean(-(y * logp + (1.0 - y) * log1mexp(logp)))


def bce_from_logits(y, a):
  return torch.mean(F.softplus(a) - y * a)


def log_probs(name: str, z: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
  """{log_pctr, log_pcvr, log_pctcvr[, log_pctavr]} from tower logits (the models' `log_probs`)."""
  log_sigmoid = F.logsigmoid
  if name == "esm2":
    l1, l2 = log_sigmoid(z["ctr"]), log_sigmoid(z["daction"])
    log_pcvr = torch.logaddexp(
      l2 + log_sigmoid(z["buy_d"]), log_sigmoid(-z["daction"]) + log_sigmoid(z["buy_o"])
    )
    return {
      "log_pctr": l1,
      "log_pcvr": log_pcvr,
      "log_pctcvr": l1 + log_pcvr,
      "log_pctavr": l1 + l2,
    }
  l1, l3 = log_sigmoid(z["ctr"]), log_sigmoid(z["cvr"])
  return {"log_pctr": l1, "log_pcvr": l3, "log_pctcvr": l1 + l3}


def loss_fn(name: str, loss_weights, z, labels: dict[str, torch.Tensor]):
  """(total, {per-task}) exactly as the `loss` of esmjax.models.esmm / esmm_ns / esm2."""
  lp = log_probs(name, z)
  click, buy = labels["click"], labels["buy"]
  ctr = bce_from_logits(click, z["ctr"])
  ctcvr = bce_from_logp(click * buy, lp["log_pctcvr"])
  if name == "esm2":
    w1, w2, w3 = loss_weights
    ctavr = bce_from_logp(click * labels["daction"], lp["log_pctavr"])
    return w1 * ctr + w2 * ctavr + w3 * ctcvr, {"ctr": ctr, "ctavr": ctavr, "ctcvr": ctcvr}
  return ctr + ctcvr, {"ctr": ctr, "ctcvr": ctcvr}


# ---------------------------------------------------------------------------------------------
# The model.


def _lecun_linear(fan_in: int, fan_out: int) -> nn.Linear:
  lin = nn.Linear(fan_in, fan_out)
  std = math.sqrt(1.0 / fan_in) / _TRUNC_STD
  nn.init.trunc_normal_(lin.weight, std=std, a=-2 * std, b=2 * std)
  nn.init.zeros_(lin.bias)
  return lin


class TorchMultiTask(nn.Module):
  """Stacked tables + per-set field inputs + one MLP tower per head; `forward` returns logits."""

  def __init__(self, config, schema, *, sparse: bool = True):
    super().__init__()
    name, m = config.model.name, config.model
    if name not in SUPPORTED_MODELS:
      raise ValueError(
        f"model.name={name!r} has no PyTorch reference; allowed: {list(SUPPORTED_MODELS)}"
      )
    c = state_lib.build(config, schema)  # esmjax's table layout and label columns
    lay = c.layout
    self.name, self.loss_weights, self.sparse = name, tuple(m.loss_weights), sparse
    self.dim = int(m.embed_dim)
    self.num_sparse = len(schema.sparse)
    self.dense_mode = m.dense_mode
    self.towers = common.model_towers(name)
    self.sets = tuple(dict.fromkeys(s for _, s in self.towers))
    self.label_columns = dict(c.label_columns)
    self.tables = nn.ModuleDict()
    for s in self.sets:
      emb = nn.Embedding(lay.padded_rows, self.dim, sparse=sparse)
      nn.init.normal_(emb.weight, 0.0, config.embedding.init_std)
      self.tables[s] = emb
    # Single-valued columns: sparse fields, then bucketised dense fields (esmjax's gids order).
    self.register_buffer(
      "sv_offsets",
      torch.tensor(lay.sparse_offsets + lay.dense_offsets, dtype=torch.int64),
      persistent=False,
    )
    self.num_bucket = len(lay.dense_boundaries)
    for i, b in enumerate(lay.dense_boundaries):
      self.register_buffer(f"bounds_{i}", torch.tensor(b, dtype=torch.float32), persistent=False)
    self.mv_lens = tuple(lay.mv_lens)
    self.mv_mean = tuple(f.pooling == "mean" for f in schema.multi)
    self.register_buffer(
      "mv_col_offsets",
      torch.tensor(np.repeat(np.asarray(lay.mv_offsets, np.int64), lay.mv_lens), dtype=torch.int64),
      persistent=False,
    )
    starts = np.cumsum([0, *lay.mv_lens])[:-1]
    self.register_buffer("mv_bag_starts", torch.tensor(starts, dtype=torch.int64), persistent=False)
    n_dense = len(schema.dense) if self.dense_mode != "none" else 0
    self.tanh_dense = self.dense_mode == "tanh" and n_dense > 0
    if self.tanh_dense:  # esmjax's normalisation: the schema's mean and std (a zero std as 1)
      mean = [float(f.mean) for f in schema.dense]
      std = [float(f.std) or 1.0 for f in schema.dense]
      self.register_buffer("dense_mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
      self.register_buffer("dense_std", torch.tensor(std, dtype=torch.float32), persistent=False)
      self.dense_u = nn.ParameterDict(
        {s: nn.Parameter(torch.randn(n_dense, self.dim)) for s in self.sets}
      )
      self.dense_b = nn.ParameterDict(
        {s: nn.Parameter(torch.zeros(n_dense, self.dim)) for s in self.sets}
      )
    n_fields = (
      self.num_sparse + len(self.mv_lens) + n_dense * (self.dense_mode in ("tanh", "bucket"))
    )
    act = _ACTIVATIONS[m.activation]
    self.tower = nn.ModuleDict()
    for t, _ in self.towers:
      layers, fan_in = [], n_fields * self.dim
      for h in m.hidden:
        layers += [_lecun_linear(fan_in, h), act()]
        if m.dropout:
          layers.append(nn.Dropout(m.dropout))
        fan_in = h
      layers.append(_lecun_linear(fan_in, 1))
      self.tower[t] = nn.Sequential(*layers)

  @classmethod
  def from_config(cls, config, schema, *, sparse: bool = True) -> TorchMultiTask:
    return cls(config, schema, sparse=sparse)

  def dense_parameters(self) -> list[nn.Parameter]:
    """Everything but the tables: what Adam trains."""
    return [p for n, p in self.named_parameters() if not n.startswith("tables.")]

  # Lookups (eager: they make the sparse gradients).

  def _bag_offsets(self, b: int, device) -> torch.Tensor:
    """Start of every bag in the flattened [B·L] ids: torch ops only, so torch.compile traces it."""
    total = sum(self.mv_lens)
    rows = torch.arange(b, device=device)[:, None] * total
    return (rows + self.mv_bag_starts[None, :]).reshape(-1)

  def _bag_weights(self, mv_w: torch.Tensor) -> torch.Tensor:
    if not any(self.mv_mean):
      return mv_w
    parts, off = [], 0
    for length, mean in zip(self.mv_lens, self.mv_mean, strict=True):
      w = mv_w[:, off : off + length]
      parts.append(w / torch.clamp(w.sum(1, keepdim=True), min=1e-6) if mean else w)
      off += length
    return torch.cat(parts, 1)

  def lookup(
    self, batch: dict[str, torch.Tensor]
  ) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """{set: (single-valued rows [B, Cs, D], pooled multi-valued rows [B, M, D] or None)}."""
    cols = [batch["sparse"].long()]
    for i in range(self.num_bucket):
      cols.append(
        torch.bucketize(
          batch["dense"][:, i].contiguous(), getattr(self, f"bounds_{i}"), right=True
        )[:, None]
      )
    sv_ids = (torch.cat(cols, 1) if len(cols) > 1 else cols[0]) + self.sv_offsets
    out = {}
    b = sv_ids.shape[0]
    if self.mv_lens:
      mv_ids = (batch["mv_ids"].long() + self.mv_col_offsets).reshape(-1)
      mv_w = self._bag_weights(batch["mv_w"]).reshape(-1)
      offsets = self._bag_offsets(b, mv_ids.device)
    for s, emb in self.tables.items():
      sv = F.embedding(sv_ids, emb.weight, sparse=self.sparse)
      pooled = None
      if self.mv_lens:
        pooled = F.embedding_bag(
          mv_ids, emb.weight, offsets, mode="sum", per_sample_weights=mv_w, sparse=self.sparse
        ).view(b, len(self.mv_lens), self.dim)
      out[s] = (sv, pooled)
    return out

  # The dense part (pooling done; what torch.compile may take).

  def head(
    self, rows: dict[str, tuple[torch.Tensor, torch.Tensor | None]], dense: torch.Tensor
  ) -> dict[str, torch.Tensor]:
    feats = {}
    for s in self.sets:
      sv, pooled = rows[s]
      parts = [sv[:, : self.num_sparse]]
      if pooled is not None:
        parts.append(pooled)
      if self.dense_mode == "bucket":
        parts.append(sv[:, self.num_sparse :])
      elif self.tanh_dense:
        x = (dense - self.dense_mean) / self.dense_std
        parts.append(torch.tanh(x[:, :, None] * self.dense_u[s] + self.dense_b[s]))
      feats[s] = torch.cat(parts, 1).flatten(1)
    # .float(): under bf16 autocast the towers return bf16 logits; the loss is computed in f32.
    return {t: self.tower[t](feats[s])[:, 0].float() for t, s in self.towers}

  def head_loss(self, rows, dense, labels: torch.Tensor):
    z = self.head(rows, dense)
    lab = labels.float()
    labels = {k: lab[:, list(cols)].amax(1) for k, cols in self.label_columns.items()}  # OR
    return loss_fn(self.name, self.loss_weights, z, labels)

  def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return self.head(self.lookup(batch), batch["dense"])

  def loss(self, batch: dict[str, torch.Tensor]):
    """(total, {per-task}) of a batch, lookups included (compiled whole with dense gradients)."""
    return self.head_loss(self.lookup(batch), batch["dense"], batch["labels"])

  @torch.no_grad()
  def probabilities(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{pctr, pcvr, pctcvr[, pctavr]} (esmjax.core.steps.predict_step's keys)."""
    return {k[4:]: torch.exp(v) for k, v in log_probs(self.name, self.forward(batch)).items()}

  @torch.no_grad()
  def load_esmjax(self, state) -> None:
    """Copies an esmjax TrainState's tables and tower params into this model (tests, parity)."""
    for s in self.sets:
      self.tables[s].weight.copy_(torch.from_numpy(np.array(state.tables[s], np.float32)))
      if self.tanh_dense:
        p = state.params[f"inputs_{s}"]
        self.dense_u[s].copy_(torch.from_numpy(np.array(p["dense_u"])))
        self.dense_b[s].copy_(torch.from_numpy(np.array(p["dense_b"])))
    for t, _ in self.towers:
      p = state.params[f"tower_{t}"]
      linears = [l for l in self.tower[t] if isinstance(l, nn.Linear)]
      for i, lin in enumerate(linears):
        lin.weight.copy_(torch.from_numpy(np.asarray(p[f"Dense_{i}"]["kernel"]).T.copy()))
        lin.bias.copy_(torch.from_numpy(np.array(p[f"Dense_{i}"]["bias"])))


# ---------------------------------------------------------------------------------------------
# Optimizers and the train step.


class RowwiseAdagrad(torch.optim.Optimizer):
  """a += mean(g²) per row; w -= lr·g/(√a + eps): esmjax's rowwise_adagrad (torchrec's
  EXACT_ROWWISE_ADAGRAD). Sparse gradients are coalesced first (duplicate ids summed), so only
  touched rows are read and written; a dense gradient updates every row (zero rows stay put)."""

  def __init__(self, params, lr: float, eps: float = 1e-8, initial_accumulator: float = 0.0):
    super().__init__(params, dict(lr=lr, eps=eps, initial_accumulator=initial_accumulator))

  @torch.no_grad()
  def step(self, closure=None):
    for group in self.param_groups:
      lr, eps = group["lr"], group["eps"]
      for p in group["params"]:
        if p.grad is None:
          continue
        st = self.state[p]
        if "acc" not in st:
          st["acc"] = torch.full(
            (p.shape[0],), group["initial_accumulator"], dtype=torch.float32, device=p.device
          )
        acc, g = st["acc"], p.grad
        if g.is_sparse:
          g = g.coalesce()
          idx, v = g.indices()[0], g.values()
          acc.index_add_(0, idx, v.pow(2).mean(1))
          p.index_add_(0, idx, v * (-lr / (acc.index_select(0, idx).sqrt() + eps))[:, None])
        else:
          acc.add_(g.pow(2).mean(1))
          p.addcdiv_(g, (acc.sqrt() + eps)[:, None], value=-lr)


def table_optimizer(params, variant: Variant, emb_cfg) -> torch.optim.Optimizer:
  if variant.table_optimizer == "rowwise_adagrad":
    return RowwiseAdagrad(params, emb_cfg.learning_rate, emb_cfg.eps, emb_cfg.initial_accumulator)
  if variant.table_optimizer == "adagrad":
    return torch.optim.Adagrad(
      params,
      lr=emb_cfg.learning_rate,
      eps=emb_cfg.eps,
      initial_accumulator_value=emb_cfg.initial_accumulator,
    )
  betas = (emb_cfg.beta1, emb_cfg.beta2)
  if variant.table_optimizer == "adam":
    return torch.optim.Adam(params, lr=emb_cfg.learning_rate, betas=betas, eps=emb_cfg.eps)
  return torch.optim.SparseAdam(params, lr=emb_cfg.learning_rate, betas=betas, eps=emb_cfg.eps)


def tower_optimizer(params, opt_cfg) -> torch.optim.Optimizer:
  name, lr = opt_cfg.name, opt_cfg.learning_rate
  if name == "adam":
    return torch.optim.Adam(params, lr=lr, eps=1e-8)
  if name == "adamw":
    return torch.optim.AdamW(params, lr=lr, eps=1e-8, weight_decay=opt_cfg.weight_decay)
  if name == "sgd":
    return torch.optim.SGD(params, lr=lr)
  raise ValueError(
    f"optimizer.name={name!r} has no PyTorch mirror here; allowed: ['adam', 'adamw', 'sgd']"
  )


def to_torch(
  batch: dict[str, np.ndarray], device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
  """An esmjax NumPy batch -> tensors (zero-copy on CPU)."""
  keys = ("sparse", "mv_ids", "mv_w", "dense", "labels")
  return {
    k: torch.from_numpy(np.ascontiguousarray(batch[k])).to(device) for k in keys if k in batch
  }


class Trainer:
  """One train step: lookup → head + loss → backward → two optimizers. Compiled variants compile
  head + loss (sparse gradients) or lookup + head + loss (dense gradients)."""

  def __init__(self, model: TorchMultiTask, config, variant: Variant):
    if model.sparse != variant.sparse:
      raise ValueError(f"model built with sparse={model.sparse} but variant {variant.name!r}")
    self.model, self.variant = model, variant
    self.tower_opt = tower_optimizer(model.dense_parameters(), config.optimizer)
    self.table_opt = table_optimizer(list(model.tables.parameters()), variant, config.embedding)
    self.grad_clip = float(config.optimizer.get("grad_clip", 0.0))
    self.whole = variant.compile and not variant.sparse  # inductor traces dense lookups too
    if self.whole:
      self.loss = torch.compile(model.loss)
    else:
      self.head_loss = torch.compile(model.head_loss) if variant.compile else model.head_loss

  def step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    self.model.train()
    self.tower_opt.zero_grad(set_to_none=True)
    self.table_opt.zero_grad(set_to_none=True)
    device = batch["labels"].device.type
    with torch.autocast(device, dtype=torch.bfloat16, enabled=self.variant.bf16):
      if self.whole:
        loss, _ = self.loss(batch)
      else:
        loss, _ = self.head_loss(self.model.lookup(batch), batch["dense"], batch["labels"])
    loss.backward()
    if self.grad_clip:
      nn.utils.clip_grad_norm_(self.model.dense_parameters(), self.grad_clip)
    self.tower_opt.step()
    self.table_opt.step()
    return loss.detach()


def train_loop(
  trainer: Trainer,
  batches: Iterator[dict[str, np.ndarray]],
  total_steps: int,
  batch_size: int,
  log_every: int,
  device: str | torch.device = "cpu",
  writer=None,
) -> dict[str, Any]:
  """esmjax's training loop in PyTorch: next batch → step; at every `log_every`-th step and the last
  the loss is read (a device sync) and written by `writer` (an
  esmjax.evaluation.metrics_io.MetricWriter:
  metrics.jsonl + TensorBoard, as esmjax logs). The first step (compilation) is timed apart, as
  esmjax's trainer keeps it out of its rate.

  Returns {steps, first_step_s, train_s (steps 2…N), ex_per_s ((N−1)·B / train_s), windows
  (examples/s between log steps), losses [(step, loss)]}.
  """
  sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
  losses, windows = [], []
  t_start = time.perf_counter()
  loss = trainer.step(to_torch(next(batches), device))
  float(loss)
  sync()
  t_first = t_log = time.perf_counter()
  since_log = 0
  for step in range(2, total_steps + 1):
    loss = trainer.step(to_torch(next(batches), device))
    since_log += 1
    if step % log_every == 0 or step == total_steps:
      value = float(loss)  # waits for the step, as esmjax's device_get of the logged loss does
      now = time.perf_counter()
      windows.append(since_log * batch_size / max(now - t_log, 1e-9))
      losses.append((step, value))
      if writer is not None:
        writer.write(step, "train", {"loss": value, "examples_per_sec": windows[-1]})
      t_log, since_log = now, 0
  train_s = time.perf_counter() - t_first
  return {
    "steps": total_steps,
    "first_step_s": t_first - t_start,
    "train_s": train_s,
    "ex_per_s": (total_steps - 1) * batch_size / train_s if total_steps > 1 else float("nan"),
    "windows": windows,
    "losses": losses,
  }


def predict_fn(model: TorchMultiTask, device: str | torch.device = "cpu"):
  """`predict_fn(state, batch)` for esmjax.evaluation.scoring.predict_dataset (`state` unused): the
  model's probabilities as NumPy, so PyTorch is scored by esmjax's own evaluation code."""
  keys = ("sparse", "mv_ids", "mv_w", "dense", "labels")

  def predict(state, batch):
    del state
    model.eval()
    return {
      k: v.cpu().numpy()
      for k, v in model.probabilities(
        to_torch({k: np.asarray(batch[k]) for k in keys if k in batch}, device)
      ).items()
    }

  return predict


def state_bytes(trainer: Trainer) -> int:
  """Bytes of parameters and optimizer state (what the model itself holds)."""
  n = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
  for opt in (trainer.tower_opt, trainer.table_opt):
    for st in opt.state.values():
      n += sum(v.numel() * v.element_size() for v in st.values() if isinstance(v, torch.Tensor))
  return n


def describe(model: TorchMultiTask) -> dict[str, Any]:
  return {
    "sets": list(model.sets),
    "towers": [t for t, _ in model.towers],
    "table_rows": int(model.tables[model.sets[0]].num_embeddings),
    "dim": model.dim,
  }
