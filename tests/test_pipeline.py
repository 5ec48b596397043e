"""The training input pipeline against a plain reference: the same batches, in the same order.

The reference is the pipeline as first written: grain's block order over a block source, each
window's blocks concatenated and permuted by `default_rng([seed, window])`, the permuted rows cut
into batches. The fast pipeline (reused buffers, gathers straight into the batch, threads) must
give exactly those batches, resume from any state, and never overwrite a batch still held.
"""

import grain
import numpy as np
import pytest
import tiny

from esmjax.data.format import dataset as D
from esmjax.data.pipeline import batches as pipeline
from esmjax.data.pipeline import order as block_order


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
  # 2000 rows in blocks of 256 (the last has 208) over 3 shards: windows of unequal rows.
  return tiny.tiny_dataset(str(tmp_path_factory.mktemp("pipe") / "d"), n=2000, block_rows=256)


def reference_batches(
  d,
  *,
  batch_size,
  window_blocks,
  seed,
  shuffle,
  fraction=1.0,
  process_index=0,
  process_count=1,
  num_epochs=1,
  drop_remainder=True,
):
  mds = grain.MapDataset.source(D.BlockSource(d))
  if fraction < 1.0:
    mds = mds[: max(1, int(round(len(mds) * fraction)))]
  if shuffle:
    mds = mds.shuffle(seed=seed)
  mds = mds[process_index::process_count].repeat(num_epochs)
  windows = []
  for w in range(-(-len(mds) // window_blocks)):
    data = D.concat_blocks(
      [mds[i] for i in range(w * window_blocks, min((w + 1) * window_blocks, len(mds)))]
    )
    n = len(data["user"])
    perm = np.random.default_rng([seed, w]).permutation(n) if shuffle else np.arange(n)
    windows.append(D.slice_block(data, perm))
  rows = D.concat_blocks(windows)
  n = len(rows["user"])
  stop = n - n % batch_size if drop_remainder else n
  return [
    D.slice_block(rows, slice(i, min(i + batch_size, stop))) for i in range(0, stop, batch_size)
  ]


def assert_same(got, want):
  assert len(got) == len(want)
  for i, (a, b) in enumerate(zip(got, want, strict=True)):
    assert list(a) == list(b)
    for k in b:
      assert a[k].dtype == b[k].dtype, (i, k)
      np.testing.assert_array_equal(a[k], b[k], err_msg=f"batch {i} column {k}")


CASES = [
  dict(batch_size=100, window_blocks=2, seed=3, shuffle=True),
  dict(
    batch_size=700, window_blocks=3, seed=1, shuffle=True, num_epochs=2
  ),  # batches span windows and epochs
  dict(
    batch_size=256, window_blocks=1, seed=0, shuffle=True
  ),  # one block per window: no concatenation
  dict(batch_size=300, window_blocks=4, seed=5, shuffle=False, drop_remainder=False),
  dict(batch_size=64, window_blocks=2, seed=7, shuffle=True, fraction=0.6),
  dict(
    batch_size=128,
    window_blocks=2,
    seed=2,
    shuffle=True,
    process_index=1,
    process_count=2,
    num_epochs=3,
  ),
]


@pytest.mark.parametrize("threads,prefetch", [(1, 0), (3, 2)])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_batches_equal_the_reference(ds, case, threads, prefetch):
  c = dict(CASES[case])
  want = reference_batches(ds, **c)
  pi, pc = c.pop("process_index", 0), c.pop("process_count", 1)
  c.setdefault("num_epochs", 1)
  cfg = pipeline.PipelineConfig(**c, prefetch=prefetch, threads=threads)
  it = iter(pipeline.train_iter_dataset(ds, cfg, process_index=pi, process_count=pc))
  got = list(it)  # holding every batch: none may be overwritten by a later one
  assert_same(got, want)
  it.close()


@pytest.mark.parametrize("threads", [1, 2])
def test_restored_state_replays_the_same_batches(ds, threads):
  cfg = pipeline.PipelineConfig(
    batch_size=300, seed=4, window_blocks=3, prefetch=2, threads=threads
  )
  it = iter(pipeline.train_iter_dataset(ds, cfg))
  states, batches = [], []
  for _ in range(20):  # through two epochs
    states.append(it.get_state())
    batches.append({k: v.copy() for k, v in next(it).items()})
  for i in (0, 3, 7, 13):
    again = iter(pipeline.train_iter_dataset(ds, cfg))
    again.set_state(states[i])
    assert_same([next(again) for _ in range(len(batches) - i)], batches[i:])
    again.close()
  it.close()


def test_threaded_gather_equals_serial_gather(ds):
  # Batches big enough that each thread copies a share of every window and batch.
  out = []
  for threads in (1, 2, 4):
    cfg = pipeline.PipelineConfig(
      batch_size=1024, seed=9, window_blocks=4, prefetch=0, threads=threads, num_epochs=3
    )
    out.append([{k: v.copy() for k, v in b.items()} for b in pipeline.train_iter_dataset(ds, cfg)])
  assert_same(out[1], out[0])
  assert_same(out[2], out[0])


def test_batch_memory_is_reused_only_after_release(ds):
  cfg = pipeline.PipelineConfig(batch_size=100, seed=1, window_blocks=2, prefetch=0)
  it = iter(pipeline.train_iter_dataset(ds, cfg))
  held = [next(it) for _ in range(5)]
  copies = [{k: v.copy() for k, v in b.items()} for b in held]
  for _ in range(30):  # dropped at once: one buffer serves them all
    next(it)
  assert_same(held, copies)  # the held batches were not written over
  for i, a in enumerate(held):
    for b in held[i + 1 :]:
      assert not np.shares_memory(a["mv_ids"], b["mv_ids"])
  view = held[0]["dense"][3:5]  # a view alone keeps its batch's memory
  del held, copies
  kept = view.copy()
  for _ in range(30):
    next(it)
  np.testing.assert_array_equal(view, kept)
  assert len(it._batches._slots) <= 6  # the 5 held and one for the rest, not one per batch


def test_eval_batches_cover_every_row_once_in_file_order(ds):
  rows = ds.read_all()
  got = list(pipeline.eval_batches(ds, 300))
  assert [n for _, n in got] == [300] * 6 + [200]
  for k in rows:
    np.testing.assert_array_equal(np.concatenate([b[k][:n] for b, n in got]), rows[k], err_msg=k)
  assert not got[-1][0]["user"][200:].any()  # padding rows are PAD


@pytest.mark.parametrize("processes", [2, 3])
def test_eval_row_index_restores_file_order_across_processes(ds, processes):
  # Each process scores its own blocks; gathered process by process and sorted by the row index,
  # the rows are the file's, in its order (what predict's CSV promises).
  rows = ds.read_all()
  parts, index = [], []
  for p in range(processes):
    got = list(pipeline.eval_batches(ds, 128, process_index=p, process_count=processes))
    parts.append(np.concatenate([b["sample_id"][:n] for b, n in got]))
    index.append(pipeline.eval_row_index(ds, process_index=p, process_count=processes))
    assert len(index[-1]) == len(parts[-1])
  gathered, order = np.concatenate(parts), np.argsort(np.concatenate(index), kind="stable")
  assert not np.array_equal(gathered, rows["sample_id"])  # the gathered order is not the file's
  np.testing.assert_array_equal(gathered[order], rows["sample_id"])


@pytest.mark.parametrize(
  "length", [1, 2, 3, 17, 130, 263, 520, 4097, 16385, 20_000, 65536, 65537, 100_003]
)
def test_vectorised_block_shuffle_equals_grains(length):
  from grain._src.python.experimental.index_shuffle.python import (
    index_shuffle_module as grain_shuffle,
  )

  for seed in (0, 1, 12345, 2**32 - 1):
    got = block_order.grain_shuffle(length, seed)
    idx = range(length) if length <= 600 else np.random.default_rng(seed).integers(0, length, 200)
    want = [
      grain_shuffle.index_shuffle(int(i), max_index=max(length - 1, 0), seed=seed, rounds=4)
      for i in idx
    ]
    assert got[list(idx)].tolist() == want, (length, seed)


@pytest.mark.parametrize(
  "kw",
  [
    dict(seed=3, shuffle=True),
    dict(seed=0, shuffle=False),
    dict(seed=5, shuffle=True, fraction=0.6),
    dict(seed=2**32 - 2, shuffle=True, process_index=1, process_count=3),
  ],
)
def test_block_order_equals_grains_chain(ds, kw, monkeypatch):
  want = block_order.block_order(ds, num_epochs=4, **kw)
  got = block_order.BlockOrder(ds, num_epochs=4, **kw)
  assert len(got) == len(want)
  assert [got[j] for j in range(len(got))] == [int(want[j]) for j in range(len(want))]
  # A grain that shuffled differently: the check at each epoch falls back to grain's order.
  monkeypatch.setattr(block_order, "grain_shuffle", lambda n, seed: np.arange(n)[::-1].copy())
  other = block_order.BlockOrder(ds, num_epochs=4, **kw)
  assert [other[j] for j in range(len(other))] == [int(want[j]) for j in range(len(want))]


def test_device_arrays_survive_buffer_reuse(ds):
  # The trainer drops its numpy batch right after `device_put`, and the pipeline then reuses that
  # memory. JAX 0.10 on CPU copies at `device_put` (or holds the numpy batch until it has); a JAX
  # that aliased host memory without holding a reference would fail here.
  import jax

  cfg = pipeline.PipelineConfig(batch_size=100, seed=6, window_blocks=2, prefetch=0)
  it = iter(pipeline.train_iter_dataset(ds, cfg))
  on_device, copies = [], []
  for _ in range(4):
    b = next(it)
    copies.append({k: v.copy() for k, v in b.items()})
    on_device.append(jax.device_put({k: b[k] for k in ("sparse", "mv_ids", "mv_w", "labels")}))
    del b
  for _ in range(30):
    next(it)
  for dev, want in zip(on_device, copies, strict=True):
    for k, v in dev.items():
      np.testing.assert_array_equal(np.asarray(v), want[k], err_msg=k)
