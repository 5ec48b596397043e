r"""The towers' matmuls through an XLA FFI call into oneMKL's bf16 GEMM, against XLA's own dots.

    pip install mkl    # oneMKL wheels from the registry (~280 MB); not an esmjax dependency
    python benchmarks/mkl_ffi.py [--quick] [--rounds 3]

XLA:CPU's bf16 × bf16 → f32 dots run at 25–95 % of PyTorch's oneDNN kernels at the towers' shapes
(`roofline.md`). This measures the route the alternative would take: `cblas_gemm_bf16bf16f32`
(AMX / AVX512-BF16 where present) called from inside the jitted step as an XLA FFI custom call,
without a compiler: the handler is a ctypes callback that reads the XLA_FFI_CallFrame (operands
and result are XLA's own buffers: no copies) and calls MKL with its transpose flags, so the
backward pass needs no transposed copies at all (batch-major: dW = aᵀ·g, da = g·Wᵀ).

Two measurements, each variant in its own process, interleaved over rounds:
- every tower matmul shape (roofline.py's list) alone, XLA bf16→f32 vs MKL via FFI;
- the ESMM towers (23 × 18 inputs, 200-80-1 × 2, first layers fused) forward + backward under
  `jax.jit`: esmjax's `mixed.mixed_towers` (XLA dots, feature-major backward) vs the same math
  with MKL dots; the gradients of both are compared on one batch.
Writes mkl_ffi.{json,md}.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import glob
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import harness
import reporting
import roofline

ME = Path(__file__).resolve()
BATCH, HIDDEN, TOWERS = 4096, (200, 80), 2
MIN_DIM = 16  # the heads' matrix-vector products stay f32 XLA dots, as in esmjax.models.mixed
_LIVE: dict[str, object] = {}  # the ctypes callbacks XLA holds pointers to
# MKL's OpenMP threads sleep at once after a call instead of spinning 200 ms: spinning, they take
# the cores from XLA's own threads between the calls (measured: towers 13.2 → 11.3 ms; a lock
# that keeps two MKL calls from running at once, or MKL on 1 thread, was no faster). The dots
# alone have no XLA threads between their calls and keep OpenMP's defaults.
MKL_ENV = {"KMP_BLOCKTIME": "0"}


class _Ext(ctypes.Structure):
  pass


_Ext._fields_ = [("size", ctypes.c_size_t), ("type", ctypes.c_int), ("next", ctypes.POINTER(_Ext))]


class _Version(ctypes.Structure):
  _fields_ = [("size", ctypes.c_size_t), ("ext", ctypes.c_void_p), ("major", ctypes.c_int),
              ("minor", ctypes.c_int)]  # fmt: skip


class _Metadata(ctypes.Structure):
  _fields_ = [("size", ctypes.c_size_t), ("version", _Version), ("traits", ctypes.c_uint32),
              ("state_type_id", ctypes.c_int64)]  # fmt: skip


class _MetadataExt(ctypes.Structure):
  _fields_ = [("base", _Ext), ("metadata", ctypes.POINTER(_Metadata))]


class _Buffer(ctypes.Structure):
  _fields_ = [("size", ctypes.c_size_t), ("ext", ctypes.c_void_p), ("dtype", ctypes.c_int),
              ("data", ctypes.c_void_p), ("rank", ctypes.c_int64),
              ("dims", ctypes.POINTER(ctypes.c_int64))]  # fmt: skip


class _List(ctypes.Structure):  # XLA_FFI_Args / XLA_FFI_Rets
  _fields_ = [("size", ctypes.c_size_t), ("ext", ctypes.c_void_p), ("n", ctypes.c_int64),
              ("types", ctypes.c_void_p),
              ("items", ctypes.POINTER(ctypes.POINTER(_Buffer)))]  # fmt: skip


class _Attrs(ctypes.Structure):  # XLA_FFI_Attrs (unused: the transposes are in the target's name)
  _fields_ = [("size", ctypes.c_size_t), ("ext", ctypes.c_void_p), ("n", ctypes.c_int64),
              ("types", ctypes.c_void_p), ("names", ctypes.c_void_p),
              ("attrs", ctypes.c_void_p)]  # fmt: skip


class _Frame(ctypes.Structure):  # XLA_FFI_CallFrame, API 0.x (jaxlib/include/xla/ffi/api/c_api.h)
  _fields_ = [("size", ctypes.c_size_t), ("ext", ctypes.POINTER(_Ext)), ("api", ctypes.c_void_p),
              ("ctx", ctypes.c_void_p), ("stage", ctypes.c_int), ("args", _List),
              ("rets", _List), ("attrs", _Attrs), ("future", ctypes.c_void_p)]  # fmt: skip


def _load_mkl():
  """libmkl_rt from the `mkl` wheel (or the system), or None."""
  for path in glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*")) + ["libmkl_rt.so.3"]:
    try:
      return ctypes.CDLL(path)
    except OSError:
      continue
  return None


def register(lib) -> None:
  """FFI targets esmjax_mkl_gemm_{ta}{tb}: row-major C[m, n] = op(A) · op(B) in f32 from bf16."""
  gemm = lib.cblas_gemm_bf16bf16f32
  i, p, f = ctypes.c_int, ctypes.c_void_p, ctypes.c_float
  gemm.argtypes, gemm.restype = [i, i, i, i, i, i, f, p, i, p, i, f, p, i], None
  proto = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(_Frame))
  import jax

  for ta in (0, 1):
    for tb in (0, 1):

      def handler(frame_p, ta=ta, tb=tb):
        frame = frame_p.contents
        if frame.ext and frame.ext.contents.type == 1:  # XLA asks for the handler's metadata
          md = ctypes.cast(frame.ext, ctypes.POINTER(_MetadataExt)).contents.metadata.contents
          md.version.major, md.version.minor, md.traits = 0, 1, 0
          return None
        if frame.stage != 3:  # only XLA_FFI_ExecutionStage_EXECUTE does work
          return None
        a, b = frame.args.items[0].contents, frame.args.items[1].contents
        c = frame.rets.items[0].contents
        m, k = (a.dims[1], a.dims[0]) if ta else (a.dims[0], a.dims[1])
        n = b.dims[0] if tb else b.dims[1]
        gemm(101, 111 + ta, 111 + tb, m, n, k, 1.0, a.data, a.dims[1], b.data, b.dims[1],
             0.0, c.data, n)  # fmt: skip
        return None

      name = f"esmjax_mkl_gemm_{ta}{tb}"
      _LIVE[name] = proto(handler)
      ptr = ctypes.cast(_LIVE[name], ctypes.c_void_p).value
      jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(ptr), platform="cpu")


def mkl_dot(a, b, ta: bool = False, tb: bool = False):
  """op(a) @ op(b) (op: transpose where asked), bf16 operands, f32 result; small dims in XLA f32."""
  import jax
  import jax.numpy as jnp

  m, k = (a.shape[1], a.shape[0]) if ta else a.shape
  n = b.shape[0] if tb else b.shape[1]
  if min(m, k, n) < MIN_DIM:
    return (a.T if ta else a).astype(jnp.float32) @ (b.T if tb else b).astype(jnp.float32)
  out = jax.ShapeDtypeStruct((m, n), jnp.float32)
  call = jax.ffi.ffi_call(f"esmjax_mkl_gemm_{int(ta)}{int(tb)}", out)
  return call(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16))


def mkl_towers():
  """ReLU towers with heads, first layers fused, every matmul an MKL call; batch-major backward."""
  import jax
  import jax.numpy as jnp

  def forward(x, params):
    xb, width = x.astype(jnp.bfloat16), params[0][0][0].shape[1]
    y0 = mkl_dot(xb, jnp.concatenate([p[0][0] for p in params], 1)) + jnp.concatenate(
      [p[0][1] for p in params]
    )
    outs, saved = [], []
    for t, layers in enumerate(params):
      ys, ins, h = [y0[:, t * width : (t + 1) * width]], [xb], None
      for kernel, bias in layers[1:]:
        h = jax.nn.relu(ys[-1]).astype(jnp.bfloat16)
        ins.append(h)
        ys.append(mkl_dot(h, kernel) + bias)
      outs.append(ys[-1])
      saved.append((ys, ins))
    return outs, saved

  @jax.custom_vjp
  def towers(x, params):
    return forward(x, params)[0]

  def fwd(x, params):
    outs, saved = forward(x, params)
    return outs, (saved, params)

  def bwd(res, cts):
    saved, params = res
    grads, g_first = [], []
    for (ys, ins), layers, g in zip(saved, params, cts, strict=True):
      tg = [None] * len(layers)
      for i in reversed(range(len(layers))):
        if i == 0:
          g_first.append(g)
          break
        gb = g.astype(jnp.bfloat16)
        tg[i] = (mkl_dot(ins[i], gb, ta=True), jnp.sum(g, 0))
        g = mkl_dot(gb, layers[i][0].astype(jnp.bfloat16), tb=True) * (ys[i - 1] > 0)
      grads.append(tg)
    g = jnp.concatenate(g_first, 1)
    gb, width = g.astype(jnp.bfloat16), params[0][0][0].shape[1]
    dw = mkl_dot(saved[0][1][0], gb, ta=True)
    for t, tg in enumerate(grads):
      cols = slice(t * width, (t + 1) * width)
      tg[0] = (dw[:, cols], jnp.sum(g[:, cols], 0))
    kernel = jnp.concatenate([p[0][0] for p in params], 1).astype(jnp.bfloat16)
    return mkl_dot(gb, kernel, tb=True), grads

  towers.defvjp(fwd, bwd)
  return towers


def _setup(spec):
  import jax
  import jax.numpy as jnp
  import numpy as np

  from esmjax.models import mixed

  if spec["variant"] == "mkl":
    register(_load_mkl())
  sizes = [spec["in_dim"], *HIDDEN, 1]
  key = jax.random.PRNGKey(0)
  params = [
    [
      (jax.random.normal(jax.random.fold_in(key, 10 * t + i), (a, b)) / np.sqrt(a), jnp.zeros(b))
      for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True))
    ]
    for t in range(TOWERS)
  ]
  x = jax.random.normal(key, (BATCH, spec["in_dim"]))
  masks = [[None] * len(HIDDEN + (1,)) for _ in range(TOWERS)]
  if spec["variant"] == "mkl":
    fn = mkl_towers()
  else:
    fn = lambda x, p: mixed.mixed_towers(jax.nn.relu, 1.0, True, False, x, p, masks)  # noqa: E731

  def loss(p, x):
    return sum(jnp.sum(o * (1.0 + i)) for i, o in enumerate(fn(x, p)))

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1))), params, x


def towers_worker(spec) -> dict:
  """Forward + backward of the towers: seconds per call (median), and the gradients' digest."""
  import jax
  import numpy as np

  step, params, x = _setup(spec)
  out = jax.block_until_ready(step(params, x))
  secs = roofline._time_calls(lambda: step(params, x), jax.block_until_ready, spec["min_s"])
  leaves = [np.asarray(v, np.float64).ravel() for v in jax.tree.leaves(out)]
  np.save(spec["grads_to"], np.concatenate(leaves))  # loss, parameter and input gradients
  return {"seconds": secs}


