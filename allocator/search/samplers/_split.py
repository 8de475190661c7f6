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
2. **Share probes** (``probes`` of them; a study's default is 3): the uniform vector at shares between the start points,
   each bisecting the wider interval next to the best share so far (a bracketing line search over the share,
   whose screen value is one evaluation per point). These are search, not start points: which share they try
   depends on the values before them.
3. **The search** continues at the share of the best uniform vector on the screen (the common first sequences
   of the search pool; a start point or a probe): the sampler proposes block vectors there, learning only from
   the trials at that share. Until a start point has a value (another worker is still evaluating them) it
   searches at ``default``.

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
class Place:
    """Where a trial of a split-searching study evaluates: its share of the greedy split, the no-search start point
    it is (its name), or whether it probes the share (the uniform vector at a share the line search chose)."""

    share: float
    no_search: str | None = None
    probe: bool = False

    @property
    def uniform(self) -> bool:
        """Whether the trial evaluates the uniform vector (a start point or a probe) instead of a proposal."""
        return self.no_search is not None or self.probe


@dataclass(frozen=True)
class SplitSearch:
    """The split search of a study: the shares of its no-search start points, the share searched before any
    of them has a value, and how many share probes follow the start points."""

    shares: tuple[float, ...]
    default: float
    probes: int = 0

    def __post_init__(self) -> None:
        values = (*self.shares, self.default)
        if not self.shares or any(not (math.isfinite(s) and 0.0 <= s <= 1.0) for s in values):
            raise InputError(f"Split shares must be numbers in [0, 1], at least one start share; got {values}.")
        if self.probes < 0:
            raise InputError(f"The number of share probes must be at least 0; got {self.probes}.")

    def place(self, study: Study, trial: FrozenTrial) -> Place:
        """``trial``'s place: the first start share no other trial has taken; else, while probes are left, the
        share the line search probes next; else the share of the best finished uniform vector (a start point
        or a probe, by screen value), or ``default`` while none has a value. A retried trial keeps the place of
        the trial it re-runs."""
        inherited = attrs.sampler_place(trial)
        if inherited is not None:
            return Place(*inherited, probe=attrs.is_share_probe(trial))
        alive = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
        others = [t for t in study.get_trials(deepcopy=False, states=alive) if t.number != trial.number]
        starts = [t for t in others if attrs.no_search_name(t) is not None]
        for share in self.shares:
            if not any(same_share(attrs.placed_share(t), share) for t in starts):
                return Place(share, no_search_label(share))
        uniform = [t for t in others if attrs.no_search_name(t) is not None or attrs.is_share_probe(t)]
        finished = [t for t in uniform if t.state == TrialState.COMPLETE and t.value is not None]
        if not finished:
            return Place(self.default)
        best = min(finished, key=lambda t: (float(t.value), t.number))  # type: ignore[arg-type]
        best_share = attrs.placed_share(best)
        best_share = self.default if best_share is None else best_share
        if sum(attrs.is_share_probe(t) for t in others) < self.probes:
            tried = [(s, _value(t)) for t in uniform if (s := attrs.placed_share(t)) is not None]
            probe = next_probe(best_share, tried)
            if probe is not None:
                return Place(probe, probe=True)
        return Place(best_share)


def next_probe(best: float, tried: list[tuple[float, float]]) -> float | None:
    """The share a bracketing line search tries next, given the ``(share, screen value)`` of every tried share
    (``inf`` while pending) and the ``best`` share: the midpoint of the wider interval between ``best`` and its
    nearest tried shares on either side (or the end of [0, 1] where none lies beyond it), of two equal ones the
    one toward the better neighbour; None once both intervals are narrower than 1/64 (finer than it can matter)."""
    below = max((p for p in tried if p[0] < best - _SAME_SHARE), default=(0.0, math.inf))
    above = min((p for p in tried if p[0] > best + _SAME_SHARE), default=(1.0, math.inf))
    sides = [(best - below[0], -below[1], (best + below[0]) / 2), (above[0] - best, -above[1], (best + above[0]) / 2)]
    width, _, midpoint = max(sides)
    if width < 1 / 64 or any(same_share(s, midpoint) for s, _ in tried):
        return None
    return midpoint


def _value(trial: FrozenTrial) -> float:
    return float(trial.value) if trial.state == TrialState.COMPLETE and trial.value is not None else math.inf
