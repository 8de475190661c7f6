"""Architecture adapters: where the decoder blocks and the seven sparsified sites of a model are.

A *site* is one linear layer whose input we sparsify: ``q, k, v, o`` in attention and ``gate, up, down`` in
the MLP. q/k/v read the same tensor (the attention input), and so do gate/up (the MLP input), so they share
one *input group*; each site still gets its own threshold. A site's weight is read from the model
(``weight.numel()``), never from a table keyed by a model name, so grouped-query attention (small k/v) is
right by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from allocator.errors import UnsupportedArchitectureError

if TYPE_CHECKING:
    import torch
    from torch import nn

SITE_NAMES: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")

#: The tensor each site reads; sites of one group read the very same tensor object in the forward pass.
INPUT_GROUPS: dict[str, str] = {
    "q": "attn_in",
    "k": "attn_in",
    "v": "attn_in",
    "o": "attn_out",
    "gate": "mlp_in",
    "up": "mlp_in",
    "down": "mlp_out",
}

# Every supported family lays a decoder block out the same way (Llama's layout), so one path table serves
# them all; a family with another layout gets its own table here.
_LLAMA_LAYOUT: dict[str, str] = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}
_LAYOUTS: dict[str, dict[str, str]] = {
    "llama": _LLAMA_LAYOUT,
    "mistral": _LLAMA_LAYOUT,
    "qwen2": _LLAMA_LAYOUT,
    "qwen3": _LLAMA_LAYOUT,
}

SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(_LAYOUTS)


def site_module_path(architecture: str, site: str) -> str:
    """The dotted path of ``site``'s linear layer inside a decoder block (``self_attn.q_proj``)."""
    layout = _LAYOUTS.get(architecture)
    if layout is None:
        raise UnsupportedArchitectureError(
            f"Architecture {architecture!r} is not supported; sparsealloc supports "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}."
        )
    return layout[site]


@dataclass(frozen=True)
class Site:
    """One sparsified linear input: block ``block``'s projection ``name`` (one of :data:`SITE_NAMES`)."""

    block: int
    name: str
    module: nn.Linear

    @property
    def weight_count(self) -> int:
        """Parameters of the site's weight matrix: what sparsifying its input skips reading."""
        return self.module.weight.numel()

    @property
    def in_features(self) -> int:
        """The width of the site's input: the number of elements its sparsifier scores per token."""
        return self.module.in_features

    @property
    def input_group(self) -> str:
        """The tensor the site reads (:data:`INPUT_GROUPS`); sites of one group can share a score distribution."""
        return INPUT_GROUPS[self.name]


class ModelAdapter:
    """Finds the blocks and sites of a supported causal LM and exposes its body and head.

    ``body`` maps token ids ``B x T`` to final hidden states ``B x T x C`` (after the final norm) and ``head``
    maps hidden states to logits, so the objective can compute the loss in chunks instead of materialising
    ``B x T x V`` logits at once.
    """

    def __init__(self, model: nn.Module) -> None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        layout = _LAYOUTS.get(str(model_type))
        if layout is None:
            raise UnsupportedArchitectureError(
                f"Architecture {model_type!r} is not supported; sparsealloc supports "
                f"{', '.join(SUPPORTED_ARCHITECTURES)}."
            )
        body = getattr(model, "model", None)
        layers = getattr(body, "layers", None)
        head = getattr(model, "lm_head", None)
        if layers is None or head is None:
            raise UnsupportedArchitectureError(
                f"The {model_type!r} model has no `model.layers` / `lm_head`; it is not a causal LM laid out "
                "as transformers lays them out."
            )
        self.model = model
        self.architecture: str = str(model_type)
        self.body: nn.Module = body
        self.head: nn.Module = head
        self.layers: tuple[nn.Module, ...] = tuple(layers)
        self.sites: tuple[tuple[Site, ...], ...] = tuple(
            tuple(Site(block=b, name=name, module=layer.get_submodule(layout[name])) for name in SITE_NAMES)
            for b, layer in enumerate(layers)
        )

    @property
    def n_blocks(self) -> int:
        """The number of decoder blocks: the length of an allocation for this model."""
        return len(self.sites)

    def site_weights(self) -> torch.Tensor:
        """A ``n_blocks x 7`` float64 tensor of site weights (``weight.numel()``)."""
        import torch

        return torch.tensor([[site.weight_count for site in block] for block in self.sites], dtype=torch.float64)

    def block_weights(self) -> torch.Tensor:
        """A ``n_blocks`` float64 tensor: each block's total site weight (the constraint's weights)."""
        return self.site_weights().sum(dim=1)
