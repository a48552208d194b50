#!/usr/bin/env python3
"""Cost of one catalogue write through `vitrine serve`, at a given catalogue size.

Takes an index built by `vitrine index build` (for its dimension and model), pads it with
synthetic unit vectors to --items items, starts `vitrine serve --search` on it, then times
--writes adds (POST /v1/catalog/items) and as many deletes, one at a time over HTTP.
Prints one JSON line: items, median / p90 / max milliseconds per add and per delete, the
log's size, and the bytes of the index file. O(1) writes show the same medians at 10k and
1M items; the max shows a compaction or device-copy refresh when one falls in the run.

  python3 scripts/bench-catalog-writes.py --index runs/x/catalog.index --items 1000000
"""

import argparse
import base64
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib


def read_index(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"VTRIDX01", f"{path} is not a Vitrine index"
    n = struct.unpack("<Q", data[8:16])[0]
    header = json.loads(data[16 : 16 + n])
    return header, data[16 + n :]


def write_index(path, template, items, dim, seed):
    """A base file in the VTRIDX01 format with `items` random unit vectors."""
    import numpy as np  # pip install numpy

    v = np.random.default_rng(seed).standard_normal((items, dim), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    block = v.astype("<f4").tobytes()
    metas = [{"id": f"s{i}", "attrs": {"colour": ("dark", "light")[i % 2]}} for i in range(items)]
    header = {
        "dim": dim,
        "count": items,
        "model": template["model"],
        "columns": ["colour"],
        "items": metas,
        "crc32": zlib.crc32(block),
        "log_id": 0,
    }
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(b"VTRIDX01" + struct.pack("<Q", len(h)) + h + block)


def png(seed, side=28):
    """A small grey PNG, different per seed."""
    rng = random.Random(seed)
    rows = b"".join(b"\x00" + bytes(rng.randrange(256) for _ in range(side)) for _ in range(side))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def request(method, url, body=None):
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        r.read()
        status = r.status
    return status, (time.perf_counter() - start) * 1000.0


def pct(xs, q):
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", required=True, help="an index built by `vitrine index build`")
    ap.add_argument("--items", type=int, default=10000)
    ap.add_argument("--writes", type=int, default=200)
    ap.add_argument("--bin", default="target/release/vitrine")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--run", help="the search run to serve with (default: the one the index records)")
    a = ap.parse_args()

    template, _ = read_index(a.index)
    if a.run:
        template["model"]["run"] = os.path.abspath(a.run)
    dim = template["dim"]
    work = tempfile.mkdtemp(prefix="vitrine-writes-")
    path = os.path.join(work, "catalog.index")
    write_index(path, template, a.items, dim, a.seed)
    base_bytes = os.path.getsize(path)

    srv = subprocess.Popen(
        [a.bin, "serve", "--bind", "127.0.0.1:0", "--search", path],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = None
    lines = []

    def drain():
        for line in srv.stdout:
            lines.append(line)

    for line in srv.stdout:
        lines.append(line)
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if m:
            base = f"http://127.0.0.1:{m.group(1)}"
            break
    threading.Thread(target=drain, daemon=True).start()
    if base is None:
        sys.exit("server did not start:\n" + "".join(lines))
    t0 = time.time()
    while True:
        try:
            if request("GET", base + "/readyz")[0] == 200:
                break
        except Exception:
            pass
        if srv.poll() is not None or time.time() - t0 > 600:
            sys.exit("server not ready:\n" + "".join(lines))
        time.sleep(0.05)
    ready_s = time.time() - t0

    adds, deletes = [], []
    try:
        for i in range(a.writes):
            body = json.dumps({"id": f"w{i}", "image": base64.b64encode(png(i)).decode()}).encode()
            status, ms = request("POST", base + "/v1/catalog/items", body)
            assert status == 201, status
            adds.append(ms)
        for i in range(a.writes):
            # Half the deletes hit the new items, half the original catalogue (row moves).
            victim = f"w{i}" if i % 2 == 0 else f"s{i * 7919 % a.items}"
            status, ms = request("DELETE", base + f"/v1/catalog/items/{victim}")
            assert status == 200, status
            deletes.append(ms)
    finally:
        srv.terminate()
        srv.wait(timeout=60)
    log = path + ".log"
    out = {
        "items": a.items,
        "dim": dim,
        "writes": a.writes,
        "index_file_bytes": base_bytes,
        "ready_s": round(ready_s, 2),
        "add_ms": {"median": pct(adds, 0.5), "p90": pct(adds, 0.9), "max": round(max(adds), 2)},
        "delete_ms": {"median": pct(deletes, 0.5), "p90": pct(deletes, 0.9), "max": round(max(deletes), 2)},
        "log_bytes_after": os.path.getsize(log) if os.path.exists(log) else None,
    }
    print(json.dumps(out))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
