"""mamba_ssm (Triton) side of the GPU side-by-side benchmarks that tools/gpu/bench.sh runs beside `coil bench`.

Usage: PYTHONPATH=gpu-peer python3 tools/gpu/peer_bench.py {ssd,train,generate,first-call} [options]
Prints one JSON line per measurement on stdout ("impl": "mamba_ssm"); a measurement that fails prints its
traceback on stderr and a line with an "error" field instead, and the others still run.

The peer is mamba_ssm 2.3.2.post1 unpacked from its sdist (README.md here says how), without its CUDA extensions:
  - `selective_scan_cuda` (Mamba1's scan) is imported unconditionally by mamba_ssm.ops.selective_scan_interface,
    which mamba_ssm.models.mixer_seq_simple reaches through mamba_ssm.modules.mamba_simple. Mamba2 never calls it,
    so a placeholder module stands in for it (`stub_missing_extensions`).
  - `causal_conv1d` is optional: Mamba2 falls back to nn.Conv1d (prefill/training) and torch.roll (decode step).
    Its fused `use_mem_eff_path` needs causal_conv1d's CUDA functions, so the models here set it False.
Everything else the Mamba2 path runs is Triton: SSD chunk scan, gated RMSNorm, fused add+RMSNorm, decode step.

`--device cpu` with TRITON_INTERPRET=1 and `--model tiny` is a smoke test of this script only (no timing value).
"""
import argparse
import json
import statistics
import sys
import time
import traceback
import types

T_START = time.perf_counter()
FAILED = []  # error records emitted; the exit status is 1 when any

# d_model, n_layer of the Mamba2 checkpoints (state-spaces/mamba2-*), which all use d_state 128, headdim 64,
# expand 2, ngroups 1, vocab 50277 padded to a multiple of 16.
MODELS = {"tiny": (128, 2), "130m": (768, 24), "1.3b": (2048, 48), "2.7b": (2560, 64)}
VOCAB = 50277


def emit(rec):
    print(json.dumps(rec), flush=True)


def guarded(base, fn):
    """Runs one measurement; on failure prints the traceback to stderr and emits an error record instead."""
    try:
        rec = fn()
    except Exception as e:  # noqa: BLE001 - a benchmark harness must survive anything one measurement does
        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
        rec = {**base, "error": f"{type(e).__name__}: {e}"[:400]}
        FAILED.append(rec)
        try:
            import torch
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001
            pass
    emit(rec)
    return rec


def stub_missing_extensions():
    """Stand-in for Mamba1's CUDA extension so that mamba_ssm.models.mixer_seq_simple imports (see module doc)."""
    try:
        import selective_scan_cuda  # noqa: F401 - the real one, where installed
    except ImportError:
        mod = types.ModuleType("selective_scan_cuda")

        def missing(name):
            raise AttributeError(f"selective_scan_cuda.{name}: Mamba1's CUDA extension is not installed")

        mod.__getattr__ = missing
        sys.modules["selective_scan_cuda"] = mod


def versions():
    import torch
    import triton
    import mamba_ssm
    return {"peer_version": mamba_ssm.__version__, "torch": torch.__version__, "triton": triton.__version__}


class Timer:
    """Median wall time of a GPU workload: CUDA events on cuda, perf_counter elsewhere (smoke tests)."""

    def __init__(self, device):
        import torch
        self.torch = torch
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def median_ms(self, fn, iters, warmup, before=None):
        for _ in range(warmup):
            if before:
                before()
            fn()
        self.sync()
        times = []
        if self.cuda:
            events = [(self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True))
                      for _ in range(iters)]
            for start, end in events:
                if before:
                    before()
                start.record()
                fn()
                end.record()
            self.sync()
            times = [start.elapsed_time(end) for start, end in events]
        else:
            for _ in range(iters):
                if before:
                    before()
                t = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times)


# ---------------------------------------------------------------------------------------------------- ssd

