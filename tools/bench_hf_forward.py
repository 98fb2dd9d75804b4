"""HF transformers side of `coil bench forward`: the same shape, random weights, full logits, CPU, f32.

Usage: python tools/bench_hf_forward.py [--tokens 512] [--batch 1] [--iters 5] [--chunk 256] [--threads N]
Prints one JSON line. Shape: Mamba2-130M (hidden 768, 24 layers, 24 heads x 64, 1 group, state 128,
vocab 50288). Needs the reference venv (../shared/tools/setup_venv_ref.sh).
"""
import argparse
import json
import statistics
import time

import torch
from transformers import Mamba2Config, Mamba2ForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--tokens", type=int, default=512)
p.add_argument("--batch", type=int, default=1)
p.add_argument("--iters", type=int, default=5)
p.add_argument("--warmup", type=int, default=1)
p.add_argument("--chunk", type=int, default=256)
p.add_argument("--threads", type=int, default=0)
a = p.parse_args()
if a.threads:
    torch.set_num_threads(a.threads)
torch.manual_seed(0)
cfg = Mamba2Config(hidden_size=768, num_hidden_layers=24, num_heads=24, head_dim=64, n_groups=1, state_size=128,
                   vocab_size=50288, chunk_size=a.chunk, expand=2, tie_word_embeddings=False)
model = Mamba2ForCausalLM(cfg).eval()
ids = torch.randint(0, cfg.vocab_size, (a.batch, a.tokens))
times = []
with torch.inference_mode():
    for i in range(a.warmup + a.iters):
        t = time.perf_counter()
        out = model(ids)
        assert out.logits.shape == (a.batch, a.tokens, cfg.vocab_size)
        if i >= a.warmup:
            times.append(time.perf_counter() - t)
med = statistics.median(times)
print(json.dumps({"bench": "forward", "impl": "hf-transformers " + __import__("transformers").__version__,
                  "torch": torch.__version__, "threads": torch.get_num_threads(), "batch": a.batch, "tokens": a.tokens,
                  "chunk": a.chunk, "median_s": med, "min_s": min(times), "tokens_per_s": a.batch * a.tokens / med}))
