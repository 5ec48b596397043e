r"""Roofline: the machine's measured matmul FLOP/s, and the fraction of it an esmjax step achieves.

    python benchmarks/roofline.py [--quick] [--out_dir=benchmarks/results]

The towers are the only FLOPs of the model (lookups and row updates move bytes, not FLOPs): ESMM
at the paper sizes (23 fields × 18 = 414 inputs, towers 200-80-1, two towers) costs
6 · (414·200 + 200·80 + 80) · 2 ≈ 1.19 MFLOP per example, forward + backward. So the machine's
best matmul rate bounds the examples/s of any ESMM step: roofline = peak FLOP/s / FLOP per example.

Measured, each in its own process: square matmuls (JAX f32 and bf16; PyTorch f32 where installed)
at a few sizes, the best counting as the peak; the towers alone (forward, backward, Adam; no
embeddings) in JAX; and the full esmjax step at 1e5 table rows (the same worker as the sweep).
Writes roofline.{json,md} (`--name` for another CPU's record). `compare_torch.py` and `sweep.py`
call `measure_peak` for their own roofline line.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import operator
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import harness
import reporting


def _time_calls(fn, sync, min_s: float) -> float:
  """Median seconds per call of fn() over at least `min_s` seconds (after one warm-up call)."""
  sync(fn())
  times, t_end = [], time.perf_counter() + min_s
  while time.perf_counter() < t_end or len(times) < 3:
    t = time.perf_counter()
    sync(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def jax_matmul(spec) -> dict:
  import jax
  import jax.numpy as jnp

  out = {}
  for dtype in spec["dtypes"]:
    for n in spec["sizes"]:
      k1, k2 = jax.random.split(jax.random.PRNGKey(n))
      a = jax.random.normal(k1, (n, n), jnp.float32).astype(dtype)
      b = jax.random.normal(k2, (n, n), jnp.float32).astype(dtype)
      f = jax.jit(lambda x, y: x @ y)
      s = _time_calls(functools.partial(f, a, b), jax.block_until_ready, spec["min_s"])
      out[f"jax/{dtype}/{n}"] = 2 * n**3 / s
  return {"gflops": {k: v / 1e9 for k, v in out.items()}, "backend": jax.default_backend()}


def tower_dots(batch: int, in_dim: int, hidden, towers: int) -> list[tuple[str, int, int, int]]:
  """(name, M, K, N) of every matmul of the towers' step, forward and backward: the first layers
  of the towers as one fused [B, in] × [in, T·h] matmul, the later layers per tower (×T)."""
  sizes = [in_dim, *hidden, 1]
  out = []
  for i, (a, b) in enumerate(itertools.pairwise(sizes)):
    n = b * towers if i == 0 else b
    reps = 1 if i == 0 else towers
    if min(a, n) < 16:  # the heads: matrix-vector products, a negligible share of the FLOPs
      continue
    for _ in range(reps):
      out += [(f"L{i} fwd", batch, a, n), (f"L{i} dx", batch, n, a), (f"L{i} dW", a, batch, n)]
  return out


def jax_tower_dots(spec) -> dict:
  """GFLOP/s of each tower matmul shape as a plain [M, K] @ [K, N] in JAX: f32, and bf16 operands
  with f32 accumulation (operands in the layout the fast kernel takes: the best case)."""
  import jax
  import jax.numpy as jnp

  out = {}
  for _, m, k, n in {(s[1], s[2], s[3]): s for s in spec["shapes"]}.values():
    for label, dtype, acc in (("jax f32", jnp.float32, None), ("jax bf16→f32", jnp.bfloat16, 1)):
      a = jnp.ones((m, k), dtype)
      b = jnp.ones((k, n), dtype)
      f = jax.jit(
        lambda x, y, acc=acc: jax.lax.dot_general(
          x, y, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32 if acc else None
        )
      )
      s = _time_calls(functools.partial(f, a, b), jax.block_until_ready, spec["min_s"])
      out[f"{label}/{m}x{k}x{n}"] = 2 * m * k * n / s / 1e9
  return {"gflops": out}


def torch_tower_dots(spec) -> dict:
  """The same shapes in PyTorch: f32, and bf16 (what autocast runs: oneDNN, AMX where present)."""
  import torch

  torch.set_num_threads(reporting.usable_cores())
  out = {}
  for _, m, k, n in {(s[1], s[2], s[3]): s for s in spec["shapes"]}.values():
    for label, dtype in (("torch f32", torch.float32), ("torch bf16", torch.bfloat16)):
      a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
      s = _time_calls(functools.partial(operator.matmul, a, b), lambda x: x, spec["min_s"])
      out[f"{label}/{m}x{k}x{n}"] = 2 * m * k * n / s / 1e9
  return {"gflops": out}


def best_tower_kernel(shapes, gflops: dict) -> dict:
  """Per shape the fastest kernel measured, and the towers' best rate: all their FLOPs over the
  time the per-shape best kernels take ({'gflops', 'by_shape'})."""
  by_shape, flops, secs = {}, 0.0, 0.0
  for name, m, k, n in shapes:
    key = f"{m}x{k}x{n}"
    cands = {lab.split("/")[0]: v for lab, v in gflops.items() if lab.endswith("/" + key)}
    if not cands:
      continue
    best = max(cands, key=cands.get)
    by_shape[f"{name} {key}"] = {"best": best, **cands}
    f = 2.0 * m * k * n
    flops += f
    secs += f / (cands[best] * 1e9)
  return {"gflops": flops / secs / 1e9 if secs else float("nan"), "by_shape": by_shape}


def torch_matmul(spec) -> dict:
  import torch

  dev = "cuda" if torch.cuda.is_available() else "cpu"
  if dev == "cpu":
    torch.set_num_threads(reporting.usable_cores())
  sync = (lambda x: torch.cuda.synchronize()) if dev == "cuda" else (lambda x: x)
  out = {}
  for n in spec["sizes"]:
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    s = _time_calls(functools.partial(operator.matmul, a, b), sync, spec["min_s"])
    out[f"torch/float32/{n}"] = 2 * n**3 / s / 1e9
  return {"gflops": out, "device": dev}


def towers_only(spec) -> dict:
  """The model's towers alone (no embeddings): forward, backward and Adam, in JAX."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import optax

  from esmjax.models import layers

  b, in_dim = spec["batch"], spec["in_dim"]
  towers = len(common.model_towers(spec["model"]))

  dtype = jnp.bfloat16 if spec.get("dtype") == "bfloat16" else jnp.float32

  class Towers(nn.Module):
    @nn.compact
    def __call__(self, x):
      names = [f"t{i}" for i in range(towers)]
      kw = dict(hidden=(200, 80), activation="relu", dropout=0.0, dtype=dtype, train=True)
      return list(layers.tower_group(names, x, **kw).values())

  m = Towers()
  x = jax.random.normal(jax.random.PRNGKey(0), (b, in_dim))
  y = (jax.random.uniform(jax.random.PRNGKey(1), (b,)) < 0.1).astype(jnp.float32)
  params = m.init(jax.random.PRNGKey(2), x)
  tx = optax.adam(1e-3)

  @jax.jit
  def step(p, o, x):
    def loss(p, x):
      return sum(jnp.mean(jax.nn.softplus(z) - y * z) for z in m.apply(p, x))

    l, (gp, gx) = jax.value_and_grad(loss, argnums=(0, 1))(p, x)  # gx: what the tables would get
    u, o = tx.update(gp, o, p)
    return optax.apply_updates(p, u), o, l + jnp.sum(gx) * 0

  box = {"p": params, "o": tx.init(params), "l": None}

  def run(i):
    box["p"], box["o"], box["l"] = step(box["p"], box["o"], x)

  _, rates, _ = common.timed_windows(
    run,
    lambda: jax.block_until_ready(box["l"]),
    b,
    warmup_s=1.0,
    windows=spec["windows"],
    window_s=spec["window_s"],
  )
  return {"ex_per_s": rates, "towers": towers}


