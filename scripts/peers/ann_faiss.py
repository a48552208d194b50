#!/usr/bin/env python3
"""faiss HNSW (IndexHNSWFlat, M = 32) on the files of scripts/ann_data.py, measured the way
`vitrine bench-ann` measures the HNSW graph: build time and memory, then recall@k and
queries/s for each efSearch at batch 1 (T client threads, one query per call, faiss on 1
OpenMP thread each) and batch 64 (one call per 64 queries on T OpenMP threads).
Prints the same JSON fields. Needs numpy and faiss-cpu.
"""

import argparse
import json
import os
import resource
import threading
import time

import numpy as np


def read_vecs(path, dtype):
    raw = np.fromfile(path, dtype=dtype)
    d = raw[:1].view(np.int32)[0]
    return raw.reshape(-1, d + 1)[:, 1:].copy()


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def thp_mode():
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
        return text.split("[", 1)[1].split("]", 1)[0]
    except (OSError, IndexError):
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="folder from scripts/ann_data.py")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=128)
    ap.add_argument("--ef", default="16,32,64,128,256")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batch", default="1,64")
    ap.add_argument("--build-threads", type=int, default=2)
    ap.add_argument("--max-queries", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="passes per setting; the fastest counts")
    ap.add_argument("--out")
    a = ap.parse_args()
    import faiss

    meta = json.load(open(os.path.join(a.data, "meta.json")))
    base = read_vecs(os.path.join(a.data, "base.fvecs"), np.float32)
    queries = read_vecs(os.path.join(a.data, "queries.fvecs"), np.float32)
    truth = read_vecs(os.path.join(a.data, "truth.ivecs"), np.int32)
    if a.max_queries:
        queries, truth = queries[: a.max_queries], truth[: a.max_queries]
    cosine = meta["metric"] == "cosine"
    d = base.shape[1]
    metric = faiss.METRIC_INNER_PRODUCT if cosine else faiss.METRIC_L2
    index = faiss.IndexHNSWFlat(d, a.m, metric)
    index.hnsw.efConstruction = a.ef_construction
    faiss.omp_set_num_threads(a.build_threads)
    before = rss_mb()
    t0 = time.perf_counter()
    index.add(base)
    build_s = time.perf_counter() - t0
    memory_mb = rss_mb() - before

    def recall(found):
        hit = sum(len(set(f[: a.k]) & set(t[: a.k])) for f, t in zip(found, truth))
        return hit / (len(found) * a.k)

    points = []
    n = len(queries)
    for ef in [int(x) for x in a.ef.split(",")]:
        index.hnsw.efSearch = ef
        for threads in [int(x) for x in a.threads.split(",")]:
            for batch in [int(x) for x in a.batch.split(",")]:
                found = np.empty((n, a.k), dtype=np.int64)

                def one_pass():
                    if batch == 1:
                        faiss.omp_set_num_threads(1)
                        nxt = [0]
                        lock = threading.Lock()

                        def client():
                            while True:
                                with lock:
                                    q = nxt[0]
                                    nxt[0] += 1
                                if q >= n:
                                    return
                                _, ids = index.search(queries[q : q + 1], a.k)
                                found[q] = ids[0]

                        t0 = time.perf_counter()
                        ts = [threading.Thread(target=client) for _ in range(threads)]
                        for t in ts:
                            t.start()
                        for t in ts:
                            t.join()
                    else:
                        faiss.omp_set_num_threads(threads)
                        t0 = time.perf_counter()
                        for s in range(0, n, batch):
                            _, ids = index.search(queries[s : s + batch], a.k)
                            found[s : s + batch] = ids
                    return n / (time.perf_counter() - t0)

                qps = max(one_pass() for _ in range(max(a.repeat, 1)))
                r = recall(found)
                print(f"faiss: ef {ef:>4}  threads {threads}  batch {batch:>3}  recall@{a.k} {r:.4f}  {qps:>9.0f} q/s", flush=True)
                points.append({"ef": ef, "recall": r, "threads": threads, "batch": batch, "qps": qps})
    report = {
        "engine": f"faiss {faiss.__version__} IndexHNSWFlat",
        # faiss asks for no huge pages itself: it gets them only when the system's THP mode
        # is `always`.
        "thp": thp_mode(),
        "base": base.shape[0],
        "dim": d,
        "queries": n,
        "metric": meta["metric"],
        "k": a.k,
        "connectivity": a.m,
        "expansion_add": a.ef_construction,
        "build_threads": a.build_threads,
        "repeat": a.repeat,
        "build_s": build_s,
        "graph_memory_mb": memory_mb,
        "points": points,
    }
    text = json.dumps(report, indent=2)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
