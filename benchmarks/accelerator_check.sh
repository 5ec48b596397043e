#!/usr/bin/env bash
# One prepared command for a GPU (or TPU) machine: environment, GPU-relevant tests, sweep,
# JAX-vs-PyTorch speed, what users run (user_path), roofline -- sized to finish in under 11 minutes,
# results under OUT_DIR.
#
#   bash benchmarks/accelerator_check.sh [OUT_DIR]        # default: $OUT, else ./accelerator_out
#   ESMJAX_CHECK_QUICK=1 bash benchmarks/accelerator_check.sh /tmp/acc   # CPU smoke test (tiny sweep)
#
# Assumes Python with JAX (and PyTorch, for the comparison) preinstalled and no network. esmjax runs
# from this checkout (PYTHONPATH), so nothing is installed; if esmjax's other dependencies (flax,
# optax, grain, ml_collections, ...) are missing they are listed in OUT_DIR/missing.txt, and
# installed from wheels only if ESMJAX_WHEELS names a folder of them (pip --no-index).
# Every stage has its own timeout, a failing stage does not stop the others, and OUT_DIR/summary.md
# says what ran, how long it took and where its output is. Time: every stage's timeout comes out of
# ESMJAX_CHECK_BUDGET_S (default 640 s), so even if every stage ran into its timeout the whole
# check ends within 11 minutes (tests <= 120 s, sweep <= its budget + 60 s, comparison <= 120 s,
# user_path <= 200 s; the first user_path run generates the default synthetic world once).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT_DIR=$(mkdir -p "${1:-${OUT:-$ROOT/accelerator_out}}" && cd "${1:-${OUT:-$ROOT/accelerator_out}}" && pwd)
PY=${PYTHON:-python3}
QUICK=${ESMJAX_CHECK_QUICK:-0}
BUDGET=${ESMJAX_CHECK_BUDGET_S:-640}
START=$(date +%s)
export PYTHONPATH="$ROOT:$ROOT/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # measured peaks; JAX and PyTorch workers take turns
export TF_CPP_MIN_LOG_LEVEL=2
: > "$OUT_DIR/summary.md"

log() { echo "[$(date +%T) +$(( $(date +%s) - START ))s] $*" | tee -a "$OUT_DIR/check.log"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
# stage NAME TIMEOUT_S CMD...: runs with a timeout, logs to OUT_DIR/NAME.log, records the status.
stage() {
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s) rc
  if (( limit < 20 )); then
    log "skip $name: only ${limit}s of the budget left"
    echo "| $name | skipped (budget) | – | – |" >> "$OUT_DIR/summary.md"
    return 0
  fi
  log "start $name (timeout ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  rc=$?
  local dt=$(( $(date +%s) - t0 ))
  local status=ok
  (( rc == 124 || rc == 137 )) && status="timed out"
  (( rc != 0 && rc != 124 && rc != 137 )) && status="failed (exit $rc)"
  log "end $name: $status in ${dt}s"
  echo "| $name | $status | ${dt}s | $name.log |" >> "$OUT_DIR/summary.md"
  tail -n 3 "$OUT_DIR/$name.log" | sed 's/^/    /' | tee -a "$OUT_DIR/check.log"
  return 0
}

{
  echo "# accelerator check ($(date -u +%F\ %T) UTC)"
  echo
  echo "Checkout: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown); output: $OUT_DIR"
  echo
  echo "| stage | status | time | log |"
  echo "|---|---|---|---|"
} >> "$OUT_DIR/summary.md"

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
  echo "| import esmjax | failed | – | import_error.txt |" >> "$OUT_DIR/summary.md"
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

# 2. GPU-relevant tests, on the accelerator: engine vs dense reference, model math, the PyTorch
#    reference's parity. Matmuls at full f32 precision so the equality tolerances mean the same as
#    on CPU (TF32 would not be a bug of ours).
TESTS="tests/test_engine.py tests/test_model_math.py tests/test_torch_reference.py"
if $PY -c "import pytest" 2> /dev/null; then
  T=$(( $(left) - 500 )); (( T > 120 )) && T=120
  stage tests $T env JAX_PLATFORMS=$PLATFORM JAX_DEFAULT_MATMUL_PRECISION=highest \
    $PY -m pytest -q -p no:cacheprovider $TESTS
