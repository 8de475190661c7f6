"""A sparse-activation model: per-block sparsities in, per-site thresholds on hooked linear inputs.

An *allocation* is one sparsity per block. A *split rule* turns it into per-site sparsities: ``uniform``
gives every site the block's value; ``greedy`` looks the block's value up in a table, learnt at calibration,
of the site split that least disturbs the block's output; ``blend`` is a mixture of the two (a fixed share of
the greedy split, or one the study searches: :meth:`SparseModel.with_split`). Either way
the site-weighted mean of a block's site sparsities equals the block's value, so the model-level constraint
on blocks holds for sites too.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

import torch

from allocator.errors import InputError
from allocator.model import SITE_NAMES, ModelAdapter
from allocator.sparsity._calibration import Calibration
from allocator.sparsity._sparsifier import Sparsifiers


class SplitRule(Protocol):
    """Maps per-block sparsities to per-site sparsities."""

    name: str

    def site_sparsities(self, block_sparsities: torch.Tensor) -> torch.Tensor:
        """``n_blocks`` float64 in, ``n_blocks x 7`` float64 out."""
        ...


class UniformSplit:
    """Every site of a block at the block's sparsity."""

    name = "uniform"

    def site_sparsities(self, block_sparsities: torch.Tensor) -> torch.Tensor:
        """``n_blocks`` float64 in, ``n_blocks x 7`` float64 out: each block's value repeated over its sites."""
        return block_sparsities.to(torch.float64).unsqueeze(1).expand(-1, len(SITE_NAMES)).clone()


class BlendSplit:
    """A fixed mixture of two split rules: ``weight`` of ``other``'s site split, the rest uniform.

    Why: a search over blocks under the uniform split fits the search domain's text best, while TEAL's greedy
    split (learnt on block outputs) carries better to other text (``bench/results/allocators.md``). A
    convex mixture keeps each block's site-weighted mean at the block's value, because both rules do.
    """

    name = "blend"

    def __init__(self, other: SplitRule, weight: float) -> None:
        if not 0.0 <= weight <= 1.0:
            raise InputError(f"The weight of a blended split should be in [0, 1], got {weight}.")
        self.other = other
        self.weight = weight

    def site_sparsities(self, block_sparsities: torch.Tensor) -> torch.Tensor:
        """``n_blocks`` float64 in, ``n_blocks x 7`` float64 out: ``weight`` of the other split, the rest uniform."""
        uniform = UniformSplit().site_sparsities(block_sparsities)
        return (1.0 - self.weight) * uniform + self.weight * self.other.site_sparsities(block_sparsities)


def as_block_vector(allocation: Sequence[float] | torch.Tensor | float, n_blocks: int) -> torch.Tensor:
    """Validate an allocation (a scalar means uniform) as a ``n_blocks`` float64 tensor in [0, 1)."""
    vector = torch.as_tensor(allocation, dtype=torch.float64)
    if vector.dim() == 0:
        vector = vector.expand(n_blocks).clone()
    if tuple(vector.shape) != (n_blocks,):
        raise InputError(
            f"An allocation should have one sparsity per block ({n_blocks}), got shape {tuple(vector.shape)}."
        )
    if bool(((vector < 0) | (vector >= 1) | vector.isnan()).any()):
        bad = vector[(vector < 0) | (vector >= 1) | vector.isnan()][0].item()
        raise InputError(f"Every sparsity should be in [0, 1), got {bad}.")
    return vector


class SparseModel:
    """A model with calibrated sparsifiers on every site.

    Use :meth:`applied` to run the model at an allocation: it installs every hook, sets the thresholds and
    removes all hooks when the block ends, so the model is dense again between evaluations.
    """

    def __init__(
        self,
        adapter: ModelAdapter,
        calibration: Calibration,
        *,
        split: SplitRule | None = None,
        sparsify_fraction: float = 1.0,
    ) -> None:
        if calibration.n_blocks != adapter.n_blocks:
            raise InputError(
                f"The calibration has {calibration.n_blocks} blocks but the model has {adapter.n_blocks}; "
                "it was made for another model."
            )
        self.adapter = adapter
        self.calibration = calibration
        self.split: SplitRule = split or UniformSplit()
        self.sparsifiers = Sparsifiers(adapter, score=calibration.score, sparsify_fraction=sparsify_fraction)
        self._site_weights = adapter.site_weights()

    def with_split(self, split: SplitRule | None) -> SparseModel:
        """The same model, calibration and hooks under another split rule (None: uniform).

        Why: a study that searches the split evaluates trials under different rules; they share the one set of
        sparsifiers (only one allocation is applied at a time), so nothing is recomputed."""
        other = copy.copy(self)
        other.split = split or UniformSplit()
        return other

    @property
    def n_blocks(self) -> int:
        """The number of blocks: the length of an allocation."""
        return self.adapter.n_blocks

    @property
    def sparsify_fraction(self) -> float:
        """The share of each sequence's trailing tokens that is sparsified (see :class:`Sparsifiers`)."""
        return self.sparsifiers.sparsify_fraction

    def site_sparsities(self, allocation: Sequence[float] | torch.Tensor | float) -> torch.Tensor:
        """The ``n_blocks x 7`` per-site sparsities the split rule gives ``allocation``."""
        return self.split.site_sparsities(as_block_vector(allocation, self.n_blocks))

    def model_sparsity(self, allocation: Sequence[float] | torch.Tensor | float) -> float:
        """Nominal site-weighted model-level sparsity of ``allocation``."""
        sites = self.site_sparsities(allocation)
        return float((sites * self._site_weights).sum() / self._site_weights.sum())

    def set_allocation(
        self,
        allocation: Sequence[float] | torch.Tensor | float,
        *,
        rule: str = "threshold",
        thresholds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Set the sparsifiers for ``allocation``; returns the per-site sparsities.

        ``rule`` (see :data:`allocator.RULES`): ``threshold`` uses ``thresholds`` (a ``n_blocks x 7`` tensor,
        e.g. from :func:`allocator.calibrate_thresholds`), by default the dense calibration's inverse CDF;
        ``quantile`` and ``topk`` zero exactly each site's share of the inputs of every forward pass.
        """
        sites = self.site_sparsities(allocation)
        if rule == "threshold":
            self.sparsifiers.set_thresholds(self.calibration.thresholds(sites) if thresholds is None else thresholds)
        else:
            self.sparsifiers.set_targets(sites, rule=rule)
        return sites

    @contextmanager
    def applied(
        self,
        allocation: Sequence[float] | torch.Tensor | float,
        *,
        rule: str = "threshold",
        thresholds: torch.Tensor | None = None,
    ) -> Iterator[SparseModel]:
        """Run the model sparsified at ``allocation`` inside the block; counts start from zero."""
        self.set_allocation(allocation, rule=rule, thresholds=thresholds)
        self.sparsifiers.reset_counts()
        with self.sparsifiers:
            yield self

    def measured_sparsity(self) -> float:
        """Site-weighted share of inputs zeroed since the last :meth:`applied` began."""
        return self.sparsifiers.measured_model_sparsity()
