"""Markdown table of a tools/gpu/bench.sh run: Coil beside mamba_ssm, with the speed ratio (> 1: Coil faster).

Usage: python3 tools/gpu/table.py OUT/results.jsonl [more results.jsonl ...]   (stdlib only)
Rows keep the order of the first record of each (bench, shape). Per (bench, shape, impl) the last record without an
error wins; a side with only error records shows "error", a side with no record "—".
"""
import json
import sys

PEAK_BF16_FLOPS = 989e12  # H200 (SXM) dense BF16 tensor-core peak, no sparsity
IMPLS = ("coil", "mamba_ssm")

# bench -> rows of (label, coil field, peer field, unit, lower_is_better)
ROWS = {
    "first_call": [("first call (fresh process)", "wall_s", "wall_s", "s", True)],
    "ssd": [("ssd fwd", "fwd_ms", "fwd_ms", "ms", True),
            ("ssd fwd+bwd", "fwd_bwd_ms", "fwd_bwd_ms", "ms", True)],
    "train": [("train step", "tokens_per_s", "tokens_per_s", "tok/s", False),
              ("train MFU", "mfu", "mfu", "%", False)],
    "generate": [("generate end-to-end", "end_to_end_new_tokens_per_s", "new_tokens_per_s", "new tok/s", False)],
}


def load(paths):
    recs = []
    for path in paths:
        with open(path, errors="replace") as f:
            for ln in f:
                ln = ln.strip()
                if not ln.startswith("{"):
                    continue
                try:
                    r = json.loads(ln)
                except json.JSONDecodeError:
                    continue
                if isinstance(r, dict) and "bench" in r:
                    recs.append(r)
    return recs


def number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x and x not in (float("inf"), -float("inf"))


def mfu(r):
    tps, params = r.get("tokens_per_s"), r.get("params")
    if number(tps) and number(params):
        return tps * 6 * params / PEAK_BF16_FLOPS
    return None


def pick(recs):
    """(bench, shape) -> impl -> record; keeps first-seen order of (bench, shape)."""
    table = {}
    for r in recs:
        key = (r.get("bench"), r.get("shape", "?"))
        impl = r.get("impl")
        if key[0] not in ROWS or impl not in IMPLS:
            continue
        slot = table.setdefault(key, {})
        old = slot.get(impl)
        if old is None or "error" not in r or "error" in old:
            slot[impl] = r
    return table


def fmt(v, unit):
    if unit == "%":
        return f"{100 * v:.1f}%"
    if unit == "ms":
        return f"{v:.3g} ms" if v < 1000 else f"{v:,.0f} ms"
    if unit == "s":
        return f"{v:.3g} s" if v < 1000 else f"{v:,.0f} s"
    return f"{v:,.0f} {unit}" if v >= 100 else f"{v:.3g} {unit}"


def cell(r, field, unit):
    if r is None:
        return "—", None
    if "error" in r:
        return "error", None
    v = mfu(r) if field == "mfu" else r.get(field)
    return (fmt(v, unit), v) if number(v) else ("—", None)


def render(recs):
    table = pick(recs)
    out = []
    env = [r for r in recs if r.get("bench") == "env"]
    if env:
        e = env[-1]
        out.append(f"GPU: {e.get('gpu', '?')}; Coil revision {e.get('revision', '?')}.")
        out.append("")
    out.append("| benchmark | shape | Coil | mamba_ssm | Coil/peer speed ratio |")
    out.append("|---|---|---|---|---|")
    notes = set()
    for (bench, shape), sides in table.items():
        for label, cf, pf, unit, lower in ROWS[bench]:
            c_txt, c = cell(sides.get("coil"), cf, unit)
            p_txt, p = cell(sides.get("mamba_ssm"), pf, unit)
            if c is not None and p is not None and c > 0 and p > 0:
                ratio = f"{(p / c if lower else c / p):.2f}x"
            else:
                ratio = "—"
            out.append(f"| {label} | {shape} | {c_txt} | {p_txt} | {ratio} |")
        peer = sides.get("mamba_ssm") or {}
        if bench == "train":
            notes.add("mfu")
            if peer.get("fused_add_norm") is False:
                notes.add("unfused")
        if bench == "generate" and peer.get("cg") is False:
            notes.add("nocg")
    out.append("")
    out.append("Ratio > 1 means Coil is faster: mamba_ssm time / Coil time for ms and s, "
               "Coil tok/s / mamba_ssm tok/s for throughput.")
    if "mfu" in notes:
        params = []
        for (bench, shape), sides in table.items():
            if bench == "train":
                ps = [f"{impl} {sides[impl]['params'] / 1e6:,.1f}M" for impl in IMPLS
                      if impl in sides and number(sides[impl].get("params"))]
                if ps:
                    params.append(f"{shape}: " + ", ".join(ps))
        out.append("MFU = tokens/s × 6 × params / 989e12 (H200 dense BF16 peak, no sparsity), params as each side "
                   "counts them" + (" (" + "; ".join(params) + ")" if params else "") + ".")
    if any(b == "generate" for b, _ in table):
        out.append("Generate: new tokens/s end to end (prefill of the prompt included) over the whole batch; "
                   "greedy, bf16 weights, random weights and prompt.")
    if any(b == "first_call" for b, _ in table):
        out.append("First call: wall time of a fresh process that loads, compiles what it needs and runs one "
                   "NH-8B SSD forward at 1x8192 (cold: first run on the machine with an empty Triton cache; warm: "
                   "the same again).")
    if "unfused" in notes:
        out.append("mamba_ssm training ran with fused_add_norm=False for at least one entry (bench.sh asks for True; "
                   "peer_bench.py falls back when mamba_ssm's Triton add+RMSNorm fails).")
    if "nocg" in notes:
        out.append("mamba_ssm generation ran without CUDA graphs (cg=True failed) for at least one entry.")
    out.append("mamba_ssm runs without its CUDA extensions (causal_conv1d, selective_scan_cuda): Triton kernels for "
               "the SSD scan and norms, nn.Conv1d for the convolution, use_mem_eff_path=False; its models use SSD "
               "chunk 128 and untied embeddings like Coil's NeMo presets.")
    return "\n".join(out)


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    print(render(load(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