def dots_worker(spec) -> dict:
  """Every tower matmul shape alone: XLA bf16→f32 (best layout) or MKL via FFI, GFLOP/s."""
  import jax
  import jax.numpy as jnp

  if spec["variant"] == "mkl":
    register(_load_mkl())
  out = {}
  for _, m, k, n in {(s[1], s[2], s[3]): s for s in spec["shapes"]}.values():
    a, b = jnp.ones((m, k), jnp.bfloat16), jnp.ones((k, n), jnp.bfloat16)
    if spec["variant"] == "mkl":
      f = jax.jit(mkl_dot)
    else:
      f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    s = roofline._time_calls(functools.partial(f, a, b), jax.block_until_ready, spec["min_s"])
    out[f"{m}x{k}x{n}"] = 2 * m * k * n / s / 1e9
  return {"gflops": out}


@dataclasses.dataclass
class Opts(harness.Options):
  quick: bool = harness.opt(False, "1 round, short timings (~1 min)")
  rounds: int = harness.opt(3, "interleaved rounds (each alternates who goes first)")


def main(argv=None):
  import numpy as np

  args = harness.parse(Opts, argv, __doc__)
  if _load_mkl() is None:
    sys.exit("mkl_ffi needs oneMKL's libmkl_rt: pip install mkl")
  rounds, min_s = (1, 0.5) if args.quick else (args.rounds, 2.0)
  t0 = time.time()
  res = harness.Record("mkl_ffi", args)
  in_dim = common.PAPER_FIELDS * common.PAPER_DIM
  shapes = roofline.tower_dots(BATCH, in_dim, HIDDEN, TOWERS)
  flops = sum(2.0 * m * k * n for _, m, k, n in shapes)  # the towers' dots, heads excluded
  dots, secs, grads = {"xla": [], "mkl": []}, {"xla": [], "mkl": []}, {}
  for r in range(rounds):
    for v in ("xla", "mkl") if r % 2 == 0 else ("mkl", "xla"):
      d = common.run_worker(
        ME, {"kind": "dots", "variant": v, "shapes": shapes, "min_s": min_s / 4}
      )
      dots[v].append(d.get("gflops", {}))
      g = f"/tmp/mkl_ffi_grads_{v}.npy"
      spec = {"kind": "towers", "variant": v, "in_dim": in_dim, "min_s": min_s, "grads_to": g}
      t = common.run_worker(ME, spec, env=common.worker_env(extra=MKL_ENV if v == "mkl" else {}))
      secs[v].append(t.get("seconds", float("nan")))
      grads[v] = g
      print(f"round {r + 1} {v}: towers fwd+bwd {1e3 * secs[v][-1]:.2f} ms", flush=True)
  a, b = np.load(grads["xla"]), np.load(grads["mkl"])
  res["grad_max_rel_diff"] = float(np.max(np.abs(a - b)) / np.max(np.abs(a)))
  med = {v: float(np.median(s)) for v, s in secs.items()}
  res["towers"] = {v: {"seconds": med[v], "dot_gflops": flops / med[v] / 1e9} for v in med}
  res["towers_mkl_over_xla"] = med["xla"] / med["mkl"]
  res["dots"] = {
    key: {v: float(np.median([d[key] for d in dots[v] if key in d])) for v in dots}
    for key in dots["xla"][0]
  }
  md = markdown(reporting.finish(res, t0))
  reporting.write_results(Path(args.out_dir), "mkl_ffi", res, md)
  print(md)


