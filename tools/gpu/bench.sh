#!/usr/bin/env bash
# Side-by-side GPU benchmarks of Coil and mamba_ssm (Triton), run on the GPU machine from the repository root:
#   bash tools/gpu/bench.sh
# Needs gpu-bin/coil.xz (a `--features cuda` build) and gpu-peer/mamba_ssm (see tools/gpu/README.md), python3 with
# torch + triton + einops + transformers. Each shape runs Coil, then the peer, back to back. Writes to $OUT
# (default bench-out/): results.jsonl (one record per measurement, errors included), bench.log (everything the
# commands printed), table.md (tools/gpu/table.py over results.jsonl).
# Environment: BENCH_ONLY=first_call,ssd,train,generate (comma list, default all, run in that order);
# BENCH_DEADLINE_S=560 (stop starting commands after that many seconds, shorten the last ones' timeouts; 0 = none);
# SSD_FORWARD_ONLY=1 (the ssd part times the forward only, on both sides); COIL=/path/to/coil (skip the decompression); PYTHON=python3 (the peer's interpreter);
# PEER_ONLY=first_call,ssd,train,generate (the parts the peer runs in, default all: a later run can measure Coil
# alone where the peer's numbers from an earlier run of the same session stand).
# No `set -e`: one failing or hanging command must not stop the others (each has a timeout).
set -u
cd "$(dirname "$0")/../.." || exit 1

OUT="${OUT:-bench-out}"
mkdir -p "$OUT"
RES="$OUT/results.jsonl"
LOG="$OUT/bench.log"
PY="${PYTHON:-python3}"
ONLY=",${BENCH_ONLY:-first_call,ssd,train,generate},"
DEADLINE_S="${BENCH_DEADLINE_S:-560}"
T0=$(date +%s)
export PYTHONPATH="$PWD/gpu-peer${PYTHONPATH:+:$PYTHONPATH}"
# A fresh Triton cache, so that the peer's first call compiles like on a new machine (and later runs reuse it).
OWN_TRITON_CACHE=""
if [[ -z "${TRITON_CACHE_DIR:-}" ]]; then
  OWN_TRITON_CACHE="/tmp/coil-bench-triton-$T0-$$"
  export TRITON_CACHE_DIR="$OWN_TRITON_CACHE"
fi

log() { echo "$*" | tee -a "$LOG"; }
want() { [[ "$ONLY" == *",$1,"* ]]; }
PEER_PARTS=",${PEER_ONLY:-first_call,ssd,train,generate},"
peer_wanted() { [[ "$PEER_PARTS" == *",$1,"* ]]; }
elapsed() { echo $(( $(date +%s) - T0 )); }

