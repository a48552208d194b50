#!/usr/bin/env python3
"""Pairs the rows of two benchmark reports (same schema: `vitrine bench --out`,
scripts/bench.sh, scripts/peers/bench_torch.py) and prints a Markdown table of the
throughput ratio, ours / peer (> 1: Vitrine is faster).

    python3 scripts/peers/compare.py bench-results.json peer-torch.json
"""
import json
import sys


def load(path):
    with open(path) as f:
        doc = json.load(f)
    return doc[0] if isinstance(doc, list) else doc


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    ours, peer = load(sys.argv[1]), load(sys.argv[2])
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
