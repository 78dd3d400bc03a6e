"""The configs of the models the shipped experiments (and the seeds) name, kept as facts so planning works offline.

Each entry is the subset of the model's ``config.json`` on the Hugging Face Hub (main revision) that the
planner reads; a model not listed here is read from its own config (a local path, ``s3://``, the Hub cache
or the Hub when reachable). Transcribed from those config files; tests/test_capacity.py checks the
parameter counts they give against each model card's published size.
"""

from __future__ import annotations

_LLAMA2 = {"model_type": "llama", "vocab_size": 32000, "tie_word_embeddings": False, "max_position_embeddings": 4096}

MODEL_CONFIGS: dict[str, dict] = {
    "meta-llama/llama-2-7b-hf": {**_LLAMA2, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                                 "num_attention_heads": 32, "num_key_value_heads": 32},
    "meta-llama/llama-2-13b-hf": {**_LLAMA2, "hidden_size": 5120, "intermediate_size": 13824,
                                  "num_hidden_layers": 40, "num_attention_heads": 40, "num_key_value_heads": 40},
    "meta-llama/llama-2-70b-hf": {**_LLAMA2, "hidden_size": 8192, "intermediate_size": 28672,
                                  "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8},
    "mistralai/mistral-7b-v0.1": {"model_type": "mistral", "vocab_size": 32000, "tie_word_embeddings": False,
                                  "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                                  "num_attention_heads": 32, "num_key_value_heads": 8, "sliding_window": 4096,
                                  "max_position_embeddings": 32768},
    "mistralai/mixtral-8x7b-v0.1": {"model_type": "mixtral", "vocab_size": 32000, "tie_word_embeddings": False,
                                    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                                    "num_attention_heads": 32, "num_key_value_heads": 8, "num_local_experts": 8,
                                    "num_experts_per_tok": 2, "max_position_embeddings": 32768},
    "codellama/codellama-7b-hf": {"model_type": "llama", "vocab_size": 32016, "tie_word_embeddings": False,
                                  "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                                  "num_attention_heads": 32, "num_key_value_heads": 32,
                                  "max_position_embeddings": 16384},
    "codellama/codellama-13b-hf": {"model_type": "llama", "vocab_size": 32016, "tie_word_embeddings": False,
                                   "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
                                   "num_attention_heads": 40, "num_key_value_heads": 40,
                                   "max_position_embeddings": 16384},
    "codellama/codellama-34b-hf": {"model_type": "llama", "vocab_size": 32000, "tie_word_embeddings": False,
                                   "hidden_size": 8192, "intermediate_size": 22016, "num_hidden_layers": 48,
                                   "num_attention_heads": 64, "num_key_value_heads": 8,
                                   "max_position_embeddings": 16384},
}

# Published sizes (billions of parameters, from each model card) the configs above must reproduce.
PUBLISHED_BILLIONS = {"meta-llama/llama-2-7b-hf": 6.74, "meta-llama/llama-2-13b-hf": 13.0,
                      "meta-llama/llama-2-70b-hf": 69.0, "mistralai/mistral-7b-v0.1": 7.24,
                      "mistralai/mixtral-8x7b-v0.1": 46.7, "codellama/codellama-7b-hf": 6.74,
                      "codellama/codellama-13b-hf": 13.0, "codellama/codellama-34b-hf": 33.7}
