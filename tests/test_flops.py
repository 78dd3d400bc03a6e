"""Parameter counts, training FLOPs per token, the GPU peak table and MFU (bakeoff.train.flops), and the
timing window of bench/bench_gpu.py, on CPU."""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace

import pytest
from conftest import ROOT

from bakeoff.train.flops import (
    GPU_PEAK_BF16_TFLOPS,
    config_parameters,
    count_parameters,
    effective_seq_len,
    mfu,
    peak_tflops,
    train_flops_per_token,
)

LLAMA2_7B = dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=11008, num_attention_heads=32,
                 num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False)
MIXTRAL_8X7B = dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=14336, num_attention_heads=32,
                    num_key_value_heads=8, vocab_size=32000, num_local_experts=8, num_experts_per_tok=2,
                    tie_word_embeddings=False)


def bench_gpu():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import bench_gpu as module
    finally:
        sys.path.pop(0)
    return module


# --------------------------------------------------------------------------------------------------------------
# Parameters of loaded models


def tiny_llama_by_hand(config) -> dict[str, int]:
    d, ff, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    head_dim = d // config.num_attention_heads
    q = o = d * config.num_attention_heads * head_dim
    k = v = d * config.num_key_value_heads * head_dim
    layer = q + k + v + o + 3 * d * ff + 2 * d  # attention, gated MLP (gate, up, down), two RMSNorms
    embedding = vocab * d
    non_embedding = config.num_hidden_layers * layer + d + vocab * d  # final norm, untied lm_head
    return {"total": embedding + non_embedding, "embedding": embedding, "non_embedding": non_embedding}


@pytest.fixture(scope="module")
def tiny_llama(session_cache):
    mp = pytest.MonkeyPatch()
    mp.setenv("BAKEOFF_CACHE", str(session_cache))
    from bakeoff.models import load_model

    yield load_model("tiny://llama")
    mp.undo()


def test_tiny_llama_counted_by_hand(tiny_llama):
    config = tiny_llama.config
    assert (config.hidden_size, config.num_hidden_layers, config.tie_word_embeddings) == (128, 2, False)
    expected = tiny_llama_by_hand(config)
    counts = count_parameters(tiny_llama)
    assert counts == {**expected, "trainable": expected["total"]}
    # the same counts from the config alone
    from_config = config_parameters(config)
    assert (from_config["total"], from_config["embedding"], from_config["non_embedding"]) == (
        expected["total"], expected["embedding"], expected["non_embedding"])


def test_tied_head_is_embedding():
    import torch
    import transformers

    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=4, vocab_size=100,
                                      tie_word_embeddings=True)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    counts = count_parameters(model)
    assert counts["embedding"] == 100 * 64  # one tensor, counted once, as embedding
    assert counts["total"] == sum(p.numel() for p in model.parameters()) == config_parameters(config)["total"]
    assert counts["non_embedding"] == counts["total"] - 100 * 64


def test_four_bit_weights_are_counted_whole(tiny_llama, cache_env):
    import torch

    from bakeoff.models import load_model
    from bakeoff.models.loading import quantization_config

    quantized = load_model("tiny://llama", device="cpu", quantization_config=quantization_config(torch.float32))
    assert any(type(p).__name__ == "Params4bit" for p in quantized.parameters()), "nothing was quantized"
    # the undercount this fixes: two 4-bit values per uint8 element
    assert sum(p.numel() for p in quantized.parameters()) < count_parameters(tiny_llama)["total"]
    counts, full = count_parameters(quantized), count_parameters(tiny_llama)
    assert (counts["total"], counts["embedding"], counts["non_embedding"]) == (
        full["total"], full["embedding"], full["non_embedding"])


