"""Tiny random-weight causal LMs and a tiny tokenizer, built in seconds with no download.

Used by the test suite, the soak and anything else that needs a real Hugging Face model directory without
a real model: Llama/Mistral/Qwen2/Qwen3 configs with grouped-query attention (4 query heads, 2 key/value
heads), and a byte-level BPE tokenizer trained on part of the pydoc corpus.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

TINY_VOCAB = 512


def build_tiny_tokenizer(vocab_size: int = TINY_VOCAB) -> Any:
    """A byte-level BPE tokenizer with ``<eos>``, trained on 20 pydoc topics (about a second)."""
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([topics[key] for key in sorted(topics)][:20], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>")


def build_tiny_model(architecture: str, vocab_size: int = TINY_VOCAB, *, n_layers: int = 3, seed: int = 0) -> Any:
    """A random-weight causal LM of ``architecture`` in eval mode (hidden 64, 4 query / 2 key-value heads)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        architecture,
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def save_model_dir(model: Any, tokenizer: Any, directory: Path) -> Path:
    """Save ``model`` and ``tokenizer`` as a Hugging Face model directory."""
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_tiny_model_dir(directory: Path, architecture: str = "llama", *, n_layers: int = 3, seed: int = 0) -> Path:
    """A saved tiny random-weight model with its tokenizer."""
    tokenizer = build_tiny_tokenizer()
    return save_model_dir(
        build_tiny_model(architecture, len(tokenizer), n_layers=n_layers, seed=seed), tokenizer, directory
    )
