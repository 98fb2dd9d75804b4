"""CPU smoke test of tools/gpu/peer_bench.py (no GPU): Triton's interpreter runs mamba_ssm's kernels on the CPU.

Checks that the script, its arguments and the mamba_ssm calls fit together; the times it prints mean nothing.
Usage (reference venv plus einops, e.g. `pip install --target /tmp/pyextra einops`):
  TRITON_INTERPRET=1 PYTHONPATH=gpu-peer:/tmp/pyextra $REF_VENV/bin/python tools/gpu/peer_smoke_cpu.py \
      ssd --device cpu --batch 1 --seqlen 64 --heads 4 --head-dim 16 --groups 2 --state 16 --chunk 32 --iters 2
  ... train --device cpu --model tiny --batch 1 --seq-length 64 --chunk 32 --steps 1 --warmup 0      (~1 min)
  ... generate --device cpu --model tiny --batch 1 --prompt 40 --new-tokens 4 --chunk 32 --iters 1  (~1 min)
Without a GPU it patches three CUDA-only calls mamba_ssm makes: torch.cuda.device (a no-op here),
torch.cuda.get_device_properties (an SM count) and Triton's autotuner benchmark (takes the first config).
"""
import contextlib
import os
import sys
import types

import torch
import triton.runtime.autotuner as autotuner

torch.cuda.device = lambda *a, **k: contextlib.nullcontext()
torch.cuda.get_device_properties = lambda *a, **k: types.SimpleNamespace(multi_processor_count=4)
autotuner.Autotuner._bench = lambda self, *a, **k: [1.0, 1.0, 1.0]

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_bench  # noqa: E402

if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("set TRITON_INTERPRET=1 (Triton's CPU interpreter)")
    sys.exit(peer_bench.main(sys.argv[1:]))
