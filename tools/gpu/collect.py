"""Turns one benchmark command's stdout into records for results.jsonl (tools/gpu/bench.sh calls it per command).

Usage: python3 tools/gpu/collect.py --bench ssd --shape "NH-8B 1x8192" --impl coil --rc 0 [--wall-s 3.2]
         [--timeout-s 240] [--stderr FILE] [--expect batch=1,64] [--synth wall_s] < stdout_of_the_command

Every JSON object line on stdin becomes one record: the command's own fields, plus "bench", "shape" and "impl" as
the harness names them (a differing original goes to "bench_raw"/"impl_raw"), "rc" and "cmd_wall_s". `--shape`
may name record fields, e.g. "2.7b b={batch}". A command that printed nothing, or printed nothing for one of the
`--expect` values, gets an error record, so the table shows "error" instead of silently dropping a row.
`--synth wall_s` (first-call timing) writes exactly one record whose "wall_s" is the command's wall time.
Stdlib only; prints the records, one JSON line each, on stdout.
"""
import argparse
import json
import sys


class Fields(dict):
    def __missing__(self, key):
        return "?"


def error_text(rc, timeout_s, stderr_path, skipped=None):
    if skipped:
        return f"skipped: {skipped}"
    if rc in (124, 137) and timeout_s:
        msg = f"timeout after {timeout_s:g} s (rc {rc})"
    elif rc == 127:
        msg = "command not found (rc 127)"
    elif rc == 126:
        msg = "command not executable (rc 126)"
    elif rc != 0:
        msg = f"exit status {rc}"
    else:
        msg = "no JSON record on stdout"
    tail = last_line(stderr_path)
    return f"{msg}: {tail}" if tail else msg


def last_line(path):
    if not path:
        return ""
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def parse_records(lines):
    out = []
    for ln in lines:
        ln = ln.strip()
        if not ln.startswith("{"):
            continue
        try:
            obj = json.loads(ln)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def normalise(raw, a):
    rec = dict(raw)
    for key, want in (("bench", a.bench), ("impl", a.impl)):
        have = rec.get(key)
        if have is not None and have != want:
            rec[key + "_raw"] = have
        rec[key] = want
    rec["shape"] = a.shape.format_map(Fields(raw))
    rec["rc"] = a.rc
    if a.wall_s is not None:
        rec["cmd_wall_s"] = a.wall_s
    return rec


def collect(a, lines):
    raw = parse_records(lines)
    base = {"bench": a.bench, "impl": a.impl, "rc": a.rc}
    if a.wall_s is not None:
        base["cmd_wall_s"] = a.wall_s
    if a.synth:
        rec = {**base, "shape": a.shape.format_map(Fields()), a.synth: a.wall_s}
        inner = [r for r in raw if "error" not in r]
        errs = [r["error"] for r in raw if "error" in r]
        if inner:
            rec["inner"] = inner[-1]
        if a.rc != 0 or errs or a.wall_s is None or a.skipped:
            rec["error"] = errs[-1] if errs else error_text(a.rc, a.timeout_s, a.stderr, a.skipped)
        return [rec]
    recs = [normalise(r, a) for r in raw]
    if a.expect:
        key, _, vals = a.expect.partition("=")
        for v in [v.strip() for v in vals.split(",") if v.strip()]:
            if not any(str(r.get(key)) == v for r in recs):
                val = int(v) if v.lstrip("-").isdigit() else v
                fields = Fields({key: val})
                recs.append({**base, key: val, "shape": a.shape.format_map(fields),
                             "error": error_text(a.rc, a.timeout_s, a.stderr, a.skipped)})
    elif not recs:
        recs.append({**base, "shape": a.shape.format_map(Fields()),
                     "error": error_text(a.rc, a.timeout_s, a.stderr, a.skipped)})
    return recs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bench", required=True)
    p.add_argument("--shape", required=True)
    p.add_argument("--impl", required=True)
    p.add_argument("--rc", type=int, default=0)
    p.add_argument("--wall-s", type=float)
    p.add_argument("--timeout-s", type=float)
    p.add_argument("--stderr", help="the command's stderr file (its last line goes into error records)")
    p.add_argument("--expect", help="KEY=V1,V2: one record per value is expected (error records for the missing)")
    p.add_argument("--synth", help="write one record with this field set to --wall-s")
    p.add_argument("--skipped", help="the command did not run; write error records with this reason")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    recs = collect(a, [] if a.skipped else sys.stdin)
    for r in recs:
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