def markdown(res: dict) -> str:
  m = res["machine"]
  rows = [[k, v["xla"], v["mkl"], v["mkl"] / v["xla"]] for k, v in res["dots"].items()]
  tw = res["towers"]
  return "\n".join(
    [
      f"# The towers' matmuls through oneMKL as an XLA FFI call ({res['when']})",
      "",
      f"Machine: {m['cpu']} (bf16 flags: {', '.join(m['cpu_bf16_flags']) or 'none'}), "
      f"{m['cores']} usable cores; load {res['load_before']} before, "
      f"{res.get('load_after')} after.",
      "",
      "## Each matmul alone (bf16 operands, f32 result), GFLOP/s, median over rounds",
      "",
      reporting.markdown_table(["M×K×N", "XLA", "MKL via FFI", "MKL / XLA"], rows),
      "",
      "## ESMM towers forward + backward under `jax.jit` (batch 4096), median over rounds",
      "",
      reporting.markdown_table(
        ["towers", "ms per call", "dot GFLOP/s"],
        [[f"{k} dots", 1e3 * v["seconds"], v["dot_gflops"]] for k, v in tw.items()],
      ),
      "",
      f"**MKL / XLA: {res['towers_mkl_over_xla']:.2f}×** the rate; the gradients agree to "
      f"{res['grad_max_rel_diff']:.1e} (max |Δ| / max |g|, bf16 operands both). In the towers MKL "
      f"ran with {MKL_ENV} (its fastest setting measured here; the dots alone with OpenMP's "
      "defaults) and as many threads as cores.",
      "",
      f"Regenerate: `{res['command']}`.",
      "",
    ]
  )


if __name__ == "__main__":
  if not common.worker_main(
    {"probe": lambda s: common.jax_probe(), "towers": towers_worker, "dots": dots_worker}
  ):
    main()
