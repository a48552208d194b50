#!/usr/bin/env python3
"""The MiniLM click-through scorer recipe in PyTorch + transformers, as a peer run.

`configs/score-upworthy.toml` in PyTorch, on the same CSVs with the same pair rules and
metrics as `vitrine eval score` (crates/vitrine-data/src/ctr.rs): pairs of variants of one
test with different headlines and different CTRs; RankNet loss weighted by
clamp(|z| / full_weight_z, min_weight, 1); pairwise accuracy (ties 1/2), the same on pairs
with |z| >= 1.96, and the AUC of s_a - s_b. Recipe: mean-pooled, normalised
all-MiniLM-L6-v2 and a linear head started from the frozen-embedding logistic regression
(Newton, L2 chosen on dev from the same grid); AdamW (0.9, 0.999, 1e-8, weight decay
0.01 on every parameter), encoder lr 2e-5 and head 1e-4, 10 warm-up steps then cosine to a
tenth, each gradient tensor's norm clipped at 1 (`--clip global`: PyTorch's usual clip);
batches of 16 whole tests; the epoch with the best dev accuracy is kept. Dropout as
config.json says (model.train()). The dev split is 10% of the training tests, seeded here
(numpy), so it is not the same 10% that vitrine holds out; validation is the same file.

  /path/to/venv/bin/python scripts/peers/score_torch.py --threads 2 --out score-torch.json

Needs torch, transformers and numpy, and models/all-MiniLM-L6-v2 (scripts/get-models.sh).
"""
import argparse
import csv
import json
import math
import time
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

L2_GRID = [100.0, 30.0, 10.0, 3.0, 1.0]


def read_tests(path):
    tests = OrderedDict()
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            tid, text = row["test_id"].strip(), row["headline"].strip()
            tests.setdefault(tid, []).append(
                (text, int(row["impressions"].strip()), int(row["clicks"].strip()))
            )
    return list(tests.values())


def z_stat(a, b):
    na, nb = a[1], b[1]
    p = (a[2] + b[2]) / (na + nb)
    se = math.sqrt(p * (1 - p) * (1 / na + 1 / nb))
    return abs(a[2] / na - b[2] / nb) / se if se > 0 else 0.0


def build(tests):
    """Variants (texts) and pairs (winner index, loser index, z, a_wins, a, b, test)."""
    texts, pairs = [], []
    for t, variants in enumerate(tests):
        base = len(texts)
        for i, a in enumerate(variants):
            for j in range(i + 1, len(variants)):
                b = variants[j]
                if a[0] == b[0]:
                    continue
                lhs, rhs = a[2] * b[1], b[2] * a[1]
                if lhs == rhs:
                    continue
                w, l = (base + i, base + j) if lhs > rhs else (base + j, base + i)
                pairs.append((w, l, z_stat(a, b), lhs > rhs, base + i, base + j, t))
        texts.extend(v[0] for v in variants)
    return texts, pairs


def weight(z, args):
    return min(max(z / args.full_weight_z, args.min_weight), 1.0) if z >= args.min_z else None


