#!/usr/bin/env bash
# The GPU checks of work written without a GPU, in one device call from the repository root, most important
# first; stops starting steps LIMIT seconds (default 540) after it starts. Everything goes into $OUT/checks.tgz
# (the device tool returns at most 8 files); the summaries are printed.
# Pending now (2026-12-07, issue 14, crates/kernels/notes/decode.md, next steps): the prefill of a bf16 layer on
# the GPU keeping its activations in bf16 (`COIL_PREFILL_BF16=1`: conv1d and gated RMSNorm kernels reading and
# writing bf16; off by default until this has run).
#   1. Tests: coil-model's CUDA tests (the bf16 chain gives the f32 chain's bits at Mamba2-130M sizes, and tracks
#      the CPU), coil-ops' CUDA case tables (the bf16 conv and norm equal the f32 ones rounded, bit for bit),
#      ragged prefill, coil-infer's fused-step tests.
#   2. A/B in one binary, alternating COIL_PREFILL_BF16=0 and =1: `bench generate` 2.7B and NH-4B at batch 64,
#      2.7B at batch 1 (bf16 state: mamba_ssm's storage).
#   3. Per-kernel profile with the bf16 chain (tools/gpu/profile.sh: ncu, and nsys where present).
# Needs gpu-bin/coil.xz, gpu-bin/tests/{model_cuda,ops_cuda,model_ragged,infer_cuda_step}.xz: the `cuda`,
# `ragged_prefill` and `cuda_step` test binaries of
# `cargo test --release --features cuda -p coil-ops -p coil-model -p coil-infer --no-run` (see tools/gpu/README.md).
set -u
cd "$(dirname "$0")/../.." || exit 1
OUT="${OUT:-pending-out}"
mkdir -p "$OUT"
W=$(mktemp -d)
T0=$(date +%s)
LIMIT=${LIMIT:-540}
el() { echo "[t+$(( $(date +%s) - T0 ))s]"; }
have() { (( $(date +%s) - T0 + $1 < LIMIT )); }  # time left for a step of about $1 seconds
pack() { tar czf "$OUT/checks.tgz" -C "$W" . ; }
trap pack EXIT
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,memory.used --format=csv > "$W/smi.txt" 2>&1
B=/tmp/coil-pending-bin
mkdir -p "$B"
for f in gpu-bin/tests/*.xz gpu-bin/*.xz; do
  [[ -e "$f" ]] || continue
  n=$(basename "$f" .xz); xz -dc "$f" > "$B/$n" && chmod +x "$B/$n"
done
echo "$(el) 1. tests"
t() {  # name, crate dir, timeout, binary args...
  local name=$1 dir=$2 to=$3; shift 3
  [[ -x "$B/$name" ]] || { echo "$name: missing"; return; }
  (cd "$dir" && timeout "$to" "$B/$name" "$@" > "$W/tests_$name.log" 2>&1; echo "rc=$?" >> "$W/tests_$name.log")
  grep -E "test result|FAILED|panicked|rc=" "$W/tests_$name.log" | sed "s/^/$name: /" | head -8
}
t model_cuda crates/model 60 --ignored --nocapture --test-threads 1
grep -E "gap|bf16 on cuda" "$W/tests_model_cuda.log" 2>/dev/null | head -12
have 60 && t ops_cuda crates/ops 100 --ignored --test-threads 1 conv1d_on_cuda gated_rmsnorm_on_cuda ssd_layer_on_cuda
have 40 && t model_ragged crates/model 30 --ignored --test-threads 1
have 150 && t infer_cuda_step crates/infer 120 --ignored --nocapture --test-threads 1
grep -E "gap" "$W/tests_infer_cuda_step.log" 2>/dev/null | head -6
for round in ${ROUNDS:-1 2}; do
  for case in mamba2_2_7b:64 nemotronh_4b:64 mamba2_2_7b:1; do
    preset=${case%%:*}; batch=${case##*:}
    for bf16 in 0 1; do
      have 30 || break 3
      echo "$(el) 2. round $round COIL_PREFILL_BF16=$bf16 $preset batch $batch"
      COIL_PREFILL_BF16=$bf16 timeout 60 "$B/coil" bench generate --preset "$preset" --prompt 100 --new-tokens 100 \
        --batch "$batch" --weights bf16 --state bf16 --device cuda --iters 3 > "$W/ab_${round}_${bf16}_${preset}_b${batch}.log" 2>&1
      grep -E "decode" "$W/ab_${round}_${bf16}_${preset}_b${batch}.log" | tail -1
    done
  done
done
if have 80; then
  echo "$(el) 3. profile"
  COIL_PREFILL_BF16=1 OUT="$W/profile" CASES="mamba2_2_7b:64" timeout $(( LIMIT - $(date +%s) + T0 - 10 )) bash tools/gpu/profile.sh
fi
echo "$(el) done"