def ssd_inputs(a, device, requires_grad):
    """Inputs as a Mamba2 layer feeds mamba_chunk_scan_combined in bf16 training (z=None: the gate is applied by
    the gated RMSNorm after the scan). x [B,T,H,P], dt [B,T,H] raw, B/C [B,T,G,N] bf16; A, D, dt_bias fp32 [H]."""
    import math
    import torch
    g = torch.Generator(device="cpu").manual_seed(a.seed)

    def randn(*shape, dtype=torch.bfloat16, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    Bsz, T, H, P, G, N = a.batch, a.seqlen, a.heads, a.head_dim, a.groups, a.state
    x = randn(Bsz, T, H, P)
    dt = randn(Bsz, T, H, scale=0.5)
    # dt_bias as Mamba2 initialises it: softplus^-1 of dt log-uniform in [1e-3, 1e-1].
    dt0 = torch.exp(torch.rand(H, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    dt_bias = (dt0 + torch.log(-torch.expm1(-dt0))).to(device)
    A = -torch.exp(torch.rand(H, generator=g)).to(device)
    B = randn(Bsz, T, G, N)
    C = randn(Bsz, T, G, N)
    D = torch.randn(H, generator=g).to(device)
    leaves = dict(x=x, dt=dt, A=A, B=B, C=C, D=D, dt_bias=dt_bias)
    if requires_grad:
        for t in leaves.values():
            t.requires_grad_(True)
    return leaves


def ssd_call(scan, t, chunk):
    return scan(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk_size=chunk, D=t["D"], z=None,
                dt_bias=t["dt_bias"], dt_softplus=True, return_final_states=False)


def cmd_ssd(a):
    base = {"bench": "ssd", "impl": "mamba_ssm", "batch": a.batch, "seqlen": a.seqlen, "heads": a.heads,
            "head_dim": a.head_dim, "groups": a.groups, "state": a.state, "chunk": a.chunk}

    def run():
        import torch
        stub_missing_extensions()
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as scan
        dev = torch.device(a.device)
        timer = Timer(dev)
        t = ssd_inputs(a, dev, requires_grad=True)
        g = torch.Generator(device="cpu").manual_seed(a.seed + 1)
        dy = torch.randn(a.batch, a.seqlen, a.heads, a.head_dim, generator=g).to(dev, torch.bfloat16)

        def fwd():
            with torch.no_grad():
                ssd_call(scan, t, a.chunk)

        def fwd_bwd():
            ssd_call(scan, t, a.chunk).backward(dy)

        def clear_grads():
            for v in t.values():
                v.grad = None

        # First calls compile and autotune the Triton kernels; the warm-up runs after them.
        fwd()
        if not a.forward_only:
            clear_grads()
            fwd_bwd()
        timer.sync()
        fwd_ms = timer.median_ms(fwd, a.iters, a.warmup)
        out = {**base, **versions(), "iters": a.iters, "fwd_ms": fwd_ms}
        if not a.forward_only:
            out["fwd_bwd_ms"] = timer.median_ms(fwd_bwd, a.iters, a.warmup, before=clear_grads)
        return out

    guarded(base, run)


# ---------------------------------------------------------------------------------------------------- models

def build_model(name, a, device, dtype):
    """MambaLMHeadModel of a Mamba2 checkpoint shape. Embeddings are untied by default (`--tie-embeddings 0`) to
    match Coil's NeMo presets (tie_word_embeddings false), so both sides hold and update the same parameters."""
    import torch
    stub_missing_extensions()
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
    d_model, n_layer = MODELS[name]
    cfg = MambaConfig(d_model=d_model, n_layer=n_layer, vocab_size=VOCAB,
                      ssm_cfg={"layer": "Mamba2", "use_mem_eff_path": False, "chunk_size": a.chunk},
                      rms_norm=True, residual_in_fp32=True, fused_add_norm=a.fused_add_norm,
                      pad_vocab_size_multiple=16, tie_embeddings=a.tie_embeddings)
    torch.manual_seed(0)
    model = MambaLMHeadModel(cfg, device=device, dtype=dtype)
    return model, cfg


def n_params(model):
    return sum(p.numel() for p in model.parameters())  # tied embedding/lm_head counted once


def cmd_train(a):
    base = {"bench": "train", "impl": "mamba_ssm", "model": a.model, "batch": a.batch, "seq_length": a.seq_length,
            "chunk": a.chunk}

    def run(fused_add_norm):
        import torch
        import torch.nn.functional as F
        dev = torch.device(a.device)
        timer = Timer(dev)
        model, _ = build_model(a.model, argparse.Namespace(**{**vars(a), "fused_add_norm": fused_add_norm}), dev,
                               torch.float32)
        model.train()
        params = n_params(model)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1,
                                fused=dev.type == "cuda")
        g = torch.Generator(device="cpu").manual_seed(a.seed)
        ids = torch.randint(0, VOCAB, (a.batch, a.seq_length + 1), generator=g).to(dev)
        inp, tgt = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                logits = model(inp).logits
                loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            return loss.detach()

        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        loss = None
        for i in range(a.warmup + a.steps):
            timer.sync()
            t = time.perf_counter()
            loss = step()
            timer.sync()
            if i >= a.warmup:
                times.append(time.perf_counter() - t)
        med = statistics.median(times)
        rec = {**base, **versions(), "fused_add_norm": fused_add_norm, "tie_embeddings": a.tie_embeddings,
               "params": params, "steps": a.steps,
               "median_s": med, "tokens_per_s": a.batch * a.seq_length / med, "loss": float(loss)}
        if dev.type == "cuda":
            rec["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        return rec

    def run_with_fallback():
        # fused_add_norm is mamba_ssm's own Triton add+RMSNorm (no extension needed) and what its checkpoints use;
        # if it breaks on this Triton, measure the unfused path rather than nothing.
        if not a.fused_add_norm:
            return run(False)
        try:
            return run(True)
        except Exception:  # noqa: BLE001
            traceback.print_exc(file=sys.stderr)
            print("# train: fused_add_norm=True failed; retrying with fused_add_norm=False", file=sys.stderr)
        # Retry outside the except block, so that the failed attempt's frames (and its model) are freed first.
        import gc
        import torch
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return run(False)

    guarded(base, run_with_fallback)


def cmd_generate(a):
    batches = [int(b) for b in str(a.batch).split(",") if b.strip()]
    common = {"bench": "generate", "impl": "mamba_ssm", "model": a.model, "prompt": a.prompt,
              "new_tokens": a.new_tokens}
    state = {}

    def load():
        import torch
        dev = torch.device(a.device)
        model, _ = build_model(a.model, a, dev, torch.bfloat16)
        model.eval()
        state.update(model=model, dev=dev, params=n_params(model))

    try:
        load()
    except Exception as e:  # noqa: BLE001
        traceback.print_exc(file=sys.stderr)
        for b in batches:
            FAILED.append({**common, "batch": b, "error": f"model build: {type(e).__name__}: {e}"[:400]})
            emit(FAILED[-1])
        return

    def run(b):
        import torch
        from mamba_ssm.utils.generation import InferenceParams
        model, dev = state["model"], state["dev"]
        timer = Timer(dev)
        g = torch.Generator(device="cpu").manual_seed(a.seed + b)
        ids = torch.randint(0, VOCAB, (b, a.prompt), generator=g).to(dev)
        max_length = a.prompt + a.new_tokens

        def gen(cg):
            # Greedy (top_k=1); no eos, so exactly max_length - prompt new tokens.
            return model.generate(input_ids=ids, max_length=max_length, top_k=1, cg=cg,
                                  return_dict_in_generate=True, output_scores=False)

        cg = a.cg and dev.type == "cuda"
        out = None
        try:
            out = gen(cg)  # warm-up: Triton compile/autotune and, with cg, the decode CUDA graph capture
        except Exception:  # noqa: BLE001
            if not cg:
                raise
            traceback.print_exc(file=sys.stderr)
            print(f"# generate batch {b}: cg=True failed; retrying with cg=False", file=sys.stderr)
        if out is None:
            cg = False
            if hasattr(model, "_decoding_cache"):
                del model._decoding_cache
            torch.cuda.empty_cache()
            out = gen(cg)
        n_new = out.sequences.shape[1] - a.prompt
        times = []
        for _ in range(a.iters):
            timer.sync()
            t = time.perf_counter()
            gen(cg)
            timer.sync()
            times.append(time.perf_counter() - t)
        seconds = statistics.median(times)

        def prefill():
            with torch.inference_mode():
                ip = InferenceParams(max_seqlen=max_length, max_batch_size=b)
                model(ids, inference_params=ip, num_last_tokens=1)

        prefill_s = timer.median_ms(prefill, a.iters, 1) / 1e3
        return {**common, **versions(), "batch": b, "params": state["params"], "chunk": a.chunk, "cg": cg,
                "fused_add_norm": a.fused_add_norm, "tie_embeddings": a.tie_embeddings,
                "iters": a.iters, "generated": int(n_new), "seconds": seconds,
                "new_tokens_per_s": b * n_new / seconds, "prefill_s": prefill_s}

    for b in batches:
        guarded({**common, "batch": b}, lambda b=b: run(b))


def cmd_first_call(a):
    """The thing bench.sh times from the outside: import, build the NH-8B SSD inputs, one forward, synchronize."""
    base = {"bench": "first_call_inner", "impl": "mamba_ssm"}

    def run():
        import torch
        stub_missing_extensions()
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as scan
        dev = torch.device(a.device)
        t = ssd_inputs(a, dev, requires_grad=False)
        with torch.no_grad():
            ssd_call(scan, t, a.chunk)
        Timer(dev).sync()
        return {**base, "batch": a.batch, "seqlen": a.seqlen, "heads": a.heads,
                "inner_s": time.perf_counter() - T_START}

    guarded(base, run)


# ---------------------------------------------------------------------------------------------------- CLI

def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp):
        sp.add_argument("--device", default="cuda")
        sp.add_argument("--seed", type=int, default=0)

    def ssd_shape(sp):
        # Defaults: one Nemotron-H 8B Mamba layer at 1x8192.
        sp.add_argument("--batch", type=int, default=1)
        sp.add_argument("--seqlen", type=int, default=8192)
        sp.add_argument("--heads", type=int, default=128)
        sp.add_argument("--head-dim", type=int, default=64)
        sp.add_argument("--groups", type=int, default=8)
        sp.add_argument("--state", type=int, default=128)
        sp.add_argument("--chunk", type=int, default=128)

    sp = sub.add_parser("ssd", help="mamba_chunk_scan_combined forward and forward+backward")
    ssd_shape(sp)
    sp.add_argument("--forward-only", action="store_true", help="time the forward only (no backward compile)")
    sp.add_argument("--iters", type=int, default=20)
    sp.add_argument("--warmup", type=int, default=3)
    common(sp)

    def model_flags(sp):
        sp.add_argument("--fused-add-norm", type=int, choices=(0, 1), default=1,
                        help="mamba_ssm's Triton fused residual-add+RMSNorm, no extension needed (default 1)")
        sp.add_argument("--tie-embeddings", type=int, choices=(0, 1), default=0,
                        help="tie lm_head to the embedding (default 0, as Coil's NeMo presets)")

    sp = sub.add_parser("train", help="MambaLMHeadModel training step (fp32 master, bf16 autocast, AdamW)")
    sp.add_argument("--model", choices=["tiny", "130m", "1.3b"], required=True)
    sp.add_argument("--batch", type=int, required=True)
    sp.add_argument("--seq-length", type=int, required=True)
    sp.add_argument("--steps", type=int, default=5)
    sp.add_argument("--warmup", type=int, default=2)
    sp.add_argument("--chunk", type=int, default=128, help="SSD chunk (NeMo's 128; mamba_ssm's default is 256)")
    model_flags(sp)
    common(sp)

    sp = sub.add_parser("generate", help="MambaLMHeadModel.generate, bf16 weights, greedy")
    sp.add_argument("--model", choices=["tiny", "130m", "2.7b"], required=True)
    sp.add_argument("--batch", default="1", help="one batch size or a comma list (one record each)")
    sp.add_argument("--prompt", type=int, default=100)
    sp.add_argument("--new-tokens", type=int, default=100)
    sp.add_argument("--iters", type=int, default=3)
    sp.add_argument("--chunk", type=int, default=128, help="SSD chunk of the prefill")
    sp.add_argument("--cg", type=int, choices=(0, 1), default=1, help="CUDA-graph decode (falls back to 0)")
    model_flags(sp)
    common(sp)

    sp = sub.add_parser("first-call", help="cold import + one NH-8B SSD forward (timed by bench.sh)")
    ssd_shape(sp)
    common(sp)

    a = p.parse_args(argv)
    if a.cmd == "generate":
        try:
            bs = [int(b) for b in a.batch.split(",") if b.strip()]
        except ValueError:
            p.error(f"--batch {a.batch!r}: expected integers separated by commas, e.g. 1,64")
        if not bs or min(bs) < 1:
            p.error(f"--batch {a.batch!r}: expected positive integers")
    for k in ("fused_add_norm", "tie_embeddings", "cg"):
        if hasattr(a, k):
            setattr(a, k, bool(getattr(a, k)))
    return a


def main(argv=None):
    a = parse(argv)
    {"ssd": cmd_ssd, "train": cmd_train, "generate": cmd_generate, "first-call": cmd_first_call}[a.cmd](a)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