def measure_peak(quick: bool = False, with_torch: bool = True) -> dict:
  """Matmul peak (FLOP/s) of this machine, from worker processes; {'peak_gflops', 'by'}."""
  me = Path(__file__).resolve()
  probe = common.run_worker(me, {"kind": "probe"}, env=common.worker_env())
  accel = probe.get("backend") in ("gpu", "tpu", "cuda", "rocm")
  sizes = [2048, 4096, 8192] if accel else ([1024] if quick else [1024, 2048, 4096])
  dtypes = ["float32"] if quick and not accel else ["float32", "bfloat16"]
  spec = {"kind": "jax_matmul", "sizes": sizes, "dtypes": dtypes, "min_s": 0.5 if quick else 1.5}
  by = {}
  r = common.run_worker(me, spec)
  by.update(r.get("gflops", {}))
  if with_torch and probe.get("torch"):
    r = common.run_worker(
      me,
      {**spec, "kind": "torch_matmul"},
      env=common.worker_env(extra={"OMP_WAIT_POLICY": "PASSIVE"}),
    )
    by.update(r.get("gflops", {}))
  f32 = {k: v for k, v in by.items() if "/float32/" in k}
  peak = max(f32.values()) if f32 else float("nan")
  return {
    "peak_gflops": peak,
    "peak_bf16_gflops": max([v for k, v in by.items() if "bfloat16" in k] or [float("nan")]),
    "by": by,
    "backend": probe.get("backend"),
  }


