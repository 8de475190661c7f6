"""Thresholds for one allocation, calibrated under the sparse model, block by block.

A dense calibration's thresholds zero more than their target once the model is sparse: every block's
inputs shift when the blocks before it are sparsified (at a nominal 60% on SmolLM2, 61-65% in reality).
:func:`calibrate_allocation` therefore measures each site's score histogram *with everything upstream of
it already sparsified at the allocation*: all calibration tokens go through one block at a time, and within
a block through one input group at a time in forward order (q/k/v, then o, then gate/up, then down), each
group's thresholds set from its histogram before the next group is measured. The thresholds it yields meet
every site's target on these tokens (up to the histogram's resolution), and the histograms are what the
TEAL export writes.

Cost: a Llama-layout block (``h = x + o_proj(attention)``, ``y = h + down(act(gate(n)) * up(n))`` with
``n = norm(h)``) runs once: the attention half up to the o projection, whose input is kept; then the o
projection, the norm and gate/up from that, keeping the down projection's input; then the down projection.
So the whole calibration costs about one dense body pass (the group inputs kept are the memory it costs).
A block class the decomposition does not reproduce (checked on its first block's first batch) runs once
per group up to that group's sites, then whole: about 2.7 passes. Either way it is done once per export,
not per trial (trials use the ``quantile`` rule of :mod:`allocator.sparsity._sparsifier`: no extra pass).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from allocator.errors import InputError
from allocator.model import INPUT_GROUPS, SITE_NAMES
from allocator.sparsity._blocks import (
    BlockInputs,
    StopForward,
    capture_block_inputs,
    has_llama_layout,
    next_block_inputs,
)
from allocator.sparsity._calibration import Calibration
from allocator.sparsity._histogram import ScoreHistogram, key_counts
from allocator.sparsity._sparse_model import SparseModel, as_block_vector

#: How :func:`calibrate_allocation` runs a block: in one pass (Llama layout), or once per input group.
CALIBRATION_METHODS: tuple[str, ...] = ("one_pass", "per_group")

#: Site positions by input group, in the order a block's forward pass reaches them.
GROUPS: tuple[tuple[int, ...], ...] = ((0, 1, 2), (3,), (4, 5), (6,))


class _GroupRecorder:
    """Histograms of one input group's sites of one block: the sites of a group read the very same tensor
    (:data:`allocator.model.INPUT_GROUPS`), so the first of them to be reached records all of them and stops
    the pass there."""

    def __init__(self, sparse_model: SparseModel, block: int, positions: tuple[int, ...]) -> None:
        self.sparsifiers = sparse_model.sparsifiers
        score = sparse_model.calibration.score
        self.sites = [sparse_model.adapter.sites[block][p] for p in positions]
        self.norms = [score.channel_norms(site.module) for site in self.sites]
        self.counts = {site.name: torch.zeros(1 << 16, dtype=torch.int64) for site in self.sites}

    def _add(self, x: torch.Tensor) -> None:
        """Count the scores of one batch of the group's input (``B x T x C``) for every site of the group."""
        dense = self.sparsifiers.dense_tokens(x)
        magnitudes = x[..., dense:, :].abs() if x.dim() >= 2 else x.abs()
        shared: torch.Tensor | None = None  # sites without channel norms score the same: one histogram
        for site, norms in zip(self.sites, self.norms, strict=True):
            if norms is None:
                shared = key_counts(magnitudes).cpu() if shared is None else shared
                self.counts[site.name] += shared
            else:
                self.counts[site.name] += key_counts(magnitudes.float() * norms.to(magnitudes.device)).cpu()

    def _histograms(self) -> dict[str, ScoreHistogram]:
        return {name: ScoreHistogram.from_key_counts(counts) for name, counts in self.counts.items()}

    def record(self, group_inputs: Iterator[torch.Tensor]) -> dict[str, ScoreHistogram]:
        """Histograms of the group's sites from their input, given batch by batch (no pass of the block)."""
        for x in group_inputs:
            self._add(x)
        return self._histograms()

    def run(self, layer: torch.nn.Module, inputs: list[BlockInputs]) -> dict[str, ScoreHistogram]:
        """Histograms of the group's sites, running the block on each batch of ``inputs`` up to the group."""

        def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            self._add(args[0])
            raise StopForward

        handles = [site.module.register_forward_pre_hook(hook) for site in self.sites]
        try:
            for args, kwargs in inputs:
                with contextlib.suppress(StopForward):
                    layer(*args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
        return self._histograms()


class _OnePassBlock:
    """A Llama-layout block run in the order its groups are calibrated, each step from the kept input of the
    last (module docstring): the o projection's input, then the down projection's, then the block output."""

    def __init__(self, layer: torch.nn.Module, inputs: list[BlockInputs]) -> None:
        self.layer, self.inputs = layer, inputs
        self.attention: list[torch.Tensor] = []  # the o projection's raw input, per batch
        self.h: list[torch.Tensor] = []  # x + o_proj(attention), per batch
        self.down_inputs: list[torch.Tensor] = []  # act(gate(n)) * up(n), per batch

    def reproduces_the_block(self) -> bool:
        """Whether the steps give the block's own output on the first batch (dense: no thresholds set yet)."""
        args, kwargs = self.inputs[0]
        expected = next_block_inputs(self.layer, self.inputs[0])[0][0]
        attention = _stopped_at(self.layer, self.layer.self_attn.o_proj, args, kwargs)
        h = args[0] + self.layer.self_attn.o_proj(attention)
        down_input = _stopped_at(
            self.layer.mlp, self.layer.mlp.down_proj, (self.layer.post_attention_layernorm(h),), {}
        )
        rebuilt = h + self.layer.mlp.down_proj(down_input)
        scale = float(expected.abs().max()) or 1.0
        return bool(torch.allclose(rebuilt, expected, rtol=1e-4, atol=1e-5 * scale))

    def group_inputs(self, group: int) -> Iterator[torch.Tensor]:
        """The inputs of group 1 (o), 2 (gate/up) or 3 (down), batch by batch, under the thresholds now set."""
        if group == 1:
            for args, kwargs in self.inputs:
                self.attention.append(_stopped_at(self.layer, self.layer.self_attn.o_proj, args, kwargs))
                yield self.attention[-1]
        elif group == 2:
            for (args, _kwargs), attention in zip(self.inputs, self.attention, strict=True):
                self.h.append(args[0] + self.layer.self_attn.o_proj(attention))
                yield self.layer.post_attention_layernorm(self.h[-1])
        else:
            mlp = self.layer.mlp
            for h in self.h:
                self.down_inputs.append(_stopped_at(mlp, mlp.down_proj, (self.layer.post_attention_layernorm(h),), {}))
                yield self.down_inputs[-1]

    def next_inputs(self) -> list[BlockInputs]:
        """The block's outputs under every threshold, as the next block's inputs."""
        outputs = []
        for (args, kwargs), h, down_input in zip(self.inputs, self.h, self.down_inputs, strict=True):
            outputs.append(((h + self.layer.mlp.down_proj(down_input), *args[1:]), kwargs))
        return outputs


def _stopped_at(
    runner: torch.nn.Module, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> torch.Tensor:
    """``module``'s raw input (before any sparsifier hook) when ``runner`` runs on the inputs; stops there."""
    captured: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, hook_args: tuple[Any, ...]) -> None:
        captured.append(hook_args[0])
        raise StopForward

    handle = module.register_forward_pre_hook(hook, prepend=True)
    try:
        with contextlib.suppress(StopForward):
            runner(*args, **kwargs)
    finally:
        handle.remove()
    return captured[0]


@torch.no_grad()
def calibrate_allocation(
    sparse_model: SparseModel,
    allocation: Sequence[float] | torch.Tensor | float,
    tokens: torch.Tensor,
    *,
    batch_size: int = 8,
    method: str = "one_pass",
    progress: Callable[[int], None] | None = None,
) -> Calibration:
    """The calibration of ``allocation`` under the sparse model on ``tokens`` (``n x seq_len``).

    Its histograms are measured with everything upstream sparsified at the allocation, so its
    ``thresholds(site_sparsities)`` meet every site's target on these tokens. ``progress`` is called with 1
    after each block. ``method`` (:data:`CALIBRATION_METHODS`) says only how the blocks run (module
    docstring); the histograms are the same.
    """
    if method not in CALIBRATION_METHODS:
        raise InputError(f"The value of `method` should be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}.")
    if tokens.dim() != 2 or tokens.shape[0] == 0:
        raise InputError(f"Calibration tokens should be a non-empty n x seq_len tensor, got {tuple(tokens.shape)}.")
    adapter = sparse_model.adapter
    adapter.model.eval()
    site_sparsities = sparse_model.site_sparsities(allocation)
    started = time.perf_counter()
    device = next(adapter.model.parameters()).device
    inputs = [
        capture_block_inputs(adapter, tokens[i : i + batch_size].to(device), first_only=True)[0]
        for i in range(0, tokens.shape[0], batch_size)
    ]
    thresholds = torch.zeros(adapter.n_blocks, len(SITE_NAMES), dtype=torch.float64)
    table: list[tuple[ScoreHistogram, ...]] = []
    sparsifiers = sparse_model.sparsifiers
    with sparsifiers:
        reproduced: dict[type, bool] = {}  # checked on the first block of each class: they share the forward
        for b, layer in enumerate(adapter.layers):
            fits = method == "one_pass" and has_llama_layout(layer)
            steps = _OnePassBlock(layer, inputs) if fits else None
            if steps is not None and type(layer) not in reproduced:
                reproduced[type(layer)] = steps.reproduces_the_block()
            if steps is not None and not reproduced[type(layer)]:
                steps = None
            histograms = _calibrate_block(sparse_model, b, layer, inputs, steps, thresholds, site_sparsities)
            inputs = steps.next_inputs() if steps else [next_block_inputs(layer, chunk) for chunk in inputs]
            table.append(_shared(histograms, sparse_model.calibration.score.shares_group_distribution))
            if progress is not None:
                progress(1)
    return Calibration(
        score=sparse_model.calibration.score,
        histograms=tuple(table),
        model_fingerprint=sparse_model.calibration.model_fingerprint,
        n_tokens=int(tokens.numel()),
        seconds=time.perf_counter() - started,
        data={"allocation": [float(s) for s in as_block_vector(allocation, adapter.n_blocks)]},
    )


def _calibrate_block(
    sparse_model: SparseModel,
    block: int,
    layer: torch.nn.Module,
    inputs: list[BlockInputs],
    steps: _OnePassBlock | None,
    thresholds: torch.Tensor,
    site_sparsities: torch.Tensor,
) -> dict[str, ScoreHistogram]:
    """One block's histograms, group by group in forward order; fills the block's row of ``thresholds`` (and
    leaves them set on the sparsifiers, for the block's output)."""
    sparsifiers = sparse_model.sparsifiers
    histograms: dict[str, ScoreHistogram] = {}
    for group, positions in enumerate(GROUPS):
        sparsifiers.set_thresholds(thresholds)  # this block's earlier groups sparsify; the rest is dense
        recorder = _GroupRecorder(sparse_model, block, positions)
        if steps is None or group == 0:  # q/k/v: the input norm alone runs
            histograms |= recorder.run(layer, inputs)
        else:
            histograms |= recorder.record(steps.group_inputs(group))
        for p in positions:
            name = SITE_NAMES[p]
            thresholds[block, p] = histograms[name].thresholds(site_sparsities[block, p : p + 1])[0]
    sparsifiers.set_thresholds(thresholds)
    return histograms


def _shared(histograms: dict[str, ScoreHistogram], shared: bool) -> tuple[ScoreHistogram, ...]:
    """One block's row of histograms in site order; sites of one input group share one object (magnitude)."""
    if not shared:
        return tuple(histograms[name] for name in SITE_NAMES)
    first = {}
    for name in SITE_NAMES:
        first.setdefault(INPUT_GROUPS[name], histograms[name])
    return tuple(first[INPUT_GROUPS[name]] for name in SITE_NAMES)
