"""Thresholds for one allocation, calibrated under the sparse model, block by block.

A dense calibration's thresholds zero more than their target once the model is sparse: every block's
inputs shift when the blocks before it are sparsified (at a nominal 60% on SmolLM2, 61-65% in reality).
:func:`calibrate_allocation` therefore measures each site's score histogram *with everything upstream of
it already sparsified at the allocation*: all calibration tokens go through one block at a time, and within
a block through one input group at a time in forward order (q/k/v, then o, then gate/up, then down), each
group's thresholds set from its histogram before the next group is measured. The thresholds it yields meet
every site's target on these tokens (up to the histogram's resolution), and the histograms are what the
TEAL export writes.

Cost: each block runs about 2.7 times (once per group up to that group's sites, then whole), so a little
under three dense body passes over the calibration tokens; it is done once per export, not per trial (trials
use the ``quantile`` rule of :mod:`allocator.sparsity._sparsifier`, which needs no extra pass).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from allocator.errors import InputError
from allocator.model import INPUT_GROUPS, SITE_NAMES
from allocator.sparsity._blocks import BlockInputs, StopForward, capture_block_inputs, next_block_inputs
from allocator.sparsity._calibration import Calibration
from allocator.sparsity._histogram import ScoreHistogram, key_counts
from allocator.sparsity._sparse_model import SparseModel, as_block_vector

#: Site positions by input group, in the order a block's forward pass reaches them.
GROUPS: tuple[tuple[int, ...], ...] = ((0, 1, 2), (3,), (4, 5), (6,))


class _GroupRecorder:
    """Hooks on one input group's sites of one block that histogram their scores, then stop the pass."""

    def __init__(self, sparse_model: SparseModel, block: int, positions: tuple[int, ...]) -> None:
        self.sparsifiers = sparse_model.sparsifiers
        self.score = sparse_model.calibration.score
        self.sites = [sparse_model.adapter.sites[block][p] for p in positions]
        self.counts = {site.name: torch.zeros(1 << 16, dtype=torch.int64) for site in self.sites}
        self._pending: set[str] = set()

    def _hook(self, name: str, norms: torch.Tensor | None) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]  # (B, T, C)
            dense = self.sparsifiers.dense_tokens(x)
            scores = x[..., dense:, :].abs() if x.dim() >= 2 else x.abs()
            if norms is not None:
                scores = scores.float() * norms.to(scores.device)
            self.counts[name] += key_counts(scores).cpu()
            self._pending.discard(name)
            if not self._pending:
                raise StopForward

        return hook

    def run(self, layer: torch.nn.Module, inputs: list[BlockInputs]) -> dict[str, ScoreHistogram]:
        handles = [
            site.module.register_forward_pre_hook(self._hook(site.name, self.score.channel_norms(site.module)))
            for site in self.sites
        ]
        try:
            for args, kwargs in inputs:
                self._pending = {site.name for site in self.sites}
                with contextlib.suppress(StopForward):
                    layer(*args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
        return {name: ScoreHistogram.from_key_counts(counts) for name, counts in self.counts.items()}


@torch.no_grad()
def calibrate_allocation(
    sparse_model: SparseModel,
    allocation: Sequence[float] | torch.Tensor | float,
    tokens: torch.Tensor,
    *,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> Calibration:
    """The calibration of ``allocation`` under the sparse model on ``tokens`` (``n x seq_len``).

    Its histograms are measured with everything upstream sparsified at the allocation, so its
    ``thresholds(site_sparsities)`` meet every site's target on these tokens. ``progress`` is called with 1
    after each block.
    """
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
        for b, layer in enumerate(adapter.layers):
            histograms: dict[str, ScoreHistogram] = {}
            for positions in GROUPS:
                sparsifiers.set_thresholds(thresholds)  # this block's earlier groups sparsify; the rest is dense
                histograms |= _GroupRecorder(sparse_model, b, positions).run(layer, inputs)
                for p in positions:
                    name = SITE_NAMES[p]
                    thresholds[b, p] = histograms[name].thresholds(site_sparsities[b, p : p + 1])[0]
            sparsifiers.set_thresholds(thresholds)
            inputs = [next_block_inputs(layer, chunk) for chunk in inputs]
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


def _shared(histograms: dict[str, ScoreHistogram], shared: bool) -> tuple[ScoreHistogram, ...]:
    """One block's row of histograms in site order; sites of one input group share one object (magnitude)."""
    if not shared:
        return tuple(histograms[name] for name in SITE_NAMES)
    first = {}
    for name in SITE_NAMES:
        first.setdefault(INPUT_GROUPS[name], histograms[name])
    return tuple(first[INPUT_GROUPS[name]] for name in SITE_NAMES)