def fraction_line(ex_per_s: float, flops_per_ex: float, peak_gflops: float) -> str:
  roof = peak_gflops * 1e9 / flops_per_ex
  return (
    f"Roofline: matmul peak {peak_gflops:,.0f} GFLOP/s (f32, measured) / {flops_per_ex / 1e6:.2f} "
    "MFLOP per "
    f"example = {roof / 1e3:,.0f} k ex/s; the esmjax step runs at {ex_per_s / 1e3:,.1f} k ex/s = "
    f"{100 * ex_per_s / roof:.0f} % of it ({ex_per_s * flops_per_ex / 1e9:,.1f} GFLOP/s)."
  )


def tower_limit_md(res: dict) -> list[str]:
  """The towers' own limit: every kernel at the towers' matmul shapes, and each step's tower
  FLOP/s against the best of them."""
  best = res.get("best_tower_kernel")
  if not best:
    return []
  labels = ["jax f32", "jax bf16→f32", "torch f32", "torch bf16"]
  rows = [
    [shape, *[v.get(k, float("nan")) for k in labels], v["best"]]
    for shape, v in best["by_shape"].items()
  ]
  rates = [
    [k, v["ex_per_s"], v["tower_gflops"], v["fraction_of_best_kernel"]]
    for k, v in res["tower_rates"].items()
  ]
  return [
    "## The towers' limit: matmul at their own shapes (batch 4096), GFLOP/s",
    "",
    "Operands in the layout each kernel takes best (the best case for every kernel); "
    "`jax bf16→f32` is bf16 operands with f32 accumulation (`preferred_element_type`), "
    "`torch bf16` what `torch.autocast` runs.",
    "",
    reporting.markdown_table(["dot (name M×K×N)", *labels, "best"], rows),
    "",
    f"Best kernel per shape over all the towers' FLOPs: **{best['gflops']:,.0f} GFLOP/s** (the "
    "limit the fractions below use).",
    "",
    reporting.markdown_table(
      ["what (ESMM, batch 4096)", "ex/s", "tower GFLOP/s", "fraction of best kernel"], rates
    ),
    "",
  ]


def markdown(res: dict) -> str:
  flops, roof = res["esmm_flops_per_example"], res["roofline_ex_per_s"]
  tw_rate, st_rate = res["towers_only_ex_per_s"], res["esmm_step_1e5_ex_per_s"]
  towers = res.get("esmm_towers", 2)
  md = [
    f"# Roofline ({res['when']})",
    "",
    f"Machine: {res['cpu']} (bf16 flags: "
    f"{', '.join(res.get('machine', {}).get('cpu_bf16_flags', [])) or 'none'}), {res['cores']} "
    f"usable cores, backend {res['backend']}; load {res.get('load_before')} before, "
    f"{res.get('load_after')} after. Shared and noisy: medians of timed calls.",
    "",
    reporting.markdown_table(["matmul", "GFLOP/s"], sorted(res["by"].items())),
    "",
    f"ESMM (23 fields × 18, towers 200-80-1 ×{towers}): {flops / 1e6:.3f} MFLOP per example "
    "(fwd+bwd).",
    "",
    reporting.markdown_table(
      ["what", "ex/s", "fraction of roofline"],
      [
        ["roofline (f32 peak / FLOP per example)", roof, 1.0],
        ["towers alone (fwd+bwd+Adam, JAX)", tw_rate, tw_rate / roof],
        ["esmjax step, 1e5 rows, batch 4096", st_rate, st_rate / roof],
      ],
    ),
    "",
    fraction_line(st_rate, flops, res["peak_gflops"]),
    "",
    *tower_limit_md(res),
    f"Regenerate: `{res.get('command', 'python benchmarks/roofline.py')}`.",
  ]
  return "\n".join(md) + "\n"


