from __future__ import annotations

import pytest

from allocator import SITE_NAMES, ModelAdapter, UnsupportedArchitectureError, load_model
from allocator.testing.tiny import build_tiny_model


def test_finds_every_site_of_every_block(tiny_model_dir):
    loaded = load_model(tiny_model_dir)
    adapter = loaded.adapter
    assert adapter.n_blocks == 3
    for b, block in enumerate(adapter.sites):
        assert [site.name for site in block] == list(SITE_NAMES)
        assert all(site.block == b for site in block)
        layer = loaded.model.model.layers[b]
        expected = [
            layer.self_attn.q_proj,
            layer.self_attn.k_proj,
            layer.self_attn.v_proj,
            layer.self_attn.o_proj,
            layer.mlp.gate_proj,
            layer.mlp.up_proj,
            layer.mlp.down_proj,
        ]
        assert [site.module for site in block] == expected


def test_site_weights_follow_numel_including_grouped_query_attention(tiny_model_dir):
    adapter = load_model(tiny_model_dir).adapter
    weights = adapter.site_weights()
    for b, block in enumerate(adapter.sites):
        assert weights[b].tolist() == [float(site.module.weight.numel()) for site in block]
    # 4 query heads, 2 key/value heads of 16: k and v are half the size of q.
    q, k, v = weights[0, 0].item(), weights[0, 1].item(), weights[0, 2].item()
    assert k == v == q / 2
    assert adapter.block_weights().tolist() == weights.sum(dim=1).tolist()


def test_qwen3_is_supported():
    model = build_tiny_model("qwen3")
    assert ModelAdapter(model).architecture == "qwen3"


def test_unsupported_architecture_is_refused_in_one_sentence():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(UnsupportedArchitectureError, match=r"'gpt2' is not supported; sparsealloc supports llama"):
        ModelAdapter(model)
