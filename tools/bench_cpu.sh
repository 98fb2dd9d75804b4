#!/usr/bin/env bash
# Side-by-side CPU benchmarks of Coil and HF transformers on this machine, interleaved so both see the same
# load. Usage: bash tools/bench_cpu.sh [generate|forward|train|all] (needs target/release/coil and the reference venv
# of ../shared/tools/setup_venv_ref.sh at $REF_VENV or ~/.cache/coil/ref-venv). Prints one JSON line per run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${REF_VENV:-$HOME/.cache/coil/ref-venv}/bin/python"
COIL=target/release/coil
what="${1:-all}"
echo "# $(git rev-parse --short HEAD) $(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for round in 1 2; do
  if [[ "$what" == generate || "$what" == all ]]; then
    $COIL bench generate --preset mamba2_130m --prompt 32 --new-tokens 64 --batch 1,8 --weights bf16,f32 --iters 3 --json
    "$PY" tools/bench_hf_generate.py --prompt 32 --new-tokens 64 --batch 1,8 --iters 3 2>/dev/null
  fi
  if [[ "$what" == forward || "$what" == all ]]; then
    $COIL bench forward --preset mamba2_130m --tokens 512 --chunk-size 256 --iters 5 --json
    "$PY" tools/bench_hf_forward.py --tokens 512 --chunk 256 --iters 5 2>/dev/null
  fi
  if [[ "$what" == train || "$what" == all ]]; then
    $COIL bench train --preset mamba2_130m --batch 4 --seq-length 256 --chunk-size 256 --steps 3 --json
    "$PY" tools/bench_hf_train.py --batch 4 --seq 256 --chunk 256 --steps 3 2>/dev/null
  fi
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
