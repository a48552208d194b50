#!/usr/bin/env python3
"""The workloads of `vitrine bench` in PyTorch, for a same-machine comparison.

Same architectures and shapes as the Rust suite (crates/vitrine-bench), the same timing
rule (warm-up, then repeats until both a count and a time are reached; medians), and the
same JSON schema, so `scripts/peers/compare.py` can pair the rows. Optional: needs
`pip install torch` (CPU wheels are enough), and `transformers` for the text-encoder rows
(Hugging Face's own BertModel, as a user would run all-MiniLM-L6-v2; skipped without it).
Run with the thread count you want compared:

    python3 scripts/peers/bench_torch.py --threads 2 --out peer-torch.json
    python3 scripts/peers/compare.py bench-results.json peer-torch.json

`--device cuda` runs the models on the GPU (compare with `vitrine bench --device cuda`):
each batch is uploaded inside the timed call, as Vitrine's timing includes its upload, and
the GPU is synchronised before each timer stops. Matmuls stay f32 (TF32 off), as Vitrine's
f32 rows; `--tf32` allows TF32 as PyTorch users often do.
"""
import argparse
import json
import math
import os
import platform
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------- models


class Cnn(nn.Module):
    """crates/vitrine-models/src/cnn.rs with depths 0, max-pool downsampling, no norm."""

    def __init__(self, in_ch, size, widths, flatten, embed_dim=128):
        super().__init__()
        self.convs = nn.ModuleList()
        prev = in_ch
        for w in widths:
            self.convs.append(nn.Conv2d(prev, w, 3, padding=1))
            prev = w
        factor = 2 ** (len(widths) - 1)
        cells = (size[0] // factor) * (size[1] // factor)
        self.flatten = flatten
        self.head = nn.Linear(prev * cells if flatten else prev, embed_dim)

    def tokens(self, x):
        for i, conv in enumerate(self.convs):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = F.relu(conv(x))
        return x

    def forward(self, x):
        x = self.tokens(x)
        x = x.flatten(1) if self.flatten else x.mean((2, 3))
        return F.normalize(self.head(x), dim=1)


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.h = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def split(self, x):
        b, t, d = x.shape
        return x.view(b, t, self.h, d // self.h).transpose(1, 2)

    def forward(self, x, memory=None, causal=False, past=None):
        b, t, d = x.shape
        q = self.split(self.q(x))
        src = x if memory is None else memory
        k, v = self.split(self.k(src)), self.split(self.v(src))
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal and t > 1)
        return self.o(y.transpose(1, 2).reshape(b, t, d)), (k, v)


class Block(nn.Module):
    """crates/vitrine-models/src/transformer.rs: pre-LN, optional cross-attention."""

    def __init__(self, d, heads, gelu_tanh, cross=False, eps=1e-5):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d, eps=eps), nn.LayerNorm(d, eps=eps)
        self.attn = Attention(d, heads)
        self.cross = Attention(d, heads) if cross else None
        self.ln_x = nn.LayerNorm(d, eps=eps) if cross else None
        self.fc_in, self.fc_out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.approx = "tanh" if gelu_tanh else "none"

    def forward(self, x, causal, memory=None, past=None):
        a, kv = self.attn(self.ln_1(x), causal=causal, past=past)
        x = x + a
        if self.cross is not None:
            x = x + self.cross(self.ln_x(x), memory=memory)[0]
        x = x + self.fc_out(F.gelu(self.fc_in(self.ln_2(x)), approximate=self.approx))
        return x, kv


