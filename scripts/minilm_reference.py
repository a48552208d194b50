#!/usr/bin/env python3
"""Reference embeddings of all-MiniLM-L6-v2 by sentence-transformers, for the Rust test
that checks Vitrine's BERT against the real model (tests/fixtures/minilm-reference.json).

    scripts/get-models.sh                                  # models/all-MiniLM-L6-v2
    pip install torch sentence-transformers                # CPU wheels suffice
    python3 scripts/minilm_reference.py [MODEL_DIR] [OUT]

Nothing is downloaded: the model is read from the folder.
"""

import json
import os
import sys

from sentence_transformers import SentenceTransformer

SENTENCES = [
    "This Is What Happens When You Give A Homeless Man $100",
    "red summer dress with a floral print",
    "Free shipping on every order over fifty dollars!",
    "Naïve café owners don't know what's coming — 12 reasons why",
    "a",
]


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    model_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "models", "all-MiniLM-L6-v2")
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(root, "tests", "fixtures", "minilm-reference.json")
    model = SentenceTransformer(model_dir, device="cpu")
    emb = model.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True)
    ids = [model.tokenizer(s)["input_ids"] for s in SENTENCES]
    with open(out, "w") as f:
        json.dump(
            {
                "model": "sentence-transformers/all-MiniLM-L6-v2",
                "sentences": SENTENCES,
                "input_ids": ids,
                "embeddings": [[float(x) for x in row] for row in emb],
            },
            f,
            separators=(",", ":"),
        )
        f.write("\n")
    print(f"wrote {out}: {len(SENTENCES)} sentences x {emb.shape[1]}")


if __name__ == "__main__":
    main()