@dataclasses.dataclass
class Opts(harness.Options):
  quick: bool = harness.opt(False, "shorter timings (~30 s)")
  render_only: bool = harness.opt(False, "rewrite the .md from the .json in --out_dir")
  name: str = harness.opt("roofline", "results file name (one per CPU: roofline_<cpu>)")


def main(argv=None):
  args = harness.parse(Opts, argv, __doc__)
  out_dir = Path(args.out_dir)
  if args.render_only:
    res = json.loads((out_dir / f"{args.name}.json").read_text())
    reporting.write_results(out_dir, args.name, res, markdown(res))
    return
  t0 = time.time()
  prov = reporting.provenance()
  peak = measure_peak(args.quick)
  w = dict(windows=3, window_s=1.5 if args.quick else 3.0)
  me = Path(__file__).resolve()
  in_dim = common.PAPER_FIELDS * common.PAPER_DIM
  shapes = tower_dots(4096, in_dim, (200, 80), 2)
  dot_spec = {"shapes": shapes, "min_s": 0.3 if args.quick else 1.0}
  kernels = {}
  for kind in ("jax_tower_dots", "torch_tower_dots"):
    r = common.run_worker(me, {"kind": kind, **dot_spec})
    kernels.update(r.get("gflops", {}))
  best = best_tower_kernel(shapes, kernels)
  runs = {}
  for dtype in ("float32", "bfloat16"):
    runs[f"towers/{dtype}"] = common.run_worker(
      me,
      {"kind": "towers", "batch": 4096, "in_dim": in_dim, "model": "esmm", "dtype": dtype, **w},
    )
    runs[f"step/{dtype}"] = common.run_worker(
      me,
      {
        "kind": "step",
        "model": "esmm",
        "rows": 100_000,
        "batch": 4096,
        "dtype": "float32",  # tables f32; the towers in `dtype` (what model.dtype=auto trains)
        "model_dtype": dtype,
        "warmup_s": 1.0,
        **w,
      },
    )
  st, tw = runs["step/float32"], runs["towers/float32"]
  flops = st.get("flops_per_example", float("nan"))  # the step's worker counts the model's towers
  rates = {k: common.spread(r.get("ex_per_s", []))["median"] for k, r in runs.items()}
  tw_rate, st_rate = rates["towers/float32"], rates["step/float32"]
  roof = peak["peak_gflops"] * 1e9 / flops
  res = {
    "when": prov["when"],
    "cpu": prov["machine"]["cpu"],
    "cores": prov["machine"]["cores"],
    **peak,
    "esmm_flops_per_example": flops,
    "esmm_towers": tw.get("towers"),
    "roofline_ex_per_s": roof,
    "towers_only_ex_per_s": tw_rate,
    "towers_only_fraction": tw_rate / roof,
    "esmm_step_1e5_ex_per_s": st_rate,
    "esmm_step_fraction": st_rate / roof,
    "tower_kernels_gflops": kernels,
    "best_tower_kernel": best,
    "tower_rates": {
      k: {
        "ex_per_s": v,
        "tower_gflops": v * flops / 1e9,
        "fraction_of_best_kernel": v * flops / 1e9 / best["gflops"],
      }
      for k, v in rates.items()
    },
    "step_engine": st.get("engine"),
    "errors": [r["error"] for r in runs.values() if "error" in r],
    **{k: prov[k] for k in ("command", "machine", "code", "load_before")},
  }
  md = markdown(reporting.finish(res, t0))
  reporting.write_results(out_dir, args.name, res, md)
  print(md)


if __name__ == "__main__":
  if not common.worker_main(
    {
      "probe": lambda s: common.jax_probe(),
      "jax_matmul": jax_matmul,
      "torch_matmul": torch_matmul,
      "towers": towers_only,
      "jax_tower_dots": jax_tower_dots,
      "torch_tower_dots": torch_tower_dots,
      "step": common.jax_throughput,
    }
  ):
    main()
