"""Tiny causal LMs built locally from a small config, for offline runs and tests.

``tiny://llama`` and ``tiny://mixtral`` build a two-layer model with a tokenizer trained here on the
synthetic task vocabulary and configured like the real Llama 2 / Mistral / Mixtral / CodeLlama ones: a
``LlamaTokenizer`` (SentencePiece-style BPE, ``▁`` for spaces, byte fallback ``<0x00>``..``<0xFF>``),
``<unk>`` 0, ``<s>`` 1 (BOS), ``</s>`` 2 (EOS), no pad token, and ``add_bos_token`` on: every text it
encodes with special tokens starts with BOS, so a prompt that also writes ``<s>`` gets two.

The build is deterministic: the same family and seed
give the same tokenizer and bit-identical weights, so every stage (finetune, generate) that resolves
the URI gets the same base model without downloading anything.
"""

from __future__ import annotations

import json
from pathlib import Path

from bakeoff.errors import ModelError

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2, as in Llama 2 (which has no pad token)
BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]  # ids 3..258: byte fallback
VOCAB_SIZE = 1024
BUILD_VERSION = 2  # part of the model cache's folder name: a change of the build never reuses an old one

FAMILIES: dict[str, dict] = {
    "llama": {
        "class": "LlamaForCausalLM",
        "config": "LlamaConfig",
        "kwargs": dict(
            hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False, initializer_range=0.15,
        ),
    },
    "mixtral": {
        "class": "MixtralForCausalLM",
        "config": "MixtralConfig",
        "kwargs": dict(
            hidden_size=128, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
            max_position_embeddings=512, tie_word_embeddings=False, initializer_range=0.15,
        ),
    },
}


def build_tokenizer():
    """Train a BPE on the synthetic corpus and wrap it as a ``LlamaTokenizer`` that adds BOS."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizer

    from bakeoff.fixtures.smoke import tokenizer_corpus
    from bakeoff.templates import TEMPLATES

    corpus = tokenizer_corpus()
    template = TEMPLATES["llama2-inst"]  # the smoke experiment's; other text still tokenizes (byte fallback)
    corpus.append(template.prompt("instruction") + template.completion("response"))
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    # merges are learned within words, as SentencePiece's are; LlamaTokenizer applies them to "▁"-joined text
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS + BYTE_TOKENS,
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    merges = [tuple(m) for m in json.loads(tok.to_str())["model"]["merges"]]
    return LlamaTokenizer(vocab=tok.get_vocab(), merges=merges, add_bos_token=True, add_eos_token=False)


def save_tokenizer(tokenizer, out_dir: str | Path) -> Path:
    """Save the tiny tokenizer with the ``tokenizer_config.json`` flags the real Llama 2 file has
    (transformers keeps them in the post-processor)."""
    import json

    out_dir = Path(out_dir)
    tokenizer.save_pretrained(out_dir)
    config_path = out_dir / "tokenizer_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "add_bos_token": True,
                                       "add_eos_token": False}, indent=2) + "\n")
    return out_dir


def build_tiny_tokenizer(family: str, out_dir: str | Path) -> Path:
    """Only the tokenizer of ``tiny://FAMILY`` (the one its model is built with; no torch needed): what a
    stage that only counts tokens, such as prepare, loads."""
    if family not in FAMILIES:
        raise ModelError(f"tiny://{family}: unknown tiny family; known: {', '.join(FAMILIES)}")
    return save_tokenizer(build_tokenizer(), out_dir)


def build_tiny_model(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Build ``tiny://FAMILY`` into ``out_dir`` (config, safetensors weights, tokenizer) and return it."""
    import torch
    import transformers

    if family not in FAMILIES:
        raise ModelError(f"tiny://{family}: unknown tiny family; known: {', '.join(FAMILIES)}")
    out_dir = Path(out_dir)
    spec = FAMILIES[family]
    tokenizer = build_tokenizer()
    config = getattr(transformers, spec["config"])(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **spec["kwargs"],
    )
    torch.manual_seed(seed)
    model = getattr(transformers, spec["class"])(config)
    model.generation_config.pad_token_id = tokenizer.eos_token_id  # no pad token, as in Llama 2
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    save_tokenizer(tokenizer, out_dir)
    (out_dir / "bakeoff_tiny.json").write_text(json.dumps({"family": family, "seed": seed, "build": BUILD_VERSION}))
    return out_dir
