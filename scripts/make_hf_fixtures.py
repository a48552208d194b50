#!/usr/bin/env python3
"""Builds the tiny Hugging Face parity fixtures under tests/fixtures/hf/.

Each architecture Vitrine loads from Hugging Face (GPT-2, ViT, CLIP, ViT-GPT2, BERT) gets one
folder holding a tiny random-initialised model saved by `transformers` in its own format
(`config.json`, `model.safetensors`, `tokenizer.json`, `preprocessor_config.json`), plus
`reference.json`: the inputs and what the PyTorch reference computes from them (logits,
embeddings, greedy token ids). The Rust parity tests load each folder and compare.

The fixtures are committed; re-run this only when changing them:

    pip install torch transformers tokenizers safetensors pillow   # CPU wheels suffice
    python3 scripts/make_hf_fixtures.py [OUT_DIR [NAME ...]]

Everything is seeded, and nothing is downloaded: tokenizers are trained here on a few lines.
"""

import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertModel,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    GPT2Config,
    GPT2LMHeadModel,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
    VisionEncoderDecoderModel,
)

EOS = "<|endoftext|>"
BOS_CLIP = "<|startoftext|>"
CORPUS = [
    "summer sale on linen dresses and cotton shirts",
    "new arrivals: leather boots, wool coats and silk scarves",
    "free shipping on every order over fifty dollars",
    "red summer dress with a floral print",
    "blue denim jacket for the weekend",
    "black leather handbag, gold buckle",
    "white running shoes with a soft sole",
    "last chance: twenty percent off knitwear",
]


def tensor_json(t):
    a = t.detach().to(torch.float32).cpu().numpy()
    return {"shape": list(a.shape), "data": [float(x) for x in a.reshape(-1)]}


def save_reference(folder, reference):
    with open(os.path.join(folder, "reference.json"), "w") as f:
        json.dump(reference, f, separators=(",", ":"))
        f.write("\n")


def gpt2_tokenizer():
    """Byte-level BPE, as GPT-2's (256 byte symbols + merges + <|endoftext|>)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def clip_tokenizer():
    """Lower-cased word-level BPE wrapped in <|startoftext|> ... <|endoftext|>, as CLIP's."""
    tok = Tokenizer(models.BPE(unk_token=EOS))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=[BOS_CLIP, EOS], show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    bos, eos = tok.token_to_id(BOS_CLIP), tok.token_to_id(EOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_CLIP} $A {EOS}", special_tokens=[(BOS_CLIP, bos), (EOS, eos)]
    )
    return tok


def bert_tokenizer():
    """Lower-cased WordPiece wrapped in [CLS] ... [SEP], as BERT's; padded to 16 like
    all-MiniLM-L6-v2's file pads to 128 (the loader must turn that padding off)."""
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=120, special_tokens=special, show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tok.enable_padding(pad_id=0, pad_token="[PAD]", length=16)
    return tok


