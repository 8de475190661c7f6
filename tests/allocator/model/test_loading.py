from __future__ import annotations

import pytest

from allocator import ModelSourceError, UnsupportedArchitectureError, load_model, model_fingerprint
from allocator.testing.tiny import build_tiny_model, save_model_dir


def test_loads_a_local_directory_in_eval_mode(tiny_model_dir):
    loaded = load_model(tiny_model_dir)
    assert not loaded.model.training
    assert loaded.source == str(tiny_model_dir)
    assert loaded.identity()["n_blocks"] == 3
    assert len(loaded.fingerprint) == 64


def test_fingerprint_depends_on_shapes_and_weights_not_on_location_or_dtype(tiny_tokenizer, tmp_path):
    import torch

    a = build_tiny_model("llama", seed=0)
    b = build_tiny_model("llama", seed=1)  # same shapes, other weights: another model (a fine-tune, say)
    deeper = build_tiny_model("llama", n_layers=4)
    assert model_fingerprint(a) != model_fingerprint(b)
    assert model_fingerprint(a) != model_fingerprint(deeper)
    saved = load_model(save_model_dir(a, tiny_tokenizer, tmp_path / "copy"))
    assert saved.fingerprint == model_fingerprint(a)
    nudged = build_tiny_model("llama", seed=0)
    with torch.no_grad():
        nudged.model.layers[1].mlp.down_proj.weight.mul_(1.5)  # one matrix of one block changed
    assert model_fingerprint(nudged) != model_fingerprint(a)
    assert model_fingerprint(build_tiny_model("llama", seed=0).to(torch.bfloat16)) == model_fingerprint(a)


def test_missing_path_is_one_clear_error(tmp_path):
    with pytest.raises(ModelSourceError, match=r"neither an embedded model .* nor an existing path"):
        load_model(tmp_path / "missing")


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ModelSourceError, match=r"has no config\.json"):
        load_model(tmp_path)


def test_non_gguf_file_is_refused(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(ModelSourceError, match=r"is not a \.gguf file"):
        load_model(path)


def test_truncated_gguf_is_one_clear_error(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x01" * 20)  # a header cut short
    with pytest.raises(ModelSourceError, match="could not be read"):
        load_model(path, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache" / "models").glob("*/config.json"))  # nothing half-converted is cached


def test_not_a_causal_lm_is_refused(tiny_tokenizer, tmp_path):
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64))
    with pytest.raises(ModelSourceError, match="is not a causal language model"):
        load_model(save_model_dir(model, tiny_tokenizer, tmp_path / "bert"))


def test_unsupported_causal_lm_is_refused_before_loading_weights(tiny_tokenizer, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=512))
    directory = save_model_dir(model, tiny_tokenizer, tmp_path / "gpt2")
    (directory / "model.safetensors").unlink()  # refused from config.json alone
    with pytest.raises(UnsupportedArchitectureError, match="supports llama, mistral, qwen2, qwen3"):
        load_model(directory)


def test_a_sharded_checkpoint_loads_straight_into_the_asked_dtype(tiny_tokenizer, tmp_path):
    import torch

    model = build_tiny_model("llama", len(tiny_tokenizer))
    directory = tmp_path / "sharded"
    model.save_pretrained(directory, max_shard_size="200KB")  # several shards
    tiny_tokenizer.save_pretrained(directory)
    assert len(list(directory.glob("model-*.safetensors"))) > 1
    loaded = load_model(directory, device="cpu", dtype="bfloat16")
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert loaded.dtype == "bfloat16" and loaded.device == "cpu"
    assert loaded.fingerprint == model_fingerprint(model)  # the same model, whatever its precision


def test_out_of_memory_halves_the_batch_and_says_so(tiny_model_dir, monkeypatch):
    import torch

    from allocator import evaluate_tokens

    loaded = load_model(tiny_model_dir)
    tokens = torch.randint(0, 100, (8, 16))
    expected = evaluate_tokens(loaded.adapter, tokens, batch_size=8)
    forward = loaded.adapter.body.forward
    calls = []

    def scarce_memory(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        if kwargs["input_ids"].shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return forward(*args, **kwargs)

    monkeypatch.setattr(loaded.adapter.body, "forward", scarce_memory)
    with pytest.warns(UserWarning, match="evaluating 2 sequences at a time"):
        evaluation = evaluate_tokens(loaded.adapter, tokens, batch_size=8)
    assert calls[:3] == [8, 4, 2] and evaluation.perplexity == pytest.approx(expected.perplexity, rel=1e-5)
