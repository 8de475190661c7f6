"""Running a model's decoder blocks one at a time: their captured inputs, and one block's output.

The greedy split tables (:mod:`allocator.sparsity._greedy`) and the thresholds calibrated under the sparse
model (:mod:`allocator.sparsity._thresholds`) both work block by block outside the model's own forward pass:
they capture what the body hands its blocks (hidden states, positions, masks) and call a block directly.
This module does both, once, for both of them.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from allocator.model import ModelAdapter

#: A block's positional and keyword inputs, as its forward pre-hook sees them.
BlockInputs = tuple[tuple[Any, ...], dict[str, Any]]


class StopForward(Exception):
    """Raised by a hook once it has what it needs: the rest of the forward pass is not wanted."""


@torch.no_grad()
def capture_block_inputs(adapter: ModelAdapter, tokens: torch.Tensor, *, first_only: bool = False) -> list[BlockInputs]:
    """Each block's positional and keyword inputs in a dense forward of ``tokens``.

    With ``first_only``, block 0's alone: the forward stops there (the embedding pass only), so the blocks can
    then be run one by one from it (:func:`next_block_inputs`).
    """
    captured: list[BlockInputs] = []
    layers = adapter.layers[:1] if first_only else adapter.layers

    def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured.append((tuple(a.detach() if torch.is_tensor(a) else a for a in args), dict(kwargs)))
        if first_only:
            raise StopForward

    handles = []
    try:
        handles = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in layers]
        with contextlib.suppress(StopForward):
            adapter.body(input_ids=tokens, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def block_output(layer: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """A block's output hidden states (decoder layers return them alone or first in a tuple, by version)."""
    output = layer(*args, **kwargs)
    return output[0] if isinstance(output, tuple) else output


def next_block_inputs(layer: torch.nn.Module, inputs: BlockInputs) -> BlockInputs:
    """The block's output as the next block's inputs (same keyword inputs: positions, mask)."""
    args, kwargs = inputs
    return (block_output(layer, args, kwargs), *args[1:]), kwargs


def has_llama_layout(layer: torch.nn.Module) -> bool:
    """Whether a block has the modules of Llama's layout that the block-by-block steps call directly:
    ``self_attn.o_proj``, ``post_attention_layernorm`` and an ``mlp`` with ``gate_proj``, ``up_proj`` and
    ``down_proj`` (each caller still checks that its steps reproduce the block's own output)."""
    attention, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    return (
        hasattr(attention, "o_proj")
        and hasattr(layer, "post_attention_layernorm")
        and all(hasattr(mlp, name) for name in ("gate_proj", "up_proj", "down_proj"))
    )
