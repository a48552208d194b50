#!/usr/bin/env python3
"""Vector files for `vitrine bench-ann` and `scripts/peers/ann_faiss.py`: base.fvecs,
queries.fvecs and truth.ivecs (the exact top-100 by brute force, faiss IndexFlat).

  fashion-mnist  ann-benchmarks' fashion-mnist-784-euclidean: the 60,000 training images
                 as raw 784-d pixels (0..255), the 10,000 test images as queries, L2.
  index          the embeddings of a Vitrine index file (--index, the base) and of a
                 second one (--queries-index, the queries), cosine (unit vectors, IP).
  clustered      --n synthetic 128-d vectors in 1,000 Gaussian clusters, queries drawn
                 the same way, L2.

Needs numpy and faiss-cpu (pip install numpy faiss-cpu).
"""

import argparse
import gzip
import json
import os
import struct

import numpy as np


def write_vecs(path, a):
    a = np.ascontiguousarray(a)
    n, d = a.shape
    out = np.empty((n, d + 1), dtype=a.dtype)
    out.view(np.int32)[:, 0] = d
    out[:, 1:] = a
    out.tofile(path)


def idx_images(path):
    with gzip.open(path) as f:
        magic, n, rows, cols = struct.unpack(">IIII", f.read(16))
        assert magic == 2051, path
        return np.frombuffer(f.read(), dtype=np.uint8).reshape(n, rows * cols).astype(np.float32)


def index_vectors(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"VTRIDX01", f"{path} is not a Vitrine index"
    n = struct.unpack("<Q", data[8:16])[0]
    header = json.loads(data[16 : 16 + n])
    return np.frombuffer(data[16 + n :], dtype="<f4").reshape(header["count"], header["dim"]).copy()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("kind", choices=["fashion-mnist", "index", "clustered"])
    ap.add_argument("--out", required=True, help="folder for base.fvecs, queries.fvecs, truth.ivecs")
    ap.add_argument("--fmnist", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--index")
    ap.add_argument("--queries-index")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    import faiss

    os.makedirs(a.out, exist_ok=True)
    if a.kind == "fashion-mnist":
        base = idx_images(os.path.join(a.fmnist, "train-images-idx3-ubyte.gz"))
        queries = idx_images(os.path.join(a.fmnist, "t10k-images-idx3-ubyte.gz"))
        metric = "l2"
    elif a.kind == "index":
        base = index_vectors(a.index)
        queries = index_vectors(a.queries_index)
        metric = "cosine"
    else:
        rng = np.random.default_rng(a.seed)
        d, clusters = 128, 1000
        centres = rng.standard_normal((clusters, d), dtype=np.float32) * 4.0

        def draw(n):
            c = rng.integers(0, clusters, n)
            return centres[c] + rng.standard_normal((n, d), dtype=np.float32)

        base, queries = draw(a.n), draw(a.queries)
        metric = "l2"
    queries = queries[: a.queries]
    flat = faiss.IndexFlatIP(base.shape[1]) if metric == "cosine" else faiss.IndexFlatL2(base.shape[1])
    flat.add(base)
    _, truth = flat.search(queries, 100)
    write_vecs(os.path.join(a.out, "base.fvecs"), base.astype(np.float32))
    write_vecs(os.path.join(a.out, "queries.fvecs"), queries.astype(np.float32))
    write_vecs(os.path.join(a.out, "truth.ivecs"), truth.astype(np.int32))
    with open(os.path.join(a.out, "meta.json"), "w") as f:
        json.dump({"kind": a.kind, "metric": metric, "base": base.shape, "queries": queries.shape}, f)
    print(f"{a.out}: {base.shape[0]} x {base.shape[1]} base, {queries.shape[0]} queries, {metric}")


if __name__ == "__main__":
    main()
