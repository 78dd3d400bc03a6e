"""Tiny causal LMs built locally from a small config, for offline runs and tests.

``tiny://llama`` and ``tiny://mixtral`` build a two-layer model with a byte-level BPE tokenizer
trained here on the synthetic task vocabulary. The build is deterministic: the same family and seed
give the same tokenizer and bit-identical weights, so every stage (finetune, generate) that resolves
the URI gets the same base model without downloading anything.
"""

from __future__ import annotations

import json
from pathlib import Path

from bakeoff.errors import ModelError

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
VOCAB_SIZE = 1024

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
    """Train a byte-level BPE tokenizer on the synthetic corpus and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from bakeoff.fixtures.smoke import tokenizer_corpus
    from bakeoff.templates import TEMPLATES

    corpus = tokenizer_corpus()
    template = TEMPLATES["llama2-inst"]  # the smoke experiment's; other text still tokenizes, byte-level
    corpus.append(template.prompt("instruction") + template.completion("response"))
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
    )


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
        pad_token_id=tokenizer.pad_token_id,
        **spec["kwargs"],
    )
    torch.manual_seed(seed)
    model = getattr(transformers, spec["class"])(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "bakeoff_tiny.json").write_text(json.dumps({"family": family, "seed": seed}))
    return out_dir
