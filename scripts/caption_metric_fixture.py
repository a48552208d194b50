#!/usr/bin/env python3
"""Build the reference fixture for `vitrine-eval`'s caption metrics.

Runs the COCO caption toolkit (pycocoevalcap 1.2) -- Bleu(4), Rouge() and Cider(), the
latter being CIDEr-D -- directly on a small, fixed set of already lower-cased and
tokenised product-title captions, and writes every corpus score and every per-image score
to JSON. The Rust implementation in `crates/vitrine-eval/src/caption_metrics.rs` is tested
against this file to 1e-6 absolute.

The text below is pre-tokenised (space-separated, lower case), so the toolkit's Java PTB
tokenizer is NOT run; no Java is needed.

Install:
    pip install pycocoevalcap==1.2

Run (from the repository root):
    python3 scripts/caption_metric_fixture.py [OUT_JSON] [--txt OUT_TXT]

OUT_JSON defaults to tests/fixtures/caption-metrics.json (relative to the repository root,
found from this script's location). `--txt OUT_TXT` additionally writes a plain-text dump
(one value per line, floats in repr form) for dependency-free cross-checks; it is not
committed. Bleu prints its counts to stdout; that is expected.
"""

import json
import sys
from pathlib import Path

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

# (hypothesis, references). Already tokenised: lower case, single spaces.
# Edge cases covered:
#   img00: refs of lengths 7 and 5 tie for "closest" to a 6-token hypothesis (shorter wins)
#   img01: empty hypothesis
#   img02: hypothesis much longer than every reference; tokens found in no reference
#   img03: one-word hypothesis
#   img04: repeated words (clipped counts)
#   img09: short hypothesis (brevity penalty)
#   img10: hypothesis identical to its only reference
#   img11: repeated "with"; "with"/"for"/"charging" appear in many images (high df)
IMAGES = [
    (
        "stainless steel water bottle 750 ml",
        [
            "stainless steel insulated water bottle 750 ml",
            "vacuum insulated stainless steel bottle",
            "steel water bottle",
        ],
    ),
    ("", ["wireless bluetooth earbuds with charging case"]),
    (
        "wireless bluetooth over ear headphones with noise cancelling and microphone "
        "for travel and work",
        [
            "wireless noise cancelling headphones",
            "bluetooth over ear headphones with microphone",
        ],
    ),
    ("mug", ["ceramic coffee mug 350 ml", "white ceramic mug"]),
    (
        "cotton cotton cotton t-shirt t-shirt",
        ["men's cotton t-shirt", "cotton crew neck t-shirt for men"],
    ),
    (
        "usb-c charging cable 2 m",
        ["usb-c to usb-c charging cable 2 m", "fast charging usb-c cable"],
    ),
    (
        "leather wallet for men with coin pocket",
        [
            "men's leather bifold wallet with coin pocket",
            "genuine leather wallet for men",
            "slim wallet",
        ],
    ),
    (
        "non-stick frying pan 28 cm with lid",
        ["non-stick frying pan with glass lid 28 cm"],
    ),
    (
        "kids backpack for school with water bottle pocket",
        [
            "school backpack for kids",
            "children's backpack with bottle pocket",
            "lightweight kids school bag with water bottle pocket",
        ],
    ),
    ("yoga mat", ["non-slip yoga mat 6 mm", "yoga mat with carrying strap"]),
    (
        "led desk lamp with usb charging port",
        ["led desk lamp with usb charging port"],
    ),
    (
        "phone case for iphone 15 with with with card holder",
        [
            "iphone 15 wallet case with card holder",
            "leather phone case for iphone 15",
            "magnetic phone case with card slot for iphone 15 pro",
        ],
    ),
]


def main(argv):
    repo_root = Path(__file__).resolve().parent.parent
    out_json = repo_root / "tests" / "fixtures" / "caption-metrics.json"
    out_txt = None
    args = list(argv)
    while args:
        a = args.pop(0)
        if a == "--txt":
            out_txt = Path(args.pop(0))
        else:
            out_json = Path(a)

    ids = [f"img{i:02d}" for i in range(len(IMAGES))]
    # Insertion order = the order of IMAGES; pycocoevalcap iterates gts.keys(), so the
    # per-image lists below line up with `ids`.
    gts = {i: list(refs) for i, (_, refs) in zip(ids, IMAGES)}
    res = {i: [hyp] for i, (hyp, _) in zip(ids, IMAGES)}

    bleu, bleu_lists = Bleu(4).compute_score(gts, res)
    rouge, rouge_per = Rouge().compute_score(gts, res)
    cider, cider_per = Cider().compute_score(gts, res)

    n = len(ids)
    bleu_per = [[float(bleu_lists[k][i]) for k in range(4)] for i in range(n)]
    data = {
        "generator": "scripts/caption_metric_fixture.py",
        "pycocoevalcap": "1.2",
        "ids": ids,
        "hyps": [hyp for hyp, _ in IMAGES],
        "refs": [list(refs) for _, refs in IMAGES],
        "corpus": {
            "bleu": [float(b) for b in bleu],
            "rouge_l": float(rouge),
            "cider_d": float(cider),
        },
        "per_image": {
            "bleu": bleu_per,
            "rouge_l": [float(x) for x in rouge_per],
            "cider_d": [float(x) for x in cider_per],
        },
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {out_json}")

    if out_txt is not None:
        # Plain-text dump: image count, then per image: hyp line, ref count, ref lines,
        # 4 bleu, rouge, cider; then corpus: 4 bleu, rouge, cider. One value per line.
        lines = [str(n)]
        for i, (hyp, refs) in enumerate(IMAGES):
            lines.append(hyp)
            lines.append(str(len(refs)))
            lines.extend(refs)
            lines.extend(repr(x) for x in bleu_per[i])
            lines.append(repr(float(rouge_per[i])))
            lines.append(repr(float(cider_per[i])))
        lines.extend(repr(float(b)) for b in bleu)
        lines.append(repr(float(rouge)))
        lines.append(repr(float(cider)))
        out_txt.write_text("\n".join(lines) + "\n")
        print(f"wrote {out_txt}")


if __name__ == "__main__":
    main(sys.argv[1:])
