"""The site split in the search's reach: which share of TEAL's greedy split each trial's blocks are split by.

A study with ``sparsity.split: search`` splits each block's sparsity over its sites by a blend of the uniform
split and TEAL's greedy split, ``share`` of the greedy one, and lets the search choose the share. Why: the
gain over the best allocation that needs no search was, measured, mostly the split (a fixed 50/50 blend), and
which split is best changes with the target (at 40% the uniform split beat the greedy one,
``bench/results/frontier.md``).

How, in two stages that any :class:`~allocator.search.samplers.BlockSampler` runs the same way:

1. **No-search start points.** The first trials are the uniform vector at each share of ``shares`` (0 is
   plain uniform, 1 TEAL's greedy-uniform, 0.5 the blend): the allocations a user gets without any search,
   evaluated on the same screen as every other trial.
2. **The search** continues at the share of the best start point on the screen (the common first sequences
   of the search pool): the sampler proposes block vectors there, learning only from the trials at that
   share. Until a start point has a value (another worker is still evaluating them) it searches at
   ``default``.

The choice is a function of what storage holds, like every proposal, so workers agree on it and a resumed
study makes it again. The export compares the start points with the search's best on validation data, so a
search that finds nothing better returns the best start point (``studies.export_study``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from allocator.errors import InputError
from allocator.search import trial_attributes as attrs

#: Shares closer than this are one share.
_SAME_SHARE = 1e-9


def no_search_label(share: float) -> str:
    """The name of the uniform vector at ``share`` of the greedy split: ``uniform``, ``greedy-uniform`` (TEAL's),
    ``blend-uniform`` (0.5), else ``blend-<share>-uniform``."""
    names = {0.0: "uniform", 1.0: "greedy-uniform", 0.5: "blend-uniform"}
    return next((name for value, name in names.items() if same_share(share, value)), f"blend-{share:g}-uniform")


def same_share(a: float | None, b: float) -> bool:
    """Whether ``a`` is the share ``b`` (within 1e-9; None is no share)."""
    return a is not None and abs(a - b) <= _SAME_SHARE


@dataclass(frozen=True)
class SplitSearch:
    """The split search of a study: the shares of its no-search start points, and the share searched before any
    of them has a value."""

    shares: tuple[float, ...]
    default: float

    def __post_init__(self) -> None:
        values = (*self.shares, self.default)
        if not self.shares or any(not (math.isfinite(s) and 0.0 <= s <= 1.0) for s in values):
            raise InputError(f"Split shares must be numbers in [0, 1], at least one start share; got {values}.")

    def place(self, study: Study, trial: FrozenTrial) -> tuple[float, str | None]:
        """``trial``'s share and, for a start point, its name: the first start share no other trial has taken,
        else the share of the best finished start point (by screen value), else ``default``. A retried trial
        keeps the place of the trial it re-runs."""
        inherited = attrs.sampler_place(trial)
        if inherited is not None:
            return inherited
        alive = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
        others = [t for t in study.get_trials(deepcopy=False, states=alive) if t.number != trial.number]
        starts = [t for t in others if attrs.no_search_name(t) is not None]
        for share in self.shares:
            if not any(same_share(attrs.placed_share(t), share) for t in starts):
                return share, no_search_label(share)
        finished = [t for t in starts if t.state == TrialState.COMPLETE and t.value is not None]
        if not finished:
            return self.default, None
        best = min(finished, key=lambda t: (float(t.value), t.number))  # type: ignore[arg-type]
        share = attrs.placed_share(best)
        return (self.default if share is None else share), None
