#!/usr/bin/env python3
"""Per-kernel time totals from an Nsight Compute CSV (one duration metric per launch).

Produce the CSV on the GPU machine, for example for a batch-64 prefill and two decode steps:
    ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv --print-units base \
        --launch-count 2200 coil bench generate --preset mamba2_2_7b --prompt 100 --new-tokens 3 --batch 64 \
        --weights bf16 --state bf16 --iters 1 --device cuda > ncu.csv
then here:
    python3 tools/gpu/ncu_summary.py ncu.csv [--from ID] [--to ID] [--top N]

Prints, per kernel name (template arguments dropped), the launches, the total and mean microseconds and the share
of the total, largest first; `--from`/`--to` keep a range of launch IDs (ncu's "ID" column, in launch order), e.g.
the prefill's launches or one decode step's. Each kernel is timed alone under ncu (serialised, no overlap), so the
totals add up to more than a graph replay of the same kernels takes; use them to rank, not as wall time.
"""
import argparse
import collections
import csv
import sys


def rows(path):
    with open(path, newline="") as f:
        lines = f.readlines()
    # The profiled program's own output comes before ncu's CSV; the CSV starts at its header line.
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID",')), len(lines))
    return csv.DictReader(line for line in lines[start:] if not line.startswith("=="))


def short(name):
    # "void foo<...>(args)" -> "foo"; plain C names stay as they are.
    name = name.strip()
    if name.startswith("void "):
        name = name[5:]
    for sep in ("<", "("):
        if sep in name:
            name = name[: name.index(sep)]
    return name


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--from", dest="lo", type=int, default=None, help="first launch ID kept")
    ap.add_argument("--to", dest="hi", type=int, default=None, help="last launch ID kept")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument(
        "--split-at",
        default=None,
        help="report the launches before the first one of this kernel (e.g. embed_bf16: the prefill of "
        "`bench generate`) and from it on (the decode steps) apart",
    )
    a = ap.parse_args(argv)
    launches = []
    for r in rows(a.csv):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        i = int(r["ID"])
        if (a.lo is not None and i < a.lo) or (a.hi is not None and i > a.hi):
            continue
        launches.append((short(r["Kernel Name"]), float(r["Metric Value"].replace(",", ""))))
    if not launches:
        sys.exit(f"{a.csv}: no gpu__time_duration.sum rows in the range")
    parts = [("all", launches)]
    if a.split_at:
        cut = next((i for i, (k, _) in enumerate(launches) if k == a.split_at), len(launches))
        parts = [(f"before {a.split_at}", launches[:cut]), (f"from {a.split_at} on", launches[cut:])]
    for title, part in parts:
        report(title, part, a.top)


def report(title, launches, top):
    total = collections.Counter()
    count = collections.Counter()
    for k, ns in launches:
        total[k] += ns
        count[k] += 1
    grand = sum(total.values()) or 1.0
    print(f"== {title}: {len(launches)} launches, {grand / 1e3:.1f} us in all (each kernel timed alone)")
    print(f"{'kernel':60} {'launches':>8} {'total us':>11} {'mean us':>9} {'share':>6}")
    for k, ns in total.most_common(top):
        print(f"{k[:60]:60} {count[k]:8d} {ns / 1e3:11.1f} {ns / 1e3 / count[k]:9.2f} {ns / grand:6.1%}")


if __name__ == "__main__":
    main()
