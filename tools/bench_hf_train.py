"""HF transformers side of `coil bench train`: Mamba2-130M shape, random weights, AdamW + clip, CPU, f32.

Usage: python tools/bench_hf_train.py [--batch 4] [--seq 256] [--steps 3] [--chunk 256] [--threads N]
Prints one JSON line (median step time). Needs the reference venv (../shared/tools/setup_venv_ref.sh).
"""
import argparse
import json
import statistics
import time

import torch
from transformers import Mamba2Config, Mamba2ForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--batch", type=int, default=4)
p.add_argument("--seq", type=int, default=256)
p.add_argument("--steps", type=int, default=3)
p.add_argument("--warmup", type=int, default=1)
p.add_argument("--chunk", type=int, default=256)
p.add_argument("--threads", type=int, default=0)
a = p.parse_args()
if a.threads:
    torch.set_num_threads(a.threads)
torch.manual_seed(0)
cfg = Mamba2Config(hidden_size=768, num_hidden_layers=24, num_heads=24, head_dim=64, n_groups=1, state_size=128,
                   vocab_size=50288, chunk_size=a.chunk, expand=2, tie_word_embeddings=False)
model = Mamba2ForCausalLM(cfg).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1)
ids = torch.randint(0, cfg.vocab_size, (a.batch, a.seq + 1))
times = []
for i in range(a.warmup + a.steps):
    t = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = model(ids[:, :-1], labels=ids[:, :-1]).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if i >= a.warmup:
        times.append(time.perf_counter() - t)
med = statistics.median(times)
print(json.dumps({"bench": "train", "impl": "hf-transformers " + __import__("transformers").__version__,
                  "torch": torch.__version__, "threads": torch.get_num_threads(), "batch": a.batch, "seq_length": a.seq,
                  "chunk": a.chunk, "median_s": med, "tokens_per_s": a.batch * a.seq / med}))
