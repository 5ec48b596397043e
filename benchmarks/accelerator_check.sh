#!/usr/bin/env bash
# One prepared command for a GPU (or TPU) machine: environment, GPU-relevant tests, sweep, the
# evaluation's metrics on the device, JAX-vs-PyTorch speed, what users run (user_path), roofline --
# sized to end inside 8 minutes, results under OUT_DIR, one summary: OUT_DIR/accelerator_check.md.
#
#   bash benchmarks/accelerator_check.sh [OUT_DIR]        # default: $OUT, else ./accelerator_out
#   ESMJAX_CHECK_QUICK=1 bash benchmarks/accelerator_check.sh /tmp/acc   # CPU smoke test (tiny sweep)
#
# Assumes Python with JAX (and PyTorch, for the comparison) preinstalled and no network. esmjax runs
# from this checkout (PYTHONPATH: this checkout first, then whatever PYTHONPATH the caller set, e.g.
# a `pip install --target` folder of the dependencies; every worker process inherits it), so
# nothing is installed; if esmjax's other dependencies (flax, optax, grain, ml_collections, ...) are
# missing they are listed in OUT_DIR/missing.txt, and installed from wheels only if ESMJAX_WHEELS
# names a folder of them (pip --no-index).
# Every stage has its own timeout, a failing stage does not stop the others. Time: every stage's
# timeout comes out of ESMJAX_CHECK_BUDGET_S (default 470 s from the start, the ~15 s environment
# stage included; a stage that times out is killed 5 s later, and the summary takes ~2 s), so the
# whole check ends inside 8 minutes. The stages run in the order of what only an accelerator can
# answer: the main job against the step in both input modes (<= 140 s), the resident feed alone
# (<= 40 s), the sweep (<= 90 s of points + 30 s), the tests (<= 75 s, compile-light:
# JAX_DISABLE_MOST_OPTIMIZATIONS as the flax examples' tests, no GEMM autotuning), device metrics
# (<= 35 s), JAX vs PyTorch (<= 50 s), start-up with the compilation cache (<= 75 s), roofline
# (<= 60 s), user_path with what is left (<= 70 s; its baseline commit is a CPU-run question). A stage that would get under 20 s is skipped and says so.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT_DIR=$(mkdir -p "${1:-${OUT:-$ROOT/accelerator_out}}" && cd "${1:-${OUT:-$ROOT/accelerator_out}}" && pwd)
PY=${PYTHON:-python3}
QUICK=${ESMJAX_CHECK_QUICK:-0}
BUDGET=${ESMJAX_CHECK_BUDGET_S:-470}
START=$(date +%s)
export PYTHONPATH="$ROOT:$ROOT/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # measured peaks; JAX and PyTorch workers take turns
export TF_CPP_MIN_LOG_LEVEL=2
: > "$OUT_DIR/stages.tsv"

log() { echo "[$(date +%T) +$(( $(date +%s) - START ))s] $*" | tee -a "$OUT_DIR/check.log"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
# cap CAP RESERVE: a stage's timeout, CAP seconds at most, leaving RESERVE for the stages after it.
cap() { local t=$(( $(left) - $2 )); (( t > $1 )) && t=$1; echo $t; }
# stage NAME TIMEOUT_S CMD...: runs with a timeout, logs to OUT_DIR/NAME.log, records the status.
stage() {
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s) rc
  if (( limit < 20 )); then
    log "skip $name: only ${limit}s of the budget left"
    printf '%s\tskipped (budget)\t–\t–\n' "$name" >> "$OUT_DIR/stages.tsv"
    return 0
  fi
  log "start $name (timeout ${limit}s): $*"
  timeout --kill-after=5 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  rc=$?
  local dt=$(( $(date +%s) - t0 ))
  local status=ok
  (( rc == 124 || rc == 137 )) && status="timed out"
  (( rc != 0 && rc != 124 && rc != 137 )) && status="failed (exit $rc)"
  log "end $name: $status in ${dt}s"
  printf '%s\t%s\t%ss\t%s.log\n' "$name" "$status" "$dt" "$name" >> "$OUT_DIR/stages.tsv"
  tail -n 3 "$OUT_DIR/$name.log" | sed 's/^/    /' | tee -a "$OUT_DIR/check.log"
  return 0
}

# 1. Environment.
{
  command -v nvidia-smi > /dev/null && nvidia-smi
  $PY - <<'EOF'
import importlib, platform, sys
print("python", platform.python_version(), sys.executable)
for m in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "grain", "ml_collections", "numpy", "absl",
          "tqdm", "pyarrow", "matplotlib", "tensorboardX", "torch", "pytest"):
  try:
    mod = importlib.import_module(m)
    print(f"{m:18s} {getattr(mod, '__version__', '?')}")
  except Exception as e:
    print(f"{m:18s} MISSING ({type(e).__name__})")
