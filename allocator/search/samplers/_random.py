"""The ``random`` baseline: points uniform on the constraint polytope (hit-and-run)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import Field

from allocator.search._constraint import ConstraintSpace
from allocator.search.samplers._base import BlockSampler, History
from allocator.search.samplers._registry import SamplerOptions, register_sampler

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial

# One hit-and-run chain per (space, seed), drawn in chunks of fixed size so that the k-th sample does not
# depend on how many were asked for before: a pure function of (space, seed, k), merely memoised.
_CHUNK = 64
_CHAINS: dict[tuple[ConstraintSpace, int], _Chain] = {}
_LOCK = threading.Lock()


class _Chain:
    def __init__(self, space: ConstraintSpace, seed: int, n_burnin: int, n_thinning: int) -> None:
        import math

        import torch
        from botorch.utils.sampling import HitAndRunPolytopeSampler

        self._space = space
        free = np.flatnonzero(space.free_mask)
        self._free = free
        w = space.weight_array()
        pinned = ~space.free_mask
        rhs = space.rhs - math.fsum(w[pinned] * space.lower_array()[pinned])
        with torch.device("cpu"):
            self._sampler = HitAndRunPolytopeSampler(
                bounds=torch.tensor(space.bounds_array()[:, free], dtype=torch.float64),
                equality_constraints=(
                    torch.tensor(w[free][None, :], dtype=torch.float64),
                    torch.tensor([[rhs]], dtype=torch.float64),
                ),
                n_burnin=n_burnin,
                n_thinning=n_thinning,
                seed=int(seed) % (2**31 - 1),
            )
        self._samples = np.zeros((0, space.dim))

    def get(self, k: int) -> np.ndarray:
        import torch

        while self._samples.shape[0] <= k:
            with torch.device("cpu"):
                draws = self._sampler.draw(_CHUNK).numpy()
            block = np.repeat(self._space.center()[None, :], _CHUNK, axis=0)
            block[:, self._free] = draws
            self._samples = np.concatenate([self._samples, self._space.project(block)])
        return self._samples[k].copy()


class RandomOptions(SamplerOptions):
    """Options of ``random``: the hit-and-run chain's burn-in steps and thinning (defaults scale with the
    number of free blocks ``m``: ``200·m`` and ``max(8, m)``)."""

    n_burnin: int | None = Field(default=None, ge=0)
    n_thinning: int | None = Field(default=None, ge=1)


@register_sampler("random", summary="points uniform on the constraint polytope (hit-and-run)")
class RandomBlockSampler(BlockSampler):
    """Trial ``k`` gets the ``k``-th point of one seeded hit-and-run chain on the polytope.

    Hit-and-run (BoTorch's ``HitAndRunPolytopeSampler`` with the equality constraint, ``n_burnin`` steps of
    burn-in, every ``n_thinning``-th step kept) is asymptotically uniform on
    ``{wᵀs = t·Σw, l ≤ s ≤ u}``. Defaults scale with the number of free blocks ``m``: ``200·m`` steps of
    burn-in and a thinning of ``max(8, m)`` (BoTorch's fixed 10,000 and 32 are too slow for tests at
    small ``m`` and no better at ``m = 30``). Indexing the chain by trial number makes the proposal a function of seed
    and trial number only: parallel workers never propose the same point, and a resumed study continues
    the same sequence.

    Args:
        space: The constraint space.
        seed: The chain's seed.
        options: :class:`RandomOptions` (or its fields as keywords).
    """

    Options: ClassVar[type[SamplerOptions]] = RandomOptions
    options: RandomOptions

    def __init__(
        self, *, space: ConstraintSpace, seed: int | None = None, options: RandomOptions | None = None, **values: Any
    ) -> None:
        super().__init__(space=space, seed=seed, options=options, **values)
        o = self.options
        m = int(space.free_mask.sum())
        self._n_burnin = o.n_burnin if o.n_burnin is not None else 200 * m
        self._n_thinning = o.n_thinning if o.n_thinning is not None else max(8, m)

    def propose(self, study: Study, trial: FrozenTrial, history: History) -> np.ndarray:
        """Sample ``trial.number`` of the seeded hit-and-run chain, whatever the history: a function of seed and trial
        number only."""
        return self._chain().get(trial.number)

    def _chain(self) -> _Chain:
        key: Any = (self.space, self.seed, self._n_burnin, self._n_thinning)
        with _LOCK:
            chain = _CHAINS.get(key)
            if chain is None:
                if len(_CHAINS) > 32:
                    _CHAINS.clear()
                chain = _Chain(self.space, self.seed, self._n_burnin, self._n_thinning)
                _CHAINS[key] = chain
            return chain
