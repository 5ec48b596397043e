"""Fused towers (one matmul over the side-by-side first-layer kernels of the towers on one input)
are the same model as separate towers: same params and initialisation, same dropout masks, and the
same outputs, gradients and train steps up to float32 roundoff.

Why roundoff and not bits: the first layer of T towers is one [B, in] × [in, T·h] matmul, which
the CPU library blocks differently from T [B, in] × [in, h] matmuls, so each dot product sums its
`in` terms in another order; the input gradient likewise sums over T·h columns at once instead of
tower by tower. Everything else is bit for bit: with `fuse_towers=False`, and for sets that feed a
single tower (ESMM-NS, the baselines), the network equals the `layers.Tower` reference exactly.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny

from esmjax.core import state as state_lib
from esmjax.core import steps
from esmjax.models import layers


class SeparateTowers(nn.Module):
  """The reference: FieldInputs per set, then one `layers.Tower` (nn.Dense layers) per tower."""

  towers: tuple
  spec: layers.InputSpec
  hidden: tuple
  dropout: float = 0.0

  @nn.compact
  def __call__(self, emb, mv_w, dense, train=False):
    feats = {
      s: layers.FieldInputs(self.spec, name=f"inputs_{s}")(emb[s], mv_w, dense)
      for s in dict.fromkeys(s for _, s in self.towers)
    }
    return {
      t: layers.Tower(self.hidden, dropout=self.dropout, name=f"tower_{t}")(feats[s], train)
      for t, s in self.towers
    }


def _setup(model, fuse, dropout=0.0):
  cfg = tiny.tiny_config(model)
  cfg.model.fuse_towers = fuse
  cfg.model.dropout = dropout
  cfg.embedding.init_std = 0.5
  c = state_lib.build(cfg, tiny.tiny_schema())
  return c, state_lib.init_state(c, 0)


def _batch(seed=0):
  b = tiny.random_block(tiny.tiny_schema(), 64, seed)
  return {k: jnp.asarray(b[k]) for k in steps.BATCH_KEYS}


def _grads(c, state, batch, train):
  gids = c.layout.global_ids(batch["sparse"], batch["mv_ids"], batch["dense"])
  emb = c.engine.lookup(state.tables, gids)
  f = lambda p, e: steps._loss_fn(c, p, e, batch, state.rng, train)
  (loss, _), grads = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(state.params, emb)
  z = c.model.apply(
    {"params": state.params},
    emb,
    batch["mv_w"],
    batch["dense"],
    train=train,
    rngs={"dropout": jax.random.fold_in(state.rng, 1)} if train else None,
  )
  return z, loss, grads


def _assert_trees(a, b, exact):
  check = (
    np.testing.assert_array_equal
    if exact
    else functools.partial(np.testing.assert_allclose, rtol=2e-5, atol=1e-7)
  )
  jax.tree_util.tree_map(lambda x, y: check(np.asarray(x), np.asarray(y)), a, b)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_unfused_network_is_the_tower_reference_bit_for_bit(dropout):
  c, state = _setup("esm2", fuse=False, dropout=dropout)
  ref = SeparateTowers(c.model.towers, c.model.net.spec, c.model.net.hidden, dropout)
  b = _batch()
  gids = c.layout.global_ids(b["sparse"], b["mv_ids"], b["dense"])
  emb = c.engine.lookup(state.tables, gids)
  key = jax.random.split(jax.random.PRNGKey(0), 3)[0]  # init_state's params key for seed 0
  params = ref.init(key, emb, b["mv_w"], b["dense"])["params"]
  _assert_trees(params, state.params, exact=True)  # same tree, same initialisation
  rngs = {"dropout": jax.random.PRNGKey(7)}
  want = jax.jit(lambda p, e: ref.apply({"params": p}, e, b["mv_w"], b["dense"], True, rngs=rngs))
  got = jax.jit(
    lambda p, e: c.model.apply({"params": p}, e, b["mv_w"], b["dense"], True, rngs=rngs)
  )
  _assert_trees(got(state.params, emb), want(state.params, emb), exact=True)


@pytest.mark.parametrize("model", ["esmm", "esm2", "escm2_dr"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_fused_towers_equal_separate_towers(model, dropout):
  (cf, sf), (cs, ss) = _setup(model, True, dropout), _setup(model, False, dropout)
  _assert_trees(sf.params, ss.params, exact=True)  # fusion does not change the params
  b = _batch(1)
  for train in (False, True):
    zf, lf, gf = jax.jit(functools.partial(_grads, cf, train=train))(sf, b)
    zs, ls, gs = jax.jit(functools.partial(_grads, cs, train=train))(ss, b)
    _assert_trees(zf, zs, exact=False)
    np.testing.assert_allclose(lf, ls, rtol=1e-6)
    _assert_trees(gf, gs, exact=False)
  a, b_ = sf, ss
  for i in range(3):
    a, ma = jax.jit(functools.partial(steps.train_step, cf))(a, _batch(i))
    b_, mb = jax.jit(functools.partial(steps.train_step, cs))(b_, _batch(i))
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-5)
  _assert_trees(a.params, b_.params, exact=False)
  _assert_trees(a.tables, b_.tables, exact=False)


def test_single_tower_sets_are_not_fused_and_stay_bit_identical():
  (cf, sf), (cs, ss) = _setup("esmm_ns", True), _setup("esmm_ns", False)
  a, b = sf, ss
  for i in range(2):
    a, _ = jax.jit(functools.partial(steps.train_step, cf))(a, _batch(i))
    b, _ = jax.jit(functools.partial(steps.train_step, cs))(b, _batch(i))
  assert state_lib.state_fingerprint(a) == state_lib.state_fingerprint(b)


def test_tower_flops_count_the_model_towers():
  c, _ = _setup("esm2", True)
  in_dim = c.model.net.in_dim  # (3 sparse + 2 pooled + 2 dense fields) × 4
  assert in_dim == 7 * 4
  per_tower = 6.0 * (in_dim * 8 + 8 * 4 + 4 * 1)
  assert c.model.tower_flops() == {t: per_tower for t, _ in c.model.towers}
  assert c.model.flops_per_example() == 4 * per_tower
