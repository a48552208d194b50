#!/usr/bin/env python3
"""Side-by-side table of `vitrine bench-ann` and ann_faiss.py reports on the same data:
for each (threads, batch), each engine's fastest setting with recall@k >= --target, and the
queries/s ratio (Vitrine / faiss). Each side may be several reports (comma-separated, the
rounds of `ROUNDS=N scripts/bench-ann.sh`): the fastest point over all of them counts."""

import argparse
import json


def best(points, threads, batch, target):
    ok = [p for p in points if p["threads"] == threads and p["batch"] == batch and p["recall"] >= target]
    return max(ok, key=lambda p: p["qps"]) if ok else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ours")
    ap.add_argument("faiss")
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--name", default="")
    a = ap.parse_args()
    def load(paths):
        reports = [json.load(open(p)) for p in paths.split(",")]
        first = dict(reports[0])
        first["points"] = [p for r in reports for p in r["points"]]
        first["build_s"] = min(r["build_s"] for r in reports)
        return first, len(reports)

    (ours, rounds), (peer, _) = load(a.ours), load(a.faiss)
    print(f"### {a.name or a.ours}: {ours['base']} x {ours['dim']}, {ours['queries']} queries, {ours['metric']}, recall@{ours['k']} >= {a.target}"
          + (f", best of {rounds} alternating rounds" if rounds > 1 else ""))
    print()
    print(f"build: Vitrine ({ours['engine']}) {ours['build_s']:.1f} s, {ours['graph_memory_mb']:.0f} MB; "
          f"faiss ({peer['engine']}) {peer['build_s']:.1f} s, {peer['graph_memory_mb']:.0f} MB (RSS growth)")
    if "huge_pages" in ours:
        print()
        print(f"huge pages: Vitrine {'asks for them' if ours['huge_pages'] else 'off'}; "
              f"system THP mode {ours.get('thp')} (Vitrine run), {peer.get('thp')} (faiss run)")
    print()
    print("| threads | batch | Vitrine ef | recall | q/s | faiss ef | recall | q/s | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    keys = sorted({(p["threads"], p["batch"]) for p in ours["points"]})
    for t, b in keys:
        o, f = best(ours["points"], t, b, a.target), best(peer["points"], t, b, a.target)
        cell = lambda p: f"{p['ef']} | {p['recall']:.4f} | {p['qps']:,.0f}" if p else "— | — | —"
        ratio = f"{o['qps'] / f['qps']:.2f}×" if o and f else "—"
        print(f"| {t} | {b} | {cell(o)} | {cell(f)} | {ratio} |")
    if ours.get("filtered"):
        print()
        print("| filter passes | items | route | ef | recall vs exact filtered | q/s (1 thread) |")
        print("|---|---|---|---|---|---|")
        for p in ours["filtered"]:
            print(f"| {p['share']:.1%} | {p['items_passing']} | {p['route']} | {p['ef']} | {p['recall']:.4f} | {p['qps']:,.0f} |")


if __name__ == "__main__":
    main()
