#!/usr/bin/env bash
# Kernel lab run on the GPU machine (repository root): the standalone SSD-forward harness (checks against a
# float64 scan, compute-sanitizer, timings) and mamba_ssm's SSD forward+backward on the same shapes, in one call.
#   bash tools/gpu/kernel_lab.sh        needs gpu-bin/ssd_lab (crates/kernels/dev/ssd_lab.cu, see its header) and
#                                       gpu-peer/mamba_ssm (tools/gpu/README.md); logs to $OUT (default lab-out/).
# LAB_MODE picks the harness mode (default all; sm90: the wgmma kernel only; time: every kernel's timings);
# LAB_SANITIZE=0 skips compute-sanitizer (which runs on the mma.sync and the wgmma kernel); LAB_PEER=0 skips the peer.
set -u
cd "$(dirname "$0")/../.." || exit 1
OUT="${OUT:-lab-out}"
mkdir -p "$OUT"
LOG="$OUT/lab.log"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv | tee "$LOG"
for mode in ${LAB_MODE:-all}; do
  echo "### ssd_lab $mode" | tee -a "$LOG"
  timeout 300 gpu-bin/ssd_lab "$mode" 2>&1 | tee -a "$LOG"
done
if [[ "${LAB_SANITIZE:-1}" == 1 ]]; then
  for sm90 in "" 1; do
    for tool in memcheck racecheck; do
      echo "### compute-sanitizer --tool $tool ssd_lab tiny ${sm90:+(wgmma)}" | tee -a "$LOG"
      SSD_LAB_SM90=$sm90 timeout 240 compute-sanitizer --tool "$tool" gpu-bin/ssd_lab tiny 2>&1 | tail -n 15 | tee -a "$LOG"
    done
  done
fi
if [[ "${LAB_PEER:-1}" == 1 ]]; then
  export PYTHONPATH="$PWD/gpu-peer${PYTHONPATH:+:$PYTHONPATH}" TRITON_CACHE_DIR=/tmp/lab-triton
  for spec in "1:8192:128:64:8:128:128" "4:8192:128:64:8:128:128" "8:2048:24:64:1:128:128"; do
    IFS=: read -r b t h p g n q <<<"$spec"
    echo "### peer ssd B$b T$t H$h P$p G$g N$n Q$q" | tee -a "$LOG"
    timeout 300 python3 tools/gpu/peer_bench.py ssd --batch "$b" --seqlen "$t" --heads "$h" --head-dim "$p" \
      --groups "$g" --state "$n" --chunk "$q" --iters 20 --warmup 3 2>>"$OUT/peer.err" | tee -a "$LOG"
  done
fi
grep -E "^check|^time|PASS|FAIL|ERROR SUMMARY|fwd_ms" "$LOG"
