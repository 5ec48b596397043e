"""Mixed precision (`model.dtype=bfloat16`): bf16 operands with f32 accumulation in every tower
matmul, forward and backward, f32 master weights; the `auto` choice from the CPU's flags.

Tolerances: bf16 keeps 8 bits of mantissa (relative rounding 2⁻⁹ ≈ 0.2 %), and each matmul input
is rounded once, so losses agree with f32 to 1 % and gradients to 10 % (relative L2 norm of each
leaf; the small CVR gradients of a 64-row batch are sums with much cancellation) on the same
batch; the custom backward pass equals autodiff of the same bf16 forward to the rounding of the
output gradient to bf16 (< 1 %).
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny

from esmjax.config import defaults as config_lib
from esmjax.core import state as state_lib
from esmjax.core import steps
from esmjax.models import mixed
from esmjax.models import model as model_lib


def _rel(a, b):
  return float(np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32))) / max(
    float(np.linalg.norm(np.asarray(b, np.float32))), 1e-12
  )


def _towers(seed=0, n_in=24, hidden=(32, 16), head=True, towers=2):
  ks = iter(jax.random.split(jax.random.PRNGKey(seed), 16))
  sizes = (n_in, *hidden) + ((1,) if head else ())
  return [
    [
      (jax.random.normal(next(ks), (a, b)) / np.sqrt(a), 0.1 * jax.random.normal(next(ks), (b,)))
      for a, b in zip(sizes[:-1], sizes[1:], strict=True)
    ]
    for _ in range(towers)
  ]


@pytest.mark.parametrize(
  "fused,head,act,dropout",
  [(True, True, nn.relu, 0.0), (False, False, nn.gelu, 0.3), (True, False, nn.gelu, 0.3)],
)
def test_custom_backward_equals_autodiff_of_the_same_forward(fused, head, act, dropout):
  params = _towers(head=head)
  x = jax.random.normal(jax.random.PRNGKey(9), (64, 24))
  n_layers = len(params[0])
  ks = iter(jax.random.split(jax.random.PRNGKey(3), 16))
  masks = [
    [
      jax.random.bernoulli(next(ks), 1 - dropout, (64, p[0].shape[1]))
      if dropout and (i < n_layers - 1 or not head)
      else None
      for i, p in enumerate(tp)
    ]
    for tp in params
  ]
  args = (act, 1.0 - dropout, fused, not head)

  def loss(fn):
    return lambda p, x: sum(jnp.sum(jnp.sin(o)) for o in fn(p, x))

  custom = loss(lambda p, x: mixed.mixed_towers(*args, x, p, masks))
  auto = loss(lambda p, x: mixed._forward(*args, x, p, masks)[0])
  np.testing.assert_allclose(custom(params, x), auto(params, x), rtol=1e-6)
  g1 = jax.grad(custom, argnums=(0, 1))(params, x)
  g2 = jax.grad(auto, argnums=(0, 1))(params, x)
  assert jax.tree_util.tree_structure(g1) == jax.tree_util.tree_structure(g2)
  for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2), strict=True):
    assert a.dtype == b.dtype == jnp.float32
    assert _rel(a, b) < 1e-2, _rel(a, b)


def _model_grads(dtype, model="esmm"):
  cfg = tiny.tiny_config(model, **{"model.dtype": dtype, "model.hidden": (32, 16)})
  cfg.model.embed_dim = 8
  cfg.embedding.init_std = 0.5
  c = state_lib.build(config_lib.validate(cfg), tiny.tiny_schema())
  state = state_lib.init_state(c, 0)
  b = tiny.random_block(tiny.tiny_schema(), 64, 1)
  batch = {k: jnp.asarray(b[k]) for k in steps.BATCH_KEYS}
  gids = c.layout.global_ids(batch["sparse"], batch["mv_ids"], batch["dense"])
  emb = c.engine.lookup(state.tables, gids)
  f = lambda p, e: steps._loss_fn(c, p, e, batch, state.rng, True)
  (loss, _), grads = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(state.params, emb)
  return state.params, loss, grads


@pytest.mark.parametrize("model", ["esmm", "esm2"])
def test_bf16_loss_and_gradients_match_f32_on_the_same_batch(model):
  p32, l32, (gp32, ge32) = _model_grads("float32", model)
  p16, l16, (gp16, ge16) = _model_grads("bfloat16", model)
  # Same init (f32 master weights whatever the dtype), f32 loss, f32 gradients.
  jax.tree_util.tree_map(np.testing.assert_array_equal, p32, p16)
  assert l16.dtype == jnp.float32 and abs(float(l16) - float(l32)) < 1e-2 * abs(float(l32))
  for s in ge32:
    assert ge16[s].dtype == jnp.float32 and _rel(ge16[s], ge32[s]) < 0.1, _rel(ge16[s], ge32[s])
  for path, a, b in zip(
    jax.tree_util.tree_leaves_with_path(gp32),
    jax.tree_util.tree_leaves(gp32),
    jax.tree_util.tree_leaves(gp16),
    strict=True,
  ):
    assert b.dtype == jnp.float32 and _rel(b, a) < 0.1, (path[0], _rel(b, a))


def test_every_tower_dot_of_the_bf16_step_takes_bf16_operands():
  """XLA:CPU widens a bf16 dot to f32 when its left operand does not contract its minor
  dimension (an in-graph transpose is folded into the dot): the custom backward pass avoids that,
  and the compiled towers (forward + backward) hold no dot with f32 operands of the towers' big
  shapes."""
  params = _towers(n_in=48, hidden=(32, 16))
  x = jnp.ones((64, 48))
  masks = [[None] * 3, [None] * 3]
  f = lambda p, x: sum(
    jnp.sum(o) for o in mixed.mixed_towers(nn.relu, 1.0, True, False, x, p, masks)
  )
  hlo = jax.jit(jax.grad(f, argnums=(0, 1))).lower(params, x).compile().as_text()
  types = dict(re.findall(r"%(\S+) = (\w+)\[", hlo))
  dots = re.findall(r"= f32\[([\d,]+)\]\S* dot\(%(\S+), %(\S+)\)", hlo)
  big = [(shape, types[a], types[b]) for shape, a, b in dots if "1" not in shape.split(",")]
  # fwd: x@W1 (fused), a1@W2 ×2; bwd: dW1ᵀ, dxᵀ, and per tower dW2ᵀ, da1ᵀ.
  assert len(big) == 9, big
  assert all(ta == tb == "bf16" for _, ta, tb in big), big


def test_auto_dtype_follows_the_backend_and_cpu_flags():
  assert model_lib.auto_dtype("gpu")[0] == "bfloat16"
  assert model_lib.auto_dtype("tpu")[0] == "bfloat16"
  assert model_lib.auto_dtype("cpu", frozenset({"avx2", "amx_bf16"}))[0] == "bfloat16"
  assert model_lib.auto_dtype("cpu", frozenset({"avx512f", "avx512_bf16"}))[0] == "bfloat16"
  name, why = model_lib.auto_dtype("cpu", frozenset({"avx2", "avx512f"}))
  assert name == "float32" and "avx512_bf16" in why


def test_model_dtype_is_validated_with_one_line():
  cfg = tiny.tiny_config("esmm", **{"model.dtype": "fp16"})
  with pytest.raises(config_lib.ConfigError, match=r"^model.dtype='fp16' is not allowed"):
    config_lib.validate(cfg)
  assert config_lib.validate(tiny.tiny_config("esmm", **{"model.dtype": "auto"}))
  with pytest.raises(ValueError, match="model.dtype='half'"):
    model_lib.resolve_dtype("half")
  expected = jnp.bfloat16 if model_lib.auto_dtype()[0] == "bfloat16" else jnp.float32
  assert model_lib.resolve_dtype("auto") == expected


@pytest.fixture
def cpu_probe(monkeypatch):
  """Sets what the CPU-flag probe reports; `auto` is decided again (and once) after each set."""

  def set_flags(flags):
    monkeypatch.setattr(model_lib, "cpu_flags", lambda: frozenset(flags))
    model_lib._auto_dtype_logged.cache_clear()

  yield set_flags
  model_lib._auto_dtype_logged.cache_clear()  # the next test decides from the real CPU again


@pytest.mark.parametrize(
  "flags,expected", [({"avx2", "amx_bf16"}, "bfloat16"), ({"avx2", "avx512f"}, "float32")]
)
def test_the_default_auto_follows_the_cpu_probe_logs_it_and_trains(
  cpu_probe, caplog, flags, expected
):
  """The shipped default is `auto`; on a CPU with bf16 units it trains the bf16 step (loss and
  gradients within bf16 rounding of f32), elsewhere exactly the f32 step; the choice is logged."""
  assert config_lib.default_config().model.dtype == "auto"
  cpu_probe(flags)
  # The absl logger's own level: a run earlier in this process may have set absl's verbosity.
  with caplog.at_level("INFO", logger="absl"):
    _, l_auto, (gp_auto, _) = _model_grads("auto")
  assert f"model.dtype=auto -> {expected}" in caplog.text
  assert "override with --config.model.dtype" in caplog.text
  _, l_ref, (gp_ref, _) = _model_grads(expected)
  np.testing.assert_array_equal(l_auto, l_ref)  # auto is exactly the dtype it resolved to
  jax.tree_util.tree_map(np.testing.assert_array_equal, gp_auto, gp_ref)
  _, l32, _ = _model_grads("float32")
  if expected == "float32":
    np.testing.assert_array_equal(l_auto, l32)
  else:
    assert l_auto != l32 and abs(float(l_auto) - float(l32)) < 1e-2 * abs(float(l32))
