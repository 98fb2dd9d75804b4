#!/usr/bin/env bash
# The whole GPU session in one command, run on the GPU machine from the repository root:
#   bash tools/gpu/device_run.sh            (TESTS=0 skips the CUDA tests; BENCH_ONLY as in bench.sh)
# 1. the `#[ignore]`d CUDA tests (carried as xz-compressed test binaries in gpu-bin/tests/), each from its crate's
#    directory so it finds its fixtures; 2. tools/gpu/bench.sh. Logs go to $OUT.
set -u
cd "$(dirname "$0")/../.." || exit 1
OUT="${OUT:-bench-out}"
mkdir -p "$OUT" /tmp/coil-tests
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/tests.log"
if [[ "${TESTS:-1}" == 1 ]]; then
  for f in gpu-bin/tests/*.xz; do
    name=$(basename "$f" .xz)
    xz -dc "$f" >"/tmp/coil-tests/$name" && chmod +x "/tmp/coil-tests/$name"
  done
  # binary:crate dir:test filter:COIL_SSD_KERNEL (mma_sync: the ops tables again with the portable SSD kernel)
  for spec in ops_cuda:crates/ops:: ops_cuda:crates/ops::mma_sync model_cuda:crates/model:: \
    infer_cuda_step:crates/infer:: train_loop:crates/train:cuda_run:; do
    IFS=: read -r bin dir filter kernel <<<"$spec"
    echo "### $bin ($dir) $filter ${kernel:+COIL_SSD_KERNEL=$kernel}" | tee -a "$OUT/tests.log"
    (cd "$dir" && COIL_SSD_KERNEL="$kernel" timeout -k 5 "${TEST_TIMEOUT_S:-150}" "/tmp/coil-tests/$bin" --ignored \
      --nocapture --test-threads 1 $filter) >>"$OUT/tests.log" 2>&1
    echo "### $bin exit $?" | tee -a "$OUT/tests.log"
    grep -E "^test |test result|FAIL|panicked" "$OUT/tests.log" | tail -n 12
  done
fi
[[ "${BENCH:-1}" == 1 ]] && OUT="$OUT" bash tools/gpu/bench.sh
exit 0