# run_one BENCH SHAPE IMPL TIMEOUT_S [--expect KEY=V1,V2] [--synth FIELD] -- COMMAND...
# Runs COMMAND under `timeout`, appends what it printed to bench.log and its records (collect.py) to results.jsonl.
run_one() {
  local bench=$1 shape=$2 impl=$3 tmo=$4
  shift 4
  local extra=()
  while [[ $# -gt 0 && "$1" != "--" ]]; do extra+=("$1" "$2"); shift 2; done
  shift
  if [[ "$impl" == mamba_ssm ]] && ! peer_wanted "$bench"; then
    log "### SKIP $bench | $shape | $impl (not in PEER_ONLY)"
    return
  fi
  local left=$(( DEADLINE_S - $(elapsed) ))
  if (( DEADLINE_S > 0 && left < 15 )); then
    log "### SKIP $bench | $shape | $impl (deadline ${DEADLINE_S}s reached)"
    python3 tools/gpu/collect.py --bench "$bench" --shape "$shape" --impl "$impl" "${extra[@]}" \
      --skipped "BENCH_DEADLINE_S=${DEADLINE_S} reached" | tee -a "$RES"
    return
  fi
  if (( DEADLINE_S > 0 && left < tmo )); then tmo=$left; fi
  log "### $bench | $shape | $impl | t+$(elapsed)s | timeout ${tmo}s | $*"
  local so se t1 t2 rc wall
  so=$(mktemp) se=$(mktemp)
  t1=$(date +%s.%N)
  timeout -k 10 "$tmo" "$@" >"$so" 2>"$se"
  rc=$?
  t2=$(date +%s.%N)
  wall=$(awk -v a="$t1" -v b="$t2" 'BEGIN { printf "%.3f", b - a }')
  { echo "--- stdout (rc $rc, ${wall}s)"; cat "$so"; echo "--- stderr"; tail -n 200 "$se"; } >>"$LOG"
  python3 tools/gpu/collect.py --bench "$bench" --shape "$shape" --impl "$impl" --rc "$rc" --wall-s "$wall" \
    --timeout-s "$tmo" --stderr "$se" "${extra[@]}" <"$so" | tee -a "$RES"
  rm -f "$so" "$se"
}

log "# tools/gpu/bench.sh $(date -u +%FT%TZ) BENCH_ONLY=${BENCH_ONLY:-all} OUT=$OUT"
log "# $(nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw --format=csv 2>&1 | tr '\n' ';')"
log "# $(nvidia-smi --query-gpu=driver_version,persistence_mode,clocks.max.sm,power.limit --format=csv 2>&1 | tr '\n' ';')"
REV="unknown"
[[ -f gpu-bin/REVISION ]] && REV=$(tr -d '[:space:]' <gpu-bin/REVISION)
log "# coil revision $REV (gpu-bin/REVISION); tree $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
log "# python $($PY -c 'import sys; print(sys.version.split()[0])' 2>&1); peer $(cat gpu-peer/mamba_ssm/__init__.py 2>&1)"
log "# TRITON_CACHE_DIR=$TRITON_CACHE_DIR PYTHONPATH=$PYTHONPATH"
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)
python3 -c 'import json, sys; print(json.dumps({"bench": "env", "gpu": sys.argv[1], "revision": sys.argv[2], "bench_only": sys.argv[3]}))' \
  "${GPU_NAME:-unknown}" "$REV" "${BENCH_ONLY:-all}" | tee -a "$RES"

if [[ -z "${COIL:-}" ]]; then
  COIL=/tmp/coil
  if [[ -f gpu-bin/coil.xz ]]; then
    if xz -dc gpu-bin/coil.xz >"$COIL" && chmod +x "$COIL"; then
      log "# coil: $(ls -l "$COIL" | awk '{print $5}') bytes at $COIL"
    else
      log "# ERROR: could not decompress gpu-bin/coil.xz; every Coil entry will be an error"
    fi
  else
    log "# ERROR: gpu-bin/coil.xz missing; every Coil entry will be an error"
  fi
fi
PEER=("$PY" tools/gpu/peer_bench.py)

# ---- first call: a fresh process, cold, then again with warm caches (Triton cache, page cache)
if want first_call; then
  FC=(--batch 1 --seqlen 8192 --heads 128 --head-dim 64 --groups 8 --state 128 --chunk 128)
  for round in cold warm; do
    # cold: an empty driver cache (CUDA_CACHE_PATH), as the first run after install sees it; warm: the cache the
    # cold round filled.
    [[ $round == cold ]] && CACHE=$(mktemp -d /tmp/coil-cuda-cache-XXXX)
    run_one first_call "NH-8B 1x8192 $round" coil 240 --synth wall_s -- env CUDA_CACHE_PATH="$CACHE" \
      "$COIL" bench ssd "${FC[@]}" --device cuda --iters 1 --warmup 0 --forward-only --json
    run_one first_call "NH-8B 1x8192 $round" mamba_ssm 300 --synth wall_s -- "${PEER[@]}" first-call "${FC[@]}"
  done
fi

# ---- SSD scan alone (mamba_chunk_scan_combined shapes), forward and forward+backward
if want ssd; then
  #       label          B  T    H   P  G N   Q
  for spec in "NH-8B 1x8192:1:8192:128:64:8:128:128" \
              "NH-8B 4x8192:4:8192:128:64:8:128:128" \
              "130M 8x2048:8:2048:24:64:1:128:128"; do
    IFS=: read -r label b t h p g n q <<<"$spec"
    S=(--batch "$b" --seqlen "$t" --heads "$h" --head-dim "$p" --groups "$g" --state "$n" --chunk "$q")
    FWD=()
    [[ "${SSD_FORWARD_ONLY:-0}" == 1 ]] && FWD=(--forward-only)
    run_one ssd "$label" coil 240 -- "$COIL" bench ssd "${S[@]}" "${FWD[@]}" --device cuda --iters 20 --warmup 3 --json
    run_one ssd "$label" mamba_ssm 300 -- "${PEER[@]}" ssd "${S[@]}" "${FWD[@]}" --iters 20 --warmup 3
  done
fi

# ---- training step: fp32 master weights, bf16 autocast/mixed, AdamW + clip, random tokens
if want train; then
  for spec in "130m:mamba2_130m:8" "1.3b:mamba2_1_3b:4"; do
    IFS=: read -r model preset b <<<"$spec"
    run_one train "$model ${b}x2048" coil 300 -- "$COIL" bench train --preset "$preset" --batch "$b" \
      --seq-length 2048 --precision bf16-mixed --device cuda --steps 5 --warmup 2 --json
    run_one train "$model ${b}x2048" mamba_ssm 300 -- "${PEER[@]}" train --model "$model" --batch "$b" \
      --seq-length 2048 --steps 5 --warmup 2
  done
fi

# ---- generation: bf16 weights, greedy, 100-token prompt + 100 new tokens, end to end
if want generate; then
  # A Nemotron-H-shaped hybrid (Mamba2, attention and MLP layers): Coil alone, mamba_ssm has no such model; SSM
  # state in f32 and in bf16.
  run_one generate "nh-4b b={batch} 100+100" coil 300 --expect "batch=1,64" -- "$COIL" bench generate \
    --preset nemotronh_4b --prompt 100 --new-tokens 100 --batch 1,64 --weights bf16 --device cuda --iters 3 --json
  run_one generate "nh-4b b={batch} 100+100 bf16 state" coil 300 --expect "batch=1,64" -- "$COIL" bench generate \
    --preset nemotronh_4b --prompt 100 --new-tokens 100 --batch 1,64 --weights bf16 --state bf16 --device cuda \
    --iters 3 --json
  for spec in "2.7b:mamba2_2_7b:1,64" "130m:mamba2_130m:1"; do
    IFS=: read -r model preset bs <<<"$spec"
    run_one generate "$model b={batch} 100+100" coil 300 --expect "batch=$bs" -- "$COIL" bench generate \
      --preset "$preset" --prompt 100 --new-tokens 100 --batch "$bs" --weights bf16 --device cuda --iters 3 --json
    run_one generate "$model b={batch} 100+100" mamba_ssm 300 --expect "batch=$bs" -- "${PEER[@]}" generate \
      --model "$model" --batch "$bs" --prompt 100 --new-tokens 100 --iters 3
    # The SSM state stored in bf16, as mamba_ssm stores it for a bf16 model (the rows above keep Coil's f32 state).
    [[ $model == 2.7b ]] && run_one generate "2.7b b={batch} 100+100 bf16 state" coil 300 --expect "batch=1,64" -- \
      "$COIL" bench generate --preset mamba2_2_7b --prompt 100 --new-tokens 100 --batch 1,64 --weights bf16 \
      --state bf16 --device cuda --iters 3 --json
  done
fi

log "# done at t+$(elapsed)s"
python3 tools/gpu/table.py "$RES" >"$OUT/table.md" 2>>"$LOG"
cat "$OUT/table.md"
[[ -n "$OWN_TRITON_CACHE" ]] && rm -rf "$OWN_TRITON_CACHE"
exit 0