try:
  import jax
  print("jax backend", jax.default_backend(), jax.devices())
except Exception as e:
  print("jax failed:", e)
try:
  import torch
  print("torch cuda", torch.cuda.is_available(), torch.cuda.device_count() and torch.cuda.get_device_name(0))
except Exception as e:
  print("torch failed:", e)
EOF
} > "$OUT_DIR/env.txt" 2>&1
grep MISSING "$OUT_DIR/env.txt" | awk '{print $1}' > "$OUT_DIR/missing.txt"
if [[ -s "$OUT_DIR/missing.txt" && -n "${ESMJAX_WHEELS:-}" && -d "${ESMJAX_WHEELS}" ]]; then
  log "installing missing modules from $ESMJAX_WHEELS (no index)"
  $PY -m pip install --no-index --find-links "$ESMJAX_WHEELS" \
    flax optax orbax-checkpoint grain ml-collections tqdm pyarrow matplotlib tensorboardX pytest \
    >> "$OUT_DIR/env.txt" 2>&1 || log "wheel install failed (see env.txt)"
fi
log "environment: $(grep -E '^(python|jax backend|torch cuda)' "$OUT_DIR/env.txt" | tr '\n' ';')"
[[ -s "$OUT_DIR/missing.txt" ]] && log "missing modules: $(tr '\n' ' ' < "$OUT_DIR/missing.txt")"
if ! $PY -c "import esmjax.training.trainer" 2> "$OUT_DIR/import_error.txt"; then
  log "esmjax cannot be imported here (see import_error.txt, missing.txt): stopping"
  printf 'import esmjax\tfailed\t–\timport_error.txt\n' >> "$OUT_DIR/stages.tsv"
  $PY benchmarks/accelerator_summary.py "$OUT_DIR" > /dev/null 2>&1
  exit 1
fi
BACKEND=$($PY -c "import jax; print(jax.default_backend())" 2> /dev/null)
case "$BACKEND" in
  gpu|cuda) PLATFORM=cuda ;;
  rocm) PLATFORM=rocm ;;
  tpu) PLATFORM=tpu ;;
  *) PLATFORM=cpu ;;
esac
log "backend $BACKEND (JAX_PLATFORMS=$PLATFORM for the tests)"

# 2. The main job against the step alone, in both input modes (issue 24's targets: ESMM at batch
#    16,384 >= 10 M ex/s end to end, at batch 1,024 >= 80 % of the step), then the resident feed
#    alone (>= 100 M rows/s). On CPU (the smoke test) a third of an epoch at batch 1,024 only.
if [[ $QUICK == 1 || $PLATFORM == cpu ]]; then
  stage input_modes 240 $PY benchmarks/input_modes.py --quick --models esmm --batches 1024 \
    --out_dir "$OUT_DIR"
  stage resident_feed 90 $PY benchmarks/resident_feed.py --batches 1024 --steps 8 --repeats 2 \
    --out_dir "$OUT_DIR"
else
  stage input_modes $(cap 140 235) $PY benchmarks/input_modes.py --rounds 2 --models esmm \
    --batches 1024,16384 --out_dir "$OUT_DIR"
  stage resident_feed $(cap 40 195) $PY benchmarks/resident_feed.py --batches 1024,16384,65536 \
    --steps 64 --repeats 5 --out_dir "$OUT_DIR"
fi

# 3. The sweep (batch in f32 and bf16 up to 65,536, rows, devices, model): one process per
#    (devices, dtype), each point compiled once, in a 90 s box.
if [[ $QUICK == 1 ]]; then
  stage sweep 200 $PY benchmarks/sweep.py --quick --out_dir "$OUT_DIR"
else
  SB=$(( $(cap 120 75) - 30 ))  # 30 s: the last point and the matmul peak
  stage sweep $(( SB + 30 )) $PY benchmarks/sweep.py --budget_s "$SB" --windows 2 --window_s 0.5 \
    --warmup_s 0.5 --skip_roofline --out_dir "$OUT_DIR"
fi

