#!/usr/bin/env python3
"""Pairs the rows of two benchmark reports (same schema: `vitrine bench --out`,
scripts/bench.sh, scripts/peers/bench_torch.py) and prints a Markdown table of the
throughput ratio, ours / peer (> 1: Vitrine is faster).

    python3 scripts/peers/compare.py bench-results.json peer-torch.json [DEVICE]

DEVICE picks one report of a multi-device bench-results.json (default: the first).
"""
import json
import sys


def load(path, device=None):
    with open(path) as f:
        doc = json.load(f)
    reports = doc if isinstance(doc, list) else [doc]
    for r in reports:
        if device is None or r["device"] == device:
            return r
    sys.exit(f"{path} has no report for device {device!r}")


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    ours = load(sys.argv[1], sys.argv[3] if len(sys.argv) == 4 else None)
    peer = load(sys.argv[2])
    if ours["precision"] != peer["precision"]:
        sys.exit(f"precision differs: {ours['precision']} vs {peer['precision']}")
    theirs = {(r["group"], r["workload"], r["batch"]): r for r in peer["results"]}
    print(f"Vitrine ({ours['backend']}, {ours['machine']['threads']} threads) vs "
          f"{peer['backend']} ({peer['machine']['threads']} threads), same machine.\n")
    print("| group | workload | batch | Vitrine | peer | Vitrine / peer |")
    print("|---|---|---:|---:|---:|---:|")
    for r in ours["results"]:
        p = theirs.get((r["group"], r["workload"], r["batch"]))
        if p is None:
            continue
        ratio = r["throughput"] / p["throughput"]
        print(f"| {r['group']} | {r['workload']} | {r['batch']} | "
              f"{r['throughput']:,.1f} {r['unit']} | {p['throughput']:,.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
