"""``evopress``: EvoPress's (1+λ) evolutionary search (Sieberling et al., ICML 2025), on block sparsities.

Our own code, after ``evo_prune_search.py`` of IST-DASLab/EvoPress. What carries over:

* **Representation and mutation.** EvoPress gives each unit a level; one level is a fixed number of
  weights, so a +1/−1 swap between two units keeps the total number of zeros fixed. Here a level of block
  ``b`` is ``q / w_b`` of sparsity with ``q = step · mean(w)`` weights, and a flip moves block ``i`` down and
  block ``j`` up by one level, ``w_i Δs_i = −q = −w_j Δs_j``: the model-level sparsity is unchanged exactly.
  Flips per offspring: ``min(randint(1,3), randint(1,3))`` (1, 2, 3 with probability 5/9, 3/9, 1/9). A flip
  is only drawn among blocks that stay within their bounds and within ``num_levels`` levels of the start
  (EvoPress's level database spans ``[−num_levels, num_levels]``). Defaults follow EvoPress:
  ``num_levels = 8`` and ``step = 0.5·min(t, 1 − t)/num_levels`` (its ``weights_diff`` default).
* **Initialisation.** The parent of the first generation is the uniform vector (EvoPress: all levels 0),
  evaluated as the study's first trial.
* **Selection, elitist.** The parent of generation ``g`` is the best finished trial among all trials of
  generations before ``g`` (the previous parent included, so the parent survives unless beaten).

* **Multi-step selection with fresh draws (the reference form, the default).** One trial is one generation:
  the sampler proposes ``λ`` offspring of the parent (written to the trial as a selection plan, see
  :func:`allocator.search.trial_attributes.selection_plan`) and the study runner evaluates them in stages; each
  stage draws fresh sequences from the search pool, evaluates every surviving candidate on them (KL to the
  dense model, EvoPress's fitness) and keeps the best ``survivors``; the last stage adds the parent
  (elitism), re-evaluated on that stage's fresh sequences. The trial's evaluated vector is the winner, the
  next generation's parent. ``stages`` defaults to ``[[2, 2], [8, 1]]`` sequences and survivors with
  ``λ = 8``: EvoPress's 2k → 16k tokens with 8 → 2 → 1 survivors, scaled to a budget of tens of thousands
  of tokens rather than millions.

With ``stages: null`` the sampler instead proposes one offspring per trial, scored like every other trial on
the study's common screen: ``λ`` consecutive trials form a generation, whose parent is the best finished
trial of the earlier generations, and offspring that repeat an evaluated or pending point are redrawn.

Stateless either way: the parent and the random draws are functions of the trials in storage, the seed and
the trial number.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import numpy as np
from pydantic import Field

from allocator.search import trial_attributes as attrs
from allocator.search._constraint import ConstraintSpace
from allocator.search.samplers._base import BlockSampler, History, is_duplicate
from allocator.search.samplers._registry import SamplerOptions, register_sampler

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial


class EvoPressOptions(SamplerOptions):
    """Options of ``evopress``.

    Attributes:
        offspring: ``λ``, offspring per generation.
        num_levels: Levels each block may move away from the start, either way.
        step: Sparsity of one level for a block of average weight; default ``0.5·min(t, 1−t)/num_levels``.
        max_flips: Flips per offspring are ``min(randint(1, max_flips), randint(1, max_flips))``.
        stages: ``[sequences, survivors]`` of each selection stage, on fresh sequences; null: one offspring
            per trial on the common screen.
    """

    offspring: int = Field(default=8, ge=1)
    num_levels: int = Field(default=8, ge=1)
    step: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)
    max_flips: int = Field(default=3, ge=1)
    stages: list[Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=2, max_length=2)]] | None = Field(
        default_factory=lambda: [[2, 2], [8, 1]], min_length=1
    )


@register_sampler("evopress", summary="EvoPress: (1+λ) evolutionary search with weight-preserving level swaps")
class EvoPressSampler(BlockSampler):
    """EvoPress-style (1+λ) search with weight-preserving level swaps between blocks.

    Args:
        space: The constraint space.
        seed: The seed.
        options: :class:`EvoPressOptions` (or its fields as keywords).
    """

    Options: ClassVar[type[SamplerOptions]] = EvoPressOptions
    options: EvoPressOptions

    def __init__(
        self, *, space: ConstraintSpace, seed: int | None = None, options: EvoPressOptions | None = None, **values: Any
    ) -> None:
        super().__init__(space=space, seed=seed, options=options, **values)
        o = self.options
        t = space.target
        self._step = 0.5 * min(t, 1.0 - t) / o.num_levels if o.step is None else o.step
        self._stages = None if o.stages is None else [(int(n), int(k)) for n, k in o.stages]

    def generation(self, number: int) -> int:
        """The generation of trial ``number`` (trial 0, the uniform start, is generation −1)."""
        return -1 if number == 0 else (number - 1) // self.options.offspring

    def propose(self, study: Study, trial: FrozenTrial, history: History) -> np.ndarray:
        """The trial's vector: with selection stages, the parent of a generation whose offspring the trial's plan lists;
        otherwise the uniform start first, then one new offspring of the generation's parent."""
        if self._stages is not None:
            return self._generation(study, trial, history)
        start = self.space.uniform_vector()
        seen = history.seen()
        if history.n == 0 and not is_duplicate(start, seen):
            return start  # the initial parent is evaluated first
        parent = self.parent(history, self.generation(trial.number), start)
        rng = self.rng(trial)
        for _ in range(1000):
            child = self._mutate(parent, start, rng)
            if child is not None and not is_duplicate(child, seen):
                return self.space.project(child)
        # The neighbourhood is exhausted (tiny bounds): fall back to any unseen mutation of the start.
        for _ in range(1000):
            child = self._mutate(start, start, rng)
            if child is not None and not is_duplicate(child, seen):
                return self.space.project(child)
        return parent

    def _generation(self, study: Study, trial: FrozenTrial, history: History) -> np.ndarray:
        """Propose the parent and write the generation's plan: ``λ`` distinct offspring, staged selection."""
        start = self.space.uniform_vector()
        parent = history.X[int(np.argmax(history.numbers))].copy() if history.n else start
        rng = self.rng(trial)
        offspring: list[np.ndarray] = []
        for _ in range(1000 * self.options.offspring):
            if len(offspring) == self.options.offspring:
                break
            child = self._mutate(parent, start, rng)
            if child is None:
                continue
            child = self.space.project(child)
            if not is_duplicate(child, np.array([parent, *offspring]).reshape(-1, self.space.dim)):
                offspring.append(child)
        stages = [[int(n), int(k)] for n, k in self._stages]  # JSON-like, as storage hands it back
        plan = {"candidates": [[float(v) for v in c] for c in [parent, *offspring]], "stages": stages}
        attrs.set_system_attr(study, trial, attrs.SELECTION_PLAN, plan)
        return parent

    def parent(self, history: History, generation: int, start: np.ndarray) -> np.ndarray:
        """The best finished vector among trials of earlier generations, or ``start`` if none finished."""
        first_of_generation = 1 + generation * self.options.offspring
        mask = history.numbers < first_of_generation
        if not mask.any():
            return start
        idx = np.flatnonzero(mask)
        return history.X[idx[int(np.argmin(history.y[idx]))]].copy()

    def _mutate(self, parent: np.ndarray, start: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        w = self.space.weight_array()
        lo, hi = self.space.lower_array(), self.space.upper_array()
        quantum = self._step * float(w.mean())  # weights per level
        delta = quantum / w  # sparsity of one level, per block
        child = parent.copy()
        max_flips, num_levels = self.options.max_flips, self.options.num_levels
        flips = min(int(rng.integers(1, max_flips + 1)), int(rng.integers(1, max_flips + 1)))
        for _ in range(flips):
            level = (child - start) / delta
            can_decr = np.flatnonzero((child - delta >= lo - 1e-12) & (level - 1 >= -num_levels - 1e-9))
            can_incr = np.flatnonzero((child + delta <= hi + 1e-12) & (level + 1 <= num_levels + 1e-9))
            if can_decr.size == 0 or can_incr.size == 0:
                return None
            i = int(rng.choice(can_decr))
            j = int(rng.choice(can_incr))
            if i == j:
                continue  # as in EvoPress, picking the same unit twice makes the flip a no-op
            child[i] -= delta[i]
            child[j] += delta[j]
        return np.clip(child, lo, hi)