else
  log "pytest is not installed: tests skipped"
  echo "| tests | skipped (no pytest) | – | – |" >> "$OUT_DIR/summary.md"
fi

# 3. The sweep (batch, rows, devices, dtype, model), in a time box.
if [[ $QUICK == 1 ]]; then
  stage sweep 200 $PY benchmarks/sweep.py --quick --out_dir "$OUT_DIR"
else
  SB=$(( $(left) - 390 ))  # 60 s: the sweep's last point; 125 s: the comparison; 205 s: user_path
  (( SB > 200 )) && SB=200
  stage sweep $(( SB + 60 )) $PY benchmarks/sweep.py --budget_s "$SB" --window_s 1 --warmup_s 1 --out_dir "$OUT_DIR"
fi

# 4. JAX vs PyTorch speed at 1e5 and 1e7 rows (no quality run: that is a CPU-hours question).
if $PY -c "import torch" 2> /dev/null; then
  if [[ $QUICK == 1 ]]; then
    stage compare_torch 150 $PY benchmarks/compare_torch.py --quick --skip_quality --out_dir "$OUT_DIR"
  else
    T=$(( $(left) - 205 )); (( T > 120 )) && T=120
    stage compare_torch $T $PY benchmarks/compare_torch.py --skip_quality --skip_roofline --rounds 1 \
      --windows 2 --window_s 1 --warmup_s 1 --jax_variants rowwise_adagrad \
      --torch_variants eager-sparse-rowwise_adagrad,compile-dense-adam \
      --out_dir "$OUT_DIR"
  fi
else
  log "torch is not installed: comparison skipped"
  echo "| compare_torch | skipped (no torch) | – | – |" >> "$OUT_DIR/summary.md"
fi

# 5. What users run: the CLI end to end and the step alone, against PyTorch (its best variant) and
#    against esmjax at the commit before this round (when the checkout has its history).
if $PY -c "import torch" 2> /dev/null; then
  BASE=284dab9
  git -C "$ROOT" rev-parse --verify -q "$BASE^{commit}" > /dev/null 2>&1 || BASE=""
  [[ -z $BASE ]] && log "no git history here: user_path runs without its baseline"
  if [[ $QUICK == 1 ]]; then
    stage user_path 300 $PY benchmarks/user_path.py --quick --models esm2 --batches 1024 \
      --torch_variants compile-dense-adam --baseline_ref "$BASE" --out_dir "$OUT_DIR"
  else
    T=$(( $(left) - 5 )); (( T > 200 )) && T=200
    stage user_path $T $PY benchmarks/user_path.py --quick --batches 1024 --baseline_ref "$BASE" \
      --torch_variants eager-sparse-rowwise_adagrad,compile-dense-adam --out_dir "$OUT_DIR"
  fi
else
  log "torch is not installed: user_path skipped"
  echo "| user_path | skipped (no torch) | – | – |" >> "$OUT_DIR/summary.md"
fi

# 6. Roofline (matmul peaks, towers alone, full step) with what is left (the sweep has its own).
stage roofline $(( $(left) < 60 ? 0 : $(left) )) $PY benchmarks/roofline.py --quick --out_dir "$OUT_DIR"

{
  echo
  echo "Total: $(( $(date +%s) - START ))s. Results: sweep.{json,md,png}, compare_torch.{json,md,png},"
  echo "user_path.{json,md}, roofline.{json,md} in this folder (where their stage ran); env.txt,"
  echo "check.log, <stage>.log."
  for f in sweep.md compare_torch.md user_path.md roofline.md; do
    [[ -f "$OUT_DIR/$f" ]] && { echo; echo "---"; echo; cat "$OUT_DIR/$f"; }
  done
} >> "$OUT_DIR/summary.md"
log "done in $(( $(date +%s) - START ))s: $OUT_DIR/summary.md"