class Vit(nn.Module):
    def __init__(self, size, patch, d, layers, heads, embed_dim, cls_pool):
        super().__init__()
        self.p = patch
        n = (size[0] // patch) * (size[1] // patch)
        self.patch_embed = nn.Linear(3 * patch * patch, d)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, n + 1, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, heads, False, eps=1e-6) for _ in range(layers))
        self.ln = nn.LayerNorm(d, eps=1e-6)
        self.head = nn.Linear(d, embed_dim)
        self.cls_pool = cls_pool

    def forward(self, x):
        b, c, h, w = x.shape
        p = self.p
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        x = self.patch_embed(x.reshape(b, (h // p) * (w // p), c * p * p))
        x = torch.cat([self.cls.expand(b, -1, -1), x], 1) + self.pos
        for blk in self.blocks:
            x = blk(x, False)[0]
        x = self.ln(x)
        pooled = x[:, 0] if self.cls_pool else x[:, 1:].mean(1)
        return F.normalize(self.head(pooled), dim=1)


class Gpt(nn.Module):
    def __init__(self, vocab, n_ctx, d, layers, heads, cross=False):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(n_ctx, d)
        self.blocks = nn.ModuleList(Block(d, heads, True, cross) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, tokens, memory=None, cache=None, last_only=False):
        b, t = tokens.shape
        past = 0 if not cache else cache[0][0].shape[2]
        pos = torch.arange(past, past + t).unsqueeze(0)
        x = self.wte(tokens) + self.wpe(pos)
        new = []
        for i, blk in enumerate(self.blocks):
            x, kv = blk(x, True, memory, cache[i] if cache else None)
            new.append(kv)
        h = self.ln_f(x)
        # Decoding needs the last position's logits only (as Vitrine computes them).
        if last_only:
            h = h[:, -1:]
        return h @ self.wte.weight.T, new


class Captioner(nn.Module):
    """crates/vitrine-models/src/captioner.rs `cpu` preset: CNN cells -> proj -> decoder."""

    def __init__(self, vocab):
        super().__init__()
        self.enc = Cnn(3, (64, 48), [16, 32, 64, 128], False)
        self.proj = nn.Linear(128, 128)
        self.mem_pos = nn.Parameter(torch.randn(1, 48, 128) * 0.02)
        self.dec = Gpt(vocab, 32, 128, 4, 4, cross=True)

    def forward(self, images, tokens):
        cells = self.enc.tokens(images).flatten(2).transpose(1, 2)
        return self.dec(tokens, memory=self.proj(cells) + self.mem_pos)[0]


ENCODERS = {
    "cnn-fmnist": ((1, 28, 28), lambda: Cnn(1, (28, 28), [16, 32, 64], True)),
    "cnn-products": ((3, 64, 48), lambda: Cnn(3, (64, 48), [16, 32, 64, 128], False)),
    "vit-tiny": ((3, 32, 32), lambda: Vit((32, 32), 4, 96, 4, 3, 128, False)),
    "vit-s16": ((3, 224, 224), lambda: Vit((224, 224), 16, 384, 12, 6, 256, True)),
}
GPTS = {"tiny": (32, 32, 16, 2, 2), "nano-cpu": (65, 64, 128, 4, 4), "gpt2-124m": (50257, 1024, 768, 12, 12)}

# ---------------------------------------------------------------------------- timing

# Where the models run (`--device`); inputs are made on the host and uploaded by `up`.
DEV = torch.device("cpu")


def sync():
    """Waits for the GPU's queued work, so that a timer measures it."""
    if DEV.type == "cuda":
        torch.cuda.synchronize(DEV)


def up(x):
    """One batch to the device: a copy on the CPU (as Vitrine's tensor upload), a transfer
    to a GPU."""
    return x.clone() if DEV.type == "cpu" else x.to(DEV)


def measure(cfg, f):
    for _ in range(cfg["warmup"]):
        f()
    sync()
    secs, outs, total = [], [], 0.0
    while len(secs) < cfg["max_reps"] and (len(secs) < cfg["min_reps"] or total < cfg["min_secs"]):
        start = time.perf_counter()
        outs.append(f())
        sync()
        s = time.perf_counter() - start
        secs.append(s)
        total += s
    return secs, outs


def row(group, workload, batch, unit, items, secs, extra=None):
    med = statistics.median(secs)
    r = {
        "group": group, "workload": workload, "batch": batch, "unit": unit,
        "throughput": items / med, "median_ms": med * 1e3, "min_ms": min(secs) * 1e3,
        "max_ms": max(secs) * 1e3, "reps": len(secs), "precision": "f32",
    }
    if extra:
        r["extra"] = extra
    print(f"{r['throughput']:>9.1f} {unit} | {workload} | batch {batch}", flush=True)
    return r


# ---------------------------------------------------------------------------- workloads


@torch.no_grad()
def encoders(cfg, out):
    for case in cfg["encoders"]:
        (c, h, w), make = ENCODERS[case["preset"]]
        model = make().eval().to(DEV)
        for b in case["batches"]:
            x = torch.rand(b, c, h, w) * 2 - 1
            # The copy stands for Vitrine's upload of each batch, which its timing includes.
            secs, _ = measure(cfg["timing"], lambda: model(up(x)))
            out.append(row("encoder", f"{case['preset']} {h}x{w} inference", b, "images/s", b, secs))


# crates/vitrine-models/src/bert.rs presets: (vocab, positions, width, layers, heads).
BERTS = {"tiny": (64, 32, 16, 2, 4), "minilm-l6": (30522, 512, 384, 6, 12)}


@torch.no_grad()
def text_encoders(cfg, out):
    cases = cfg.get("text_encoders", [])
    if not cases:
        return
    try:
        from transformers import BertConfig, BertModel
    except ImportError:
        print("skipping text encoders: pip install transformers", flush=True)
        return
    for case in cases:
        vocab, pos, d, layers, heads = BERTS[case["preset"]]
        model = BertModel(BertConfig(vocab_size=vocab, max_position_embeddings=pos, hidden_size=d,
                                     num_hidden_layers=layers, num_attention_heads=heads,
                                     intermediate_size=4 * d), add_pooling_layer=False).eval().to(DEV)
        t = case["seq_len"]
        for b in case["batches"]:
            ids = torch.randint(0, vocab, (b, t))
            ids[:, 0], ids[:, -1] = 101, 102
            mask = torch.ones(b, t, dtype=torch.long)

            def embed():
                # As sentence-transformers: mean over the mask, then normalise.
                on = up(mask)
                h = model(input_ids=up(ids), attention_mask=on).last_hidden_state
                m = on.unsqueeze(-1).to(h.dtype)
                return F.normalize((h * m).sum(1) / m.sum(1), dim=1)

            secs, _ = measure(cfg["timing"], embed)
            out.append(row("encoder", f"{case['preset']} text inference, {t} tokens", b, "sentences/s", b, secs))


def supcon(z, labels, tau):
    sim = z @ z.T / tau
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    logp = sim - torch.logsumexp(sim, 1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    return -(logp.masked_fill(~pos, 0).sum(1) / pos.sum(1).clamp(min=1)).mean()


def train(cfg, out):
    for case in cfg["train"]:
        b, seq, kind, preset = case["batch"], case.get("seq_len", 0), case["model"], case["preset"]
        if kind == "search":
            (c, h, w), make = ENCODERS[preset]
            model = make().to(DEV)
            x = torch.rand(b, c, h, w) * 2 - 1
            labels = torch.arange(b) // 4
            loss_fn = lambda: supcon(model(up(x)), up(labels), 0.1)
            name, tokens = f"search {preset} supcon step", 0
        else:
            if kind == "copy":
                vocab, n_ctx, d, layers, heads = GPTS[preset]
                vocab = case.get("vocab") or vocab
                model = Gpt(vocab, n_ctx, d, layers, heads).to(DEV)
            else:
                vocab = case.get("vocab") or 32
                model = Captioner(vocab).to(DEV)
                images = torch.rand(b, 3, 64, 48) * 2 - 1
            ids = torch.randint(0, vocab, (b, seq))
            inp, tgt = ids[:, :-1], ids[:, 1:]
            if kind == "copy":
                loss_fn = lambda: F.cross_entropy(model(up(inp))[0].flatten(0, 1), up(tgt).flatten())
            else:
                loss_fn = lambda: F.cross_entropy(model(up(images), up(inp)).flatten(0, 1), up(tgt).flatten())
            name, tokens = f"{kind} {preset} step, {seq - 1} tokens/row", b * (seq - 1)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.99), weight_decay=0.01)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        secs, _ = measure(cfg["timing"], step)
        extra = {"tokens/s": tokens / statistics.median(secs)} if tokens else None
        out.append(row("train", name, b, "examples/s", b, secs, extra))


@torch.no_grad()
def generate(cfg, out):
    for case in cfg["generate"]:
        vocab, n_ctx, d, layers, heads = GPTS[case["preset"]]
        vocab = case.get("vocab") or vocab
        model = Gpt(vocab, n_ctx, d, layers, heads).eval().to(DEV)
        p, new = case["prompt_tokens"], case["new_tokens"]
        for rows in case["batches"]:
            prompt = torch.randint(0, vocab, (rows, p))

            def once():
                start = time.perf_counter()
                logits, cache = model(up(prompt), last_only=True)
                nxt = logits[:, -1].argmax(-1, keepdim=True)
                sync()
                ttft = time.perf_counter() - start
                for _ in range(new - 1):
                    logits, cache = model(nxt, cache=cache)
                    nxt = logits[:, -1].argmax(-1, keepdim=True)
                return ttft

            secs, ttfts = measure(cfg["timing"], once)
            med, ttft = statistics.median(secs), statistics.median(ttfts)
            extra = {"TTFT ms": ttft * 1e3, "decode tokens/s": rows * (new - 1) / max(med - ttft, 1e-12)}
            name = f"{case['preset']} greedy, {p} prompt + {new} new tokens, KV cache"
            out.append(row("generate", name, rows, "tokens/s", rows * new, secs, extra))


@torch.no_grad()
def search(cfg, out):
    for case in cfg["search"]:
        start = time.perf_counter()
        emb = F.normalize(torch.rand(case["rows"], case["dim"], device=DEV) * 2 - 1, dim=1)
        sync()
        build = time.perf_counter() - start
        for q in case["query_batches"]:
            queries = F.normalize(torch.rand(q, case["dim"]) * 2 - 1, dim=1)
            secs, _ = measure(cfg["timing"], lambda: torch.topk(up(queries) @ emb.T, case["k"], dim=1))
            name = f"exact top-{case['k']} over {case['rows']} x {case['dim']}"
            out.append(row("search", name, q, "queries/s", q, secs, {"index build s": build}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="bench-results.json",
                    help="a report of `vitrine bench` / scripts/bench.sh: its workloads are run")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--only", default="", help="comma-separated groups")
    ap.add_argument("--out", default="peer-torch.json")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on a GPU")
    ap.add_argument("--flush-denormal", action="store_true",
                    help="torch.set_flush_denormal(True), as vitrine runs on x86-64 CPUs "
                         "(its VITRINE_KEEP_SUBNORMALS=1 turns that off)")
    a = ap.parse_args()
    if a.flush_denormal and not torch.set_flush_denormal(True):
        raise SystemExit("--flush-denormal: this CPU has no flush-to-zero mode")
    global DEV
    DEV = torch.device(a.device)
    if DEV.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {a.device}: no CUDA device visible to PyTorch")
        torch.backends.cuda.matmul.allow_tf32 = a.tf32
        torch.backends.cudnn.allow_tf32 = a.tf32
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    with open(a.config) as f:
        doc = json.load(f)
    if isinstance(doc, list):
        doc = doc[0]
    cfg = doc.get("config", doc)
    groups = [g for g in a.only.split(",") if g] or ["encoder", "train", "generate", "search"]
    started, out = time.time(), []
    for g, fn in [("encoder", encoders), ("encoder", text_encoders), ("train", train),
                  ("generate", generate), ("search", search)]:
        if g in groups:
            fn(cfg, out)
    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": a.threads,
                    "os": platform.system().lower(), "arch": platform.machine()},
        "device": str(DEV), "backend": f"pytorch {torch.__version__}",
        "precision": "tf32" if DEV.type == "cuda" and a.tf32 else "f32",
        "flush_denormal": a.flush_denormal,
        "started_unix": int(started), "total_secs": time.time() - started, "results": out,
    }
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
