#!/usr/bin/env bash
# Per-kernel times of `coil bench generate` runs on the GPU machine, from the repository root: Nsight Compute
# (each kernel timed alone; the bench opens the profiled range around its timed runs only, so the weights'
# initialisation and the warm-up are not in it) and, where the machine has it, Nsight Systems (the real timeline).
# Needs gpu-bin/coil.xz. Everything goes into $OUT/profile.tgz (the device tool returns at most 8 files); the
# summaries are printed too.
#   CASES="preset:batch ..."   (default "mamba2_2_7b:64 nemotronh_4b:64 mamba2_2_7b:1")
set -u
cd "$(dirname "$0")/../.." || exit 1
OUT="${OUT:-profile-out}"
W=$(mktemp -d)
B=/tmp/coil-profile-bin
mkdir -p "$B"
xz -dc gpu-bin/coil.xz > "$B/coil" && chmod +x "$B/coil"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > "$W/smi.txt" 2>&1
for c in ${CASES:-mamba2_2_7b:64 nemotronh_4b:64 mamba2_2_7b:1}; do
  preset=${c%%:*}; batch=${c##*:}; tag="${preset}_b${batch}"
  args=(bench generate --preset "$preset" --prompt 100 --new-tokens 3 --batch "$batch" --weights bf16 --state bf16
        --iters 1 --device cuda)
  echo "== ncu $tag (prefill of 100 tokens + 2 decode steps, graph nodes timed alone)"
  timeout 240 ncu --profile-from-start off --clock-control none --cache-control none \
    --metrics gpu__time_duration.sum --csv --print-units base "$B/coil" "${args[@]}" > "$W/ncu_$tag.csv" 2> "$W/ncu_$tag.err"
  echo "rc=$?" >> "$W/ncu_$tag.err"
  python3 tools/gpu/ncu_summary.py "$W/ncu_$tag.csv" --top 25 --split-at embed_bf16 2>&1 | tee "$W/ncu_$tag.txt"
  if command -v nsys > /dev/null; then
    echo "== nsys $tag"
    timeout 120 nsys profile --capture-range=cudaProfilerApi --capture-range-end=stop -t cuda -o "$W/nsys_$tag" \
      --force-overwrite true "$B/coil" "${args[@]}" > "$W/nsys_$tag.log" 2>&1
    timeout 60 nsys stats --report cuda_gpu_kern_sum --format csv "$W/nsys_$tag.nsys-rep" > "$W/nsys_$tag.csv" 2>&1
    timeout 60 nsys stats --report cuda_gpu_trace --format csv "$W/nsys_$tag.nsys-rep" > "$W/nsys_trace_$tag.csv" 2>&1
    head -25 "$W/nsys_$tag.csv" | cut -c1-220
    rm -f "$W"/nsys_"$tag".sqlite "$W"/nsys_"$tag".nsys-rep
  fi
done
mkdir -p "$OUT"
tar czf "$OUT/profile.tgz" -C "$W" .
ls -la "$OUT"