def auc(diffs, wins):
    order = np.argsort(diffs, kind="mergesort")
    ranks = np.empty(len(diffs))
    sd = np.asarray(diffs)[order]
    i = 0
    while i < len(sd):
        j = i
        while j + 1 < len(sd) and sd[j + 1] == sd[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    wins = np.asarray(wins)
    pos, neg = wins.sum(), len(wins) - wins.sum()
    return float((ranks[wins].sum() - pos * (pos + 1) / 2) / (pos * neg))


def metrics(pairs, scores, sig_z):
    credit = [1.0 if scores[w] > scores[l] else 0.5 if scores[w] == scores[l] else 0.0
              for w, l, *_ in pairs]
    sig = [c for c, p in zip(credit, pairs) if p[2] >= sig_z]
    diffs = [scores[p[4]] - scores[p[5]] for p in pairs]
    return {
        "pairs": len(pairs),
        "accuracy": float(np.mean(credit)),
        "significant_pairs": len(sig),
        "significant_accuracy": float(np.mean(sig)),
        "auc": auc(diffs, [p[3] for p in pairs]),
    }


def encode(tok, texts, max_tokens):
    return tok(texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")


def embed(model, tok, texts, max_tokens, batch=64):
    out = []
    for i in range(0, len(texts), batch):
        enc = encode(tok, texts[i : i + batch], max_tokens)
        h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
        out.append(F.normalize((h * m).sum(1) / m.sum(1), dim=-1))
    return torch.cat(out)


def fit_logit(x, w, l2, beta):
    """Newton's method on sum w softplus(-beta.x) + l2/2 |beta|^2 (x = e_winner - e_loser)."""
    for _ in range(50):
        m = x @ beta
        p = 1.0 / (1.0 + np.exp(m))  # sigma(-m)
        g = -(x * (w * p)[:, None]).sum(0) + l2 * beta
        h = (x * (w * p * (1 - p))[:, None]).T @ x + l2 * np.eye(len(beta))
        step = np.linalg.solve(h, g)
        beta = beta - step
        if np.abs(step).max() < 1e-8:
            break
    return beta


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="models/all-MiniLM-L6-v2")
    ap.add_argument("--train", default="../shared/data/upworthy/train.csv")
    ap.add_argument("--valid", default="../shared/data/upworthy/valid.csv")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-tests", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--head-lr-scale", type=float, default=5.0)
    ap.add_argument("--min-lr", type=float, default=2e-6)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--dev-fraction", type=float, default=0.1)
    ap.add_argument("--min-z", type=float, default=0.0)
    ap.add_argument("--full-weight-z", type=float, default=1.96)
    ap.add_argument("--min-weight", type=float, default=0.1)
    ap.add_argument("--significance-z", type=float, default=1.96)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--clip", choices=["per-tensor", "global"], default="per-tensor")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    started = time.time()

    train_tests = read_tests(args.train)
    n_dev = round(len(train_tests) * args.dev_fraction)
    perm = rng.permutation(len(train_tests))
    dev_tests = [train_tests[i] for i in sorted(perm[:n_dev])]
    fit_tests = [train_tests[i] for i in sorted(perm[n_dev:])]
    valid_texts, valid_pairs = build(read_tests(args.valid))
    dev_texts, dev_pairs = build(dev_tests)
    fit_texts, fit_pairs = build(fit_tests)
    kept = [(p, weight(p[2], args)) for p in fit_pairs]
    kept = [(p, w) for p, w in kept if w is not None]

    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModel.from_pretrained(args.model)

    # The head's start: the frozen-embedding logistic regression.
    t0 = time.time()
    model.eval()
    with torch.no_grad():
        e_fit = embed(model, tok, fit_texts, args.max_tokens).double().numpy()
        e_dev = embed(model, tok, dev_texts, args.max_tokens).double().numpy()
        e_valid = embed(model, tok, valid_texts, args.max_tokens).double().numpy()
    x = np.stack([e_fit[p[0]] - e_fit[p[1]] for p, _ in kept])
    w = np.array([w for _, w in kept])
    best, beta = None, np.zeros(x.shape[1])
    for l2 in L2_GRID:
        beta = fit_logit(x, w, l2, beta)
        m = metrics(dev_pairs, e_dev @ beta, args.significance_z)
        if best is None or m["accuracy"] > best[1]["accuracy"]:
            best = (beta.copy(), m, l2)
    frozen = {
        "l2": best[2],
        "dev": best[1],
        "valid": metrics(valid_pairs, e_valid @ best[0], args.significance_z),
        "secs": time.time() - t0,
    }
    print(f"frozen LR: l2 {best[2]}, dev {best[1]['accuracy']:.4f}, "
          f"valid {frozen['valid']['accuracy']:.4f} ({frozen['secs']:.1f} s)", flush=True)

    head = torch.nn.Linear(x.shape[1], 1, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor(best[0], dtype=torch.float32).unsqueeze(0))
    # Weight decay on every parameter, as vitrine's AdamW applies it.
    opt = torch.optim.AdamW(
        [
            {"params": model.parameters(), "lr_scale": 1.0},
            {"params": head.parameters(), "lr_scale": args.head_lr_scale},
        ],
        lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
    )
    # Tests with at least one kept pair, as training groups.
    groups = {}
    for p, wt in kept:
        groups.setdefault(p[6], []).append((p[0], p[1], wt))
    group_ids = sorted(groups)
    steps_per_epoch = math.ceil(len(group_ids) / args.batch_tests)
    total = steps_per_epoch * args.epochs

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, total - args.warmup)
        return args.min_lr + (args.lr - args.min_lr) * 0.5 * (1 + math.cos(math.pi * t))

    def score(texts):
        model.eval()
        with torch.no_grad():
            return (head(embed(model, tok, texts, args.max_tokens)).squeeze(-1)
                    .double().numpy())

    epochs, kept_state, step = [], None, 0
    for epoch in range(args.epochs):
        model.train()
        t1 = time.time()
        order = rng.permutation(group_ids)
        losses = []
        for s in range(steps_per_epoch):
            batch = order[s * args.batch_tests : (s + 1) * args.batch_tests]
            rows = sorted({r for g in batch for p in groups[g] for r in p[:2]})
            at = {r: i for i, r in enumerate(rows)}
            enc = encode(tok, [fit_texts[r] for r in rows], args.max_tokens)
            h = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            s_rows = head(F.normalize((h * m).sum(1) / m.sum(1), dim=-1)).squeeze(-1)
            ps = [p for g in batch for p in groups[g]]
            win = torch.tensor([at[p[0]] for p in ps])
            lose = torch.tensor([at[p[1]] for p in ps])
            wt = torch.tensor([p[2] for p in ps], dtype=torch.float32)
            loss = (wt * F.softplus(-(s_rows[win] - s_rows[lose]))).sum() / wt.sum()
            for g in opt.param_groups:
                g["lr"] = lr_at(step) * g["lr_scale"]
            opt.zero_grad()
            loss.backward()
            params = list(model.parameters()) + list(head.parameters())
            if args.clip == "global":
                torch.nn.utils.clip_grad_norm_(params, 1.0)
            else:  # each tensor on its own, as vitrine's train.grad_clip (Burn's Norm) does
                for p in params:
                    torch.nn.utils.clip_grad_norm_([p], 1.0)
            opt.step()
            losses.append(loss.item())
            step += 1
        dev = metrics(dev_pairs, score(dev_texts), args.significance_z)
        epochs.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "dev": dev,
                       "secs": time.time() - t1})
        print(f"epoch {epoch + 1}: loss {np.mean(losses):.4f}, dev {dev['accuracy']:.4f} "
              f"({time.time() - t1:.1f} s)", flush=True)
        if kept_state is None or dev["accuracy"] > kept_state[0]:
            kept_state = (dev["accuracy"], epoch + 1, score(valid_texts))
    valid = metrics(valid_pairs, kept_state[2], args.significance_z)
    report = {
        "torch": torch.__version__,
        "threads": args.threads,
        "tests": {"fit": len(fit_tests), "dev": len(dev_tests)},
        "frozen_lr": frozen,
        "epochs": epochs,
        "kept_epoch": kept_state[1],
        "valid": valid,
        "secs": time.time() - started,
    }
    print(f"kept epoch {kept_state[1]}: valid {valid['accuracy']:.4f}, significant "
          f"{valid['significant_accuracy']:.4f}, AUC {valid['auc']:.4f}, "
          f"{report['secs']:.0f} s in all", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