# 4. GPU-relevant tests, on the accelerator: the device metrics (exact AUC sorted there), engine vs
#    dense reference, model math, the PyTorch reference's parity. Matmuls at full f32 precision so
#    the equality tolerances mean the same as on CPU (TF32 would not be a bug of ours); compile-light
#    (most XLA optimisations off, as the flax examples' tests run, and no GEMM autotuning): each
#    test compiles its own small programs, which then run in microseconds.
TESTS="tests/test_device_metrics.py tests/test_engine.py tests/test_model_math.py tests/test_torch_reference.py"
FAST_COMPILE=(JAX_DISABLE_MOST_OPTIMIZATIONS=1)
# Compilation, not the device, is what the tests wait on: on an accelerator host they run in 8
# processes (pytest-xdist, where installed); 25 tests in 75 s in one process on an H200 host.
WORKERS=()
[[ $PLATFORM != cpu ]] && $PY -c "import xdist" 2> /dev/null && WORKERS=(-n 8)
[[ $PLATFORM == cuda ]] && FAST_COMPILE+=("XLA_FLAGS=${XLA_FLAGS:-} --xla_gpu_autotune_level=0")
if $PY -c "import pytest" 2> /dev/null; then
  stage tests $(cap 75 20) env JAX_PLATFORMS=$PLATFORM JAX_DEFAULT_MATMUL_PRECISION=highest "${FAST_COMPILE[@]}" \
    $PY -m pytest -q -p no:cacheprovider "${WORKERS[@]}" $TESTS
else
  log "pytest is not installed: tests skipped"
  printf 'tests\tskipped (no pytest)\t–\t–\n' >> "$OUT_DIR/stages.tsv"
fi

# 5. The evaluation's metrics sorted on the device: the Ali-CCP training half's size (43 M rows) on
#    an accelerator, the host path beside it on CPU.
if [[ $QUICK == 1 || $PLATFORM == cpu ]]; then
  stage eval_metrics 120 $PY benchmarks/eval_metrics.py --rows 200000 --rounds 1 --out_dir "$OUT_DIR"
else
  stage eval_metrics $(cap 35 20) $PY benchmarks/eval_metrics.py --rows 43000000 --rounds 2 --skip_host \
    --out_dir "$OUT_DIR"
fi

# 6. JAX vs PyTorch speed at 1e5 and 1e7 rows (no quality run: that is a CPU-hours question).
if $PY -c "import torch" 2> /dev/null; then
  if [[ $QUICK == 1 ]]; then
    stage compare_torch 150 $PY benchmarks/compare_torch.py --quick --skip_quality --out_dir "$OUT_DIR"
  else
    stage compare_torch $(cap 50 20) $PY benchmarks/compare_torch.py --skip_quality --skip_roofline --rounds 1 \
      --windows 2 --window_s 1 --warmup_s 1 --jax_variants rowwise_adagrad \
      --torch_variants eager-sparse-rowwise_adagrad,compile-dense-adam \
      --out_dir "$OUT_DIR"
  fi
else
  log "torch is not installed: comparison skipped"
  printf 'compare_torch\tskipped (no torch)\t–\t–\n' >> "$OUT_DIR/stages.tsv"
fi

# 7. Start-up with the persistent compilation cache: a first and a second run of the main job.
if [[ $QUICK == 1 ]]; then
  log "skip startup: not in the smoke test (benchmarks/startup.py runs it on its own)"
  printf 'startup\tskipped (smoke test)\t–\t–\n' >> "$OUT_DIR/stages.tsv"
else
  stage startup $(cap 75 20) $PY benchmarks/startup.py --rounds 1 --out_dir "$OUT_DIR"
fi

# 8. Roofline (matmul peaks, towers alone, full step) with what is left (the sweep has its own peak).
stage roofline $(cap 60 0) $PY benchmarks/roofline.py --quick --out_dir "$OUT_DIR"

# 9. What users run: the CLI end to end and the step alone, against PyTorch (its best variant) and
#    (the baseline commit is left out: a CPU-run question, and the time box is for the GPU).
if $PY -c "import torch" 2> /dev/null; then
  if [[ $QUICK == 1 ]]; then
    stage user_path 300 $PY benchmarks/user_path.py --quick --models esm2 --batches 1024 \
      --torch_variants compile-dense-adam --baseline_ref "" --out_dir "$OUT_DIR"
  else
    stage user_path $(cap 70 5) $PY benchmarks/user_path.py --quick --models esmm --batches 1024 \
      --torch_variants compile-dense-adam --baseline_ref "" --worker_timeout 60 --out_dir "$OUT_DIR"
  fi
else
  log "torch is not installed: user_path skipped"
  printf 'user_path\tskipped (no torch)\t–\t–\n' >> "$OUT_DIR/stages.tsv"
fi

# 10. The one summary: headline numbers, the targets judged, every stage's status and results.
$PY benchmarks/accelerator_summary.py "$OUT_DIR" >> "$OUT_DIR/check.log" 2>&1 \
  || log "the summary could not be written (see check.log); stages: $OUT_DIR/stages.tsv"
log "done in $(( $(date +%s) - START ))s: $OUT_DIR/accelerator_check.md"