def test_image(size, seed):
    """A size x size RGB image with structure (gradients + noise), saved as PNG."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    img = np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], -1)
    img = np.clip(img + rng.integers(-40, 40, img.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(img, "RGB")


def spread(model, std):
    """Re-draws every weight with a larger std so logits are far apart (greedy decoding of a
    random model then has no near-ties for float rounding to flip)."""
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif "bias" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def make_gpt2(out):
    folder = os.path.join(out, "gpt2")
    os.makedirs(folder, exist_ok=True)
    tok = gpt2_tokenizer()
    eos = tok.token_to_id(EOS)
    config = GPT2Config(
        vocab_size=tok.get_vocab_size(),
        n_positions=32,
        n_embd=16,
        n_layer=2,
        n_head=2,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    torch.manual_seed(0)
    model = spread(GPT2LMHeadModel(config).eval(), 0.3)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    ids = tok.encode("summer sale on linen dresses").ids
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        logits = model(input_ids).logits
        gen = model.generate(
            input_ids,
            max_new_tokens=10,
            do_sample=False,
            num_beams=1,
            pad_token_id=eos,
            eos_token_id=None,
        )
    save_reference(
        folder,
        {
            "input_ids": ids,
            "logits": tensor_json(logits),
            "greedy_new_tokens": gen[0, len(ids):].tolist(),
        },
    )


def vit_config(**kw):
    return ViTConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        **kw,
    )


def vit_processor(size):
    return ViTImageProcessor(
        do_resize=True,
        size={"height": size, "width": size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def make_vit(out):
    folder = os.path.join(out, "vit")
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(1)
    model = ViTModel(vit_config(), add_pooling_layer=True).eval()
    model.save_pretrained(folder, safe_serialization=True)
    proc = vit_processor(32)
    proc.save_pretrained(folder)
    image = test_image(32, 1)
    image.save(os.path.join(folder, "image.png"))
    pixels = proc(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hidden = model(pixel_values=pixels).last_hidden_state
    save_reference(
        folder,
        {"pixel_values": tensor_json(pixels), "last_hidden_state": tensor_json(hidden)},
    )


def make_clip(out):
    folder = os.path.join(out, "clip")
    os.makedirs(folder, exist_ok=True)
    tok = clip_tokenizer()
    eos = tok.token_to_id(EOS)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=tok.get_vocab_size(),
            hidden_size=16,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=tok.token_to_id(BOS_CLIP),
            eos_token_id=eos,
            pad_token_id=eos,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=16,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
        ),
        projection_dim=8,
    )
    torch.manual_seed(2)
    model = CLIPModel(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    proc = CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": 32},
        do_center_crop=True,
        crop_size={"height": 32, "width": 32},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    proc.save_pretrained(folder)
    images = [test_image(32, 2), test_image(32, 3)]
    for i, img in enumerate(images):
        img.save(os.path.join(folder, f"image{i}.png"))
    pixels = proc(images=images, return_tensors="pt")["pixel_values"]
    texts = ["red summer dress", "black leather handbag with a gold buckle"]
    encoded = [tok.encode(t).ids for t in texts]
    width = max(map(len, encoded))
    input_ids = torch.tensor([e + [eos] * (width - len(e)) for e in encoded])
    attention_mask = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in encoded])
    with torch.no_grad():
        result = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixels)
    save_reference(
        folder,
        {
            "texts": texts,
            "input_ids": encoded,
            "pixel_values": tensor_json(pixels),
            # Unit-norm projections, as CLIPModel returns them.
            "image_embeds": tensor_json(result.image_embeds),
            "text_embeds": tensor_json(result.text_embeds),
            "logit_scale": float(model.logit_scale.exp()),
            "logits_per_image": tensor_json(result.logits_per_image),
        },
    )


def make_vit_gpt2(out):
    folder = os.path.join(out, "vit-gpt2")
    os.makedirs(folder, exist_ok=True)
    tok = gpt2_tokenizer()
    eos = tok.token_to_id(EOS)
    decoder = GPT2Config(
        vocab_size=tok.get_vocab_size(),
        n_positions=32,
        n_embd=16,
        n_layer=2,
        n_head=2,
        add_cross_attention=True,
        is_decoder=True,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    torch.manual_seed(3)
    from transformers import VisionEncoderDecoderConfig

    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(vit_config(), decoder)
    config.decoder_start_token_id = eos
    config.pad_token_id = eos
    config.eos_token_id = eos
    model = spread(VisionEncoderDecoderModel(config=config).eval(), 0.3)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    proc = vit_processor(32)
    proc.save_pretrained(folder)
    image = test_image(32, 4)
    image.save(os.path.join(folder, "image.png"))
    pixels = proc(images=image, return_tensors="pt")["pixel_values"]
    decoder_ids = torch.tensor([[eos] + tok.encode("red summer dress").ids])
    with torch.no_grad():
        logits = model(pixel_values=pixels, decoder_input_ids=decoder_ids).logits
        gen = model.generate(
            pixel_values=pixels,
            max_new_tokens=8,
            do_sample=False,
            num_beams=1,
            decoder_start_token_id=eos,
            eos_token_id=None,
            pad_token_id=eos,
        )
    save_reference(
        folder,
        {
            "pixel_values": tensor_json(pixels),
            "decoder_input_ids": decoder_ids[0].tolist(),
            "logits": tensor_json(logits),
            "greedy_new_tokens": gen[0, 1:].tolist(),
        },
    )


def make_bert(out):
    """A tiny BertModel with the sentence-transformers files of all-MiniLM-L6-v2 (mean
    pooling, then Normalize); the reference is `transformers` with the attention mask."""
    folder = os.path.join(out, "bert")
    os.makedirs(os.path.join(folder, "1_Pooling"), exist_ok=True)
    tok = bert_tokenizer()
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=32,
        max_position_embeddings=64,
        type_vocab_size=2,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
    )
    torch.manual_seed(0)
    model = spread(BertModel(config).eval(), 0.3)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "1_Pooling", "config.json"), "w") as f:
        json.dump({"word_embedding_dimension": 16, "pooling_mode_cls_token": False,
                   "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
                   "pooling_mode_mean_sqrt_len_tokens": False}, f, indent=2)
    with open(os.path.join(folder, "modules.json"), "w") as f:
        json.dump([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ], f, indent=2)
    texts = ["Red summer dress with a floral print!", "blue denim"]
    enc = tok.encode_batch(texts)
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    t = int(mask.sum(1).max())
    ids, mask = ids[:, :t], mask[:, :t]
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1)
    pooled = torch.nn.functional.normalize(pooled, dim=1)
    save_reference(
        folder,
        {
            "texts": texts,
            "input_ids": [[i for i, a in zip(e.ids, e.attention_mask) if a] for e in enc],
            "last_hidden_state": tensor_json(hidden),
            "embeddings": tensor_json(pooled),
        },
    )


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "tests", "fixtures", "hf")
    torch.set_grad_enabled(False)
    only = sys.argv[2:]  # e.g. `... tests/fixtures/hf bert` rebuilds one fixture
    for make in (make_gpt2, make_vit, make_clip, make_vit_gpt2, make_bert):
        if only and make.__name__[5:] not in only:
            continue
        make(out)
        print(f"wrote {make.__name__[5:]}")


if __name__ == "__main__":
    main()
