#!/usr/bin/env bash
# The GPU checks of work written without a GPU (2026-12-07, issue 14; crates/kernels/notes/decode.md, next steps,
# item 0), in one device call from the repository root, most important first; stops starting steps LIMIT seconds
# (default 540) after it starts. Logs to $OUT (default pending-out/).
#   1. crates/infer/tests/cuda_step.rs: the HF fixtures on the fused step (the Nemotron-H ones with head_dim-16
#      attention), the batched path's fused launches against the unfused ones, the bf16 state on the batched path;
#      coil-model's CUDA tests and the ragged prefill (the RMSNorm of bf16 activations changed).
#   2. Mamba2-2.7B and Nemotron-H 4B at batch 64 with COIL_DECODE_FUSE=0 and =1, bf16 and f32 state (same run).
#   3. The harness's generate part (tools/gpu/bench.sh, product defaults, mamba_ssm in the same run).
#   4. ncu per-kernel times of the fused 2.7B batch-64 prefill + decode (tools/gpu/ncu_summary.py reads them).
#   5. The attention lab (check, and memcheck on the guard cases: head_dim 16 among them).
# Needs (see tools/gpu/README.md): gpu-bin/coil.xz, gpu-bin/tests/{infer_cuda_step,model_cuda,model_ragged,comm_nccl}.xz
# (the cuda_step, cuda and ragged_prefill test binaries of `cargo test --release --features cuda -p coil-infer
# -p coil-model --no-run`; the nccl test binary of
# `cargo test --release --features cuda -p coil-comm --no-run`), gpu-bin/attn_lab.xz (crates/kernels/dev/attn_lab.cu, see its header), gpu-peer/.
set -u
cd "$(dirname "$0")/../.." || exit 1
OUT="${OUT:-pending-out}"
mkdir -p "$OUT"
T0=$(date +%s)
LIMIT=${LIMIT:-540}
el() { echo "[t+$(( $(date +%s) - T0 ))s]"; }
have() { (( $(date +%s) - T0 + $1 < LIMIT )); }  # time left for a step of about $1 seconds
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,memory.used --format=csv > "$OUT/smi.txt" 2>&1
B=/tmp/coil-pending-bin
mkdir -p "$B"
for f in gpu-bin/tests/*.xz gpu-bin/*.xz; do
  [[ -e "$f" ]] || continue
  n=$(basename "$f" .xz); xz -dc "$f" > "$B/$n" && chmod +x "$B/$n"
done
echo "$(el) 1. tests"
(cd crates/infer && timeout 150 "$B/infer_cuda_step" --ignored --nocapture --test-threads 1 > "$OUT/tests_infer.log" 2>&1
 echo "rc=$?" >> "$OUT/tests_infer.log")
grep -E "test result|FAILED|panicked|gap|equal|same bits|rc=" "$OUT/tests_infer.log" | head -40
if have 80 && [[ -x "$B/model_cuda" ]]; then
  (cd crates/model && timeout 45 "$B/model_cuda" --ignored --test-threads 1 > "$OUT/tests_model_cuda.log" 2>&1
   echo "rc=$?" >> "$OUT/tests_model_cuda.log"
   timeout 30 "$B/model_ragged" --ignored --test-threads 1 > "$OUT/tests_model_ragged.log" 2>&1
   echo "rc=$?" >> "$OUT/tests_model_ragged.log")
  grep -E "test result|FAILED|panicked|rc=" "$OUT/tests_model_cuda.log" "$OUT/tests_model_ragged.log" | head
fi
if have 30 && [[ -x "$B/comm_nccl" ]]; then
  # cudarc opens libnccl.so (or .so.<CUDA major>); torch's wheel ships libnccl.so.2: link it under that name.
  L=$(find / -name 'libnccl.so*' -not -path '/proc/*' 2>/dev/null | head -n 1)
  if [[ -n "$L" ]]; then mkdir -p "$B/nccl" && ln -sf "$L" "$B/nccl/libnccl.so"; fi
  echo "$(el) 1b. NCCL, a group of one ($L)"
  LD_LIBRARY_PATH="$B/nccl${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" timeout 25 "$B/comm_nccl" --ignored \
    > "$OUT/tests_comm_nccl.log" 2>&1
  echo "rc=$?" >> "$OUT/tests_comm_nccl.log"
  grep -E "test result|FAILED|panicked|rc=" "$OUT/tests_comm_nccl.log" | head
fi
for preset in mamba2_2_7b nemotronh_4b; do
  for fuse in 0 1; do
    have 40 || break
    echo "$(el) 2. $preset batch 64 COIL_DECODE_FUSE=$fuse"
    COIL_DECODE_FUSE=$fuse timeout 45 "$B/coil" bench generate --preset $preset --prompt 100 --new-tokens 100 \
      --batch 64 --weights bf16 --state bf16,f32 --device cuda --iters 3 > "$OUT/fuse${fuse}_${preset}_b64.log" 2>&1
    grep -v "^$" "$OUT/fuse${fuse}_${preset}_b64.log" | tail -6
  done
done
if have 200; then
  echo "$(el) 3. harness (generate)"
  COIL="$B/coil" BENCH_ONLY=generate BENCH_DEADLINE_S=$(( LIMIT - $(date +%s) + T0 - 60 )) OUT="$OUT/bench" \
    bash tools/gpu/bench.sh > "$OUT/bench_stdout.log" 2>&1
  cat "$OUT/bench/table.md" 2>/dev/null | head -30
fi
if have 60; then
  echo "$(el) 4. ncu, fused 2.7B batch 64"
  COIL_DECODE_FUSE=1 timeout $(( LIMIT - $(date +%s) + T0 - 30 )) ncu --clock-control none --cache-control none \
    --metrics gpu__time_duration.sum --csv --print-units base --launch-count 2200 "$B/coil" bench generate \
    --preset mamba2_2_7b --prompt 100 --new-tokens 3 --batch 64 --weights bf16 --state bf16 --iters 1 --device cuda \
    > "$OUT/ncu_27b_b64.csv" 2> "$OUT/ncu_27b_b64.err"
  echo "rc=$?" >> "$OUT/ncu_27b_b64.err"
  python3 tools/gpu/ncu_summary.py "$OUT/ncu_27b_b64.csv" --top 25 2>&1 | tee "$OUT/ncu_summary.txt"
fi
if have 30 && [[ -x "$B/attn_lab" ]]; then
  echo "$(el) 5. attention lab"
  timeout 25 "$B/attn_lab" check > "$OUT/attn_check.log" 2>&1; echo "rc=$?" >> "$OUT/attn_check.log"
  grep -c " ok" "$OUT/attn_check.log"; grep -E "FAIL|rc=" "$OUT/attn_check.log" | head -5
  have 25 && timeout 25 compute-sanitizer --tool memcheck "$B/attn_lab" guard > "$OUT/attn_memcheck.log" 2>&1
  tail -2 "$OUT/attn_memcheck.log"
fi
echo "$(el) done"