def test_peft_model_counts_the_adapter_as_trainable(tiny_llama):
    import copy

    from peft import LoraConfig, get_peft_model

    model = get_peft_model(copy.deepcopy(tiny_llama), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    counts, base = count_parameters(model), count_parameters(tiny_llama)
    d, kv = tiny_llama.config.hidden_size, tiny_llama.config.num_key_value_heads * 32
    adapter = tiny_llama.config.num_hidden_layers * (4 * (d + d) + 4 * (d + kv))  # A: r x in, B: out x r
    assert counts["trainable"] == adapter
    assert counts["total"] == base["total"] + adapter and counts["embedding"] == base["embedding"]


def test_tiny_mixtral_counts_every_expert(cache_env):
    from bakeoff.models import load_model

    model = load_model("tiny://mixtral")
    counts, from_config = count_parameters(model), config_parameters(model.config)
    assert counts["total"] == from_config["total"] and counts["non_embedding"] == from_config["non_embedding"]
    assert from_config["active_non_embedding"] < from_config["non_embedding"]


# --------------------------------------------------------------------------------------------------------------
# FLOPs per token


def test_llama2_7b_flops_per_token_by_hand():
    # N: non-embedding parameters, lm_head included (Chinchilla / PaLM), input embedding excluded
    attention = 4 * 4096 * 4096  # q, k, v, o (no GQA in the 7B)
    mlp = 3 * 4096 * 11008  # gate, up, down
    norms = 2 * 4096
    n = 32 * (attention + mlp + norms) + 4096 + 32000 * 4096  # layers, final norm, lm_head
    assert n == 6_607_343_616
    assert config_parameters(LLAMA2_7B)["total"] == n + 32000 * 4096 == 6_738_415_616  # "6.7B"
    attention_flops = 12 * 32 * 4096 * 1024  # 12 L H Q T
    assert train_flops_per_token(LLAMA2_7B, 1024) == 6 * n + attention_flops == 41_254_674_432
    # a transformers config gives the same figure as the dict
    import transformers

    assert train_flops_per_token(transformers.LlamaConfig(**LLAMA2_7B), 1024) == 6 * n + attention_flops
    # a frozen base (LoRA): no weight gradients for N, 6 per adapter parameter
    assert train_flops_per_token(LLAMA2_7B, 1024, frozen_base=True, adapter_params=1000) == (
        4 * n + 6 * 1000 + attention_flops)


def test_attention_term_grows_with_the_context_and_a_sliding_window_caps_it():
    short, long = train_flops_per_token(LLAMA2_7B, 512), train_flops_per_token(LLAMA2_7B, 2048)
    assert long - short == 12 * 32 * 4096 * (2048 - 512)
    windowed = {**LLAMA2_7B, "sliding_window": 1024}
    assert train_flops_per_token(windowed, 4096) == train_flops_per_token(LLAMA2_7B, 1024)


def test_mixtral_counts_only_the_active_experts():
    attention = 2 * 4096 * 4096 + 2 * 4096 * 1024  # q, o; k, v with 8 KV heads of 128
    expert = 3 * 4096 * 14336
    router, norms = 4096 * 8, 2 * 4096
    head = embedding = 32000 * 4096
    active = 32 * (attention + router + 2 * expert + norms) + 4096 + head
    every = 32 * (attention + router + 8 * expert + norms) + 4096 + head
    params = config_parameters(MIXTRAL_8X7B)
    assert params["active_non_embedding"] == active and params["non_embedding"] == every
    assert round((active + embedding) / 1e9, 1) == 12.9 and round((every + embedding) / 1e9, 1) == 46.7  # Mistral AI
    assert train_flops_per_token(MIXTRAL_8X7B, 1024) == 6 * active + 12 * 32 * 4096 * 1024


def test_effective_seq_len_weights_by_tokens():
    assert effective_seq_len([1024] * 3) == 1024
    assert effective_seq_len([100, 300]) == (100 ** 2 + 300 ** 2) / 400 == 250
    assert effective_seq_len([]) == 0.0


# --------------------------------------------------------------------------------------------------------------
# Peaks and MFU


@pytest.mark.parametrize(("name", "expected"), [
    ("NVIDIA H100 80GB HBM3", 989.0),  # the SXM part's name
    ("NVIDIA H100 SXM5 80GB", 989.0),
    ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.0),
    ("NVIDIA H200 NVL", 835.0),
    ("NVIDIA GH200 480GB", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A100 80GB PCIe", 312.0),
    ("NVIDIA L40S", 362.0),
    ("NVIDIA L40", 181.0),
    ("NVIDIA L4", 121.0),
    ("NVIDIA A40", 150.0),
    ("NVIDIA A10", 125.0),
    ("nvidia h100 pcie", 756.0),  # case-insensitive
    ("NVIDIA H100-PCIe", 756.0),
    ("a mystery GPU", None),
    ("Tesla V100-SXM2-16GB", None),  # no bf16
    ("", None),
])
def test_peak_table_matches_the_longest_name_first(name, expected):
    assert peak_tflops(name) == expected


def test_peak_table_order_does_not_matter():
    backwards = dict(reversed(list(GPU_PEAK_BF16_TFLOPS.items())))
    for name in ("NVIDIA L40S", "NVIDIA L40", "NVIDIA H100 PCIe", "NVIDIA A100-SXM4-80GB", "NVIDIA GH200 480GB"):
        assert peak_tflops(name, backwards) == peak_tflops(name)


def test_bench_peak_flops_is_the_table_in_flops():
    module = bench_gpu()
    assert module.peak_flops("NVIDIA H100 PCIe") == 756e12 and module.peak_flops("NVIDIA L40") == 181e12
    assert module.peak_flops("a mystery GPU") is None


def test_mfu_arithmetic():
    assert mfu(1000.0, 6e9, 989.0) == pytest.approx(6e12 / 989e12)
    assert mfu(8000.0, 6e9, 989.0, n_gpus=8) == pytest.approx(6e12 / 989e12)
    assert mfu(1000.0, 6e9, None) is None
    with pytest.raises(ValueError):
        mfu(1000.0, 6e9, 989.0, n_gpus=0)


# --------------------------------------------------------------------------------------------------------------
# bench_gpu's timing window


def test_step_window_times_steps_after_warmup_only():
    window = bench_gpu().step_window(warmup_steps=2)
    args, state = SimpleNamespace(), SimpleNamespace(global_step=0, num_input_tokens_seen=0)
    window.on_train_begin(args, state, None)
    assert args.include_num_input_tokens_seen == "non_padding"
    for step in range(5):
        window.on_step_begin(args, state, None)
        time.sleep(0.02)
        state.num_input_tokens_seen += 100 + step  # the Trainer counts each micro-batch's real tokens
        state.global_step += 1
        window.on_step_end(args, state, None)
        time.sleep(0.05)  # evaluation / saving / logging: outside the window
    figures = window.figures()
    assert figures["steps"] == 3 and figures["tokens"] == 102 + 103 + 104
    assert 0.06 <= figures["seconds"] < 0.06 + 0.05  # three 20 ms steps, none of the 50 ms gaps
    assert figures["wall_seconds"] >= 0.06 + 2 * 0.05
    assert figures["tokens_per_second"] == pytest.approx(figures["tokens"] / figures["seconds"], rel=1e-3)


def test_stage_run_window_leaves_evaluation_out(tmp_path, cache_env):
    """The real stage on tiny://llama (CPU): evaluation after every step, made slow, stays outside."""
    from transformers import TrainerCallback

    from bakeoff.data.prepare import prepare_data

    module = bench_gpu()

    class SlowEvaluation(TrainerCallback):
        def on_evaluate(self, args, state, control, **kwargs):
            time.sleep(0.5)

    spec = module.spec_for("tiny://llama", 4)
    prepare_data(spec.data, spec.seed, tmp_path / "data")
    r = module.stage_run("tiny://llama", tmp_path / "data", 4, "lora", warmup_steps=2, peak=0.01,
                         callbacks=(SlowEvaluation(),), eval_steps=1, batch_size=2)
    window = r["window"]
    assert window["steps"] == 2 and window["tokens"] > 0
    assert window["wall_seconds"] >= 0.5  # one slow evaluation between the two measured steps
    assert window["seconds"] < window["wall_seconds"] - 0.45
    assert r["tokens_per_second"] > r["stage_tokens_per_second"]
    assert r["flops_per_token"] > 0 and r["seq_len_effective"] > 0
    assert r["mfu"] == round(r["tokens_per_second"] * r["flops_per_token"] / 0.01e12, 4) > 0  # a CPU-sized peak
