"""HF transformers side of `coil bench generate`: the same shape, random weights, greedy, CPU, f32.

Usage: python tools/bench_hf_generate.py [--prompt 32] [--new-tokens 64] [--batch 1,8] [--iters 3] [--threads N]
Prints one JSON line per batch size. Shape: Mamba2-130M (hidden 768, 24 layers, 24 heads x 64, 1 group,
state 128, vocab 50288, untied). `generate` runs prefill + cached single-token decode; the decode rate is
derived from a run with --new-tokens and one with a single new token (prefill alone). Needs the reference
venv (../shared/tools/setup_venv_ref.sh).
"""
import argparse
import json
import statistics
import time

import torch
from transformers import Mamba2Config, Mamba2ForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--prompt", type=int, default=32)
p.add_argument("--new-tokens", type=int, default=64)
p.add_argument("--batch", default="1,8")
p.add_argument("--iters", type=int, default=3)
p.add_argument("--threads", type=int, default=0)
a = p.parse_args()
if a.threads:
    torch.set_num_threads(a.threads)
torch.manual_seed(0)
cfg = Mamba2Config(hidden_size=768, num_hidden_layers=24, num_heads=24, head_dim=64, n_groups=1, state_size=128,
                   vocab_size=50288, chunk_size=256, expand=2, tie_word_embeddings=False)
model = Mamba2ForCausalLM(cfg).eval()


def timed(ids, new):
    t = time.perf_counter()
    out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, use_cache=True,
                         pad_token_id=0)
    s = time.perf_counter() - t
    assert out.shape == (ids.shape[0], ids.shape[1] + new), out.shape
    return s


with torch.inference_mode():
    for b in [int(x) for x in a.batch.split(",")]:
        ids = torch.randint(0, cfg.vocab_size, (b, a.prompt))
        timed(ids, 2)  # warm-up
        full = statistics.median(timed(ids, a.new_tokens) for _ in range(a.iters))
        prefill = statistics.median(timed(ids, 1) for _ in range(a.iters))
        decode = max(full - prefill, 1e-9)
        print(json.dumps({
            "bench": "generate", "impl": "hf-transformers " + __import__("transformers").__version__,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "batch": b, "prompt": a.prompt,
            "new_tokens": a.new_tokens, "generate_s": full, "prefill_s": prefill,
            "decode_tokens_per_s": b * (a.new_tokens - 1) / decode,
            "end_to_end_new_tokens_per_s": b * a.new_tokens / full,
        }), flush=True)
