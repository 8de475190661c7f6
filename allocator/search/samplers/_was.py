"""``was``: the WAS search (Wang et al., EMNLP 2025) as the anchor baseline.

Reproduced from ``was/tpe.py`` of the WAS code (read in ``Ming0310/EMNLP25-WAS``, which carries the paper's
README; the paper's own link, HITSZ-Miao-Group/WAS, was not available):

* **Parametrisation, monotone in depth.** One float per block, ``r_b``, suggested in order with chained
  bounds: ``r_0 ∈ [t − 0.02, t]`` and ``r_b ∈ [r_{b−1}, min(max(t + 0.02, r_{b−1}), r_{b−1} + 0.005)]``. So the
  sequence never decreases, rises by at most 0.005 per block and stops rising at ``t + 0.02``. (The
  paper's Algorithm 1 states wider ranges, ``[t − 0.05, t]`` and ``[r_{b−1}, t + 0.05]``; the constants are
  options.) The chain ignores our per-block bounds; the projection enforces them (and the band test
  below uses the vector clipped to them).
* **Sampler.** Optuna's ``TPESampler`` with its defaults (independent, 10 start-up trials), 50 trials in
  the paper. We seed it (WAS does not) so proposals are reproducible.
* **Soft target.** WAS scores a trial whose mean sparsity misses the target by more than 0.01 as
  ``3 · 2500 · |mean(r) − t|`` without evaluating the model, and every other trial by its plain
  perplexity. The mean is over blocks, which is the model-level sparsity because WAS's blocks all have
  the same weight; we use the weighted model-level sparsity.

Reconciliation with our rule that every evaluated vector satisfies the constraint exactly. The low-
dimensional (here: per-block, chained) parameters live in an internal, in-memory Optuna study that is
rebuilt for each proposal from the main study's trials, which store them as system attributes. TPE runs
there. A raw proposal outside the ±0.01 band is told its WAS penalty in the internal study at once and
TPE is asked again (those trials cost nothing in WAS either; they are stored with the accepted proposal
so the rebuild is exact). A raw proposal inside the band is the one evaluated: the one projection puts it
on the constraint (it moves at most 0.01 in model-level sparsity), the main trial evaluates the projected
vector, and its value is told to the internal study against the raw parameters, exactly as WAS would
score it. Two consequences: WAS's 50 trials include its zero-cost infeasible ones, while all of our
trials are evaluations (generous to the baseline), and running trials of other workers enter the
internal study as RUNNING trials with TPE's constant liar (WAS runs one process).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from pydantic import Field

from allocator.search import trial_attributes as attrs
from allocator.search.samplers._base import BlockSampler, History
from allocator.search.samplers._registry import SamplerOptions, register_sampler

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial


class WasOptions(SamplerOptions):
    """Options of ``was``: WAS's code, with the range of its published allocations (``start_width`` and
    ``cap`` 0.04: monotone in depth within about ±4 points of the target, as WAS's Llama-2-7B allocations at
    60% span 0.571-0.630; WAS's code itself uses 0.02).

    Attributes:
        start_width: ``r_0 ∈ [t − start_width, t]``.
        cap: The sequence stops rising at ``t + cap``.
        max_step: The largest rise from one block to the next.
        band: A raw proposal is evaluated only if ``|model_sparsity(r) − t| ≤ band``.
        penalty: A raw proposal outside the band scores ``3 · penalty · |model_sparsity(r) − t|``.
        n_startup_trials: TPE's random start-up trials (counted in the internal study, as in WAS).
        max_attempts: Internal proposals per trial before the one nearest the band is taken anyway.
    """

    start_width: float = Field(default=0.04, ge=0.0, allow_inf_nan=False)
    cap: float = Field(default=0.04, ge=0.0, allow_inf_nan=False)
    max_step: float = Field(default=0.005, ge=0.0, allow_inf_nan=False)
    band: float = Field(default=0.01, ge=0.0, allow_inf_nan=False)
    penalty: float = Field(default=2500.0, gt=0.0, allow_inf_nan=False)
    n_startup_trials: int = Field(default=10, ge=0)
    max_attempts: int = Field(default=200, ge=1)


@register_sampler("was", summary="WAS: TPE over a monotone-in-depth parametrisation with a soft target penalty")
class WasSampler(BlockSampler):
    """WAS: TPE over a monotone-in-depth per-block parametrisation with WAS's soft target penalty.

    Args:
        space: The constraint space.
        seed: The seed (of the internal TPE, combined with the trial number).
        options: :class:`WasOptions` (or its fields as keywords).
    """

    Options: ClassVar[type[SamplerOptions]] = WasOptions
    options: WasOptions

    # ------------------------------------------------------------------ the parametrisation

    def bounds(self, block: int, previous: float | None) -> tuple[float, float]:
        """The range of ``r_block`` given ``r_{block−1}`` (WAS's chained bounds; ``block`` is unused, as in
        WAS every block has the same rule)."""
        t = self.space.target
        if previous is None:
            return max(t - self.options.start_width, 0.0), t
        return previous, min(max(t + self.options.cap, previous), previous + self.options.max_step, 1.0)

    def distributions(self, raw: np.ndarray) -> dict[str, FloatDistribution]:
        """The distributions WAS's TPE used for the raw vector ``raw`` (they depend on the earlier values)."""
        out: dict[str, FloatDistribution] = {}
        previous = None
        for b, value in enumerate(raw):
            lo, hi = self.bounds(b, previous)
            out[f"sparsity_layer_{b}"] = FloatDistribution(lo, hi)
            previous = float(value)
        return out

    def miss(self, raw: np.ndarray) -> float:
        """``|model_sparsity(clip(r, l, u)) − t|``: how far the raw vector misses the target."""
        clipped = np.clip(raw, self.space.lower_array(), self.space.upper_array())
        return abs(float(self.space.model_sparsity(clipped)) - self.space.target)

    def score(self, raw: np.ndarray) -> float | None:
        """WAS's penalty for a raw vector outside the band, or None if it is inside (then it is evaluated)."""
        miss = self.miss(raw)
        return 3.0 * self.options.penalty * miss if miss > self.options.band else None

    # ------------------------------------------------------------------ proposal

    def propose(self, study: Study, trial: FrozenTrial, history: History) -> np.ndarray:
        """Ask WAS's TPE, rebuilt from the study, for raw vectors until one falls inside the band (penalising the
        others), and return it projected onto the constraint."""
        inner, any_running = self._rebuild(study, trial)
        sampler = optuna.samplers.TPESampler(
            seed=int(self.rng(trial).integers(2**31)),
            n_startup_trials=self.options.n_startup_trials,
            constant_liar=any_running,
        )
        inner.sampler = sampler
        rejected: list[list[float]] = []
        best_raw: np.ndarray | None = None
        best_miss = math.inf
        accepted: np.ndarray | None = None
        for _ in range(self.options.max_attempts):
            itrial = inner.ask()
            raw = self._suggest_raw(itrial)
            penalty = self.score(raw)
            if penalty is None:
                inner.tell(itrial, state=TrialState.FAIL)  # it is told for real through the main study
                accepted = raw
                break
            inner.tell(itrial, penalty)
            rejected.append([float(v) for v in raw])
            miss = self.miss(raw)
            if miss < best_miss:
                best_miss, best_raw = miss, raw
        if accepted is None:
            assert best_raw is not None
            accepted = best_raw
            rejected.remove([float(v) for v in best_raw])
        attrs.set_system_attr(study, trial, attrs.WAS_PARAMS, [float(v) for v in accepted])
        attrs.set_system_attr(study, trial, attrs.WAS_REJECTED, rejected)
        return self.space.project(np.clip(accepted, self.space.lower_array(), self.space.upper_array()))

    def _suggest_raw(self, itrial: optuna.Trial) -> np.ndarray:
        values: list[float] = []
        previous = None
        for b in range(self.space.dim):
            lo, hi = self.bounds(b, previous)
            previous = itrial.suggest_float(f"sparsity_layer_{b}", lo, hi)
            values.append(previous)
        return np.asarray(values, dtype=np.float64)

    def _rebuild(self, study: Study, trial: FrozenTrial) -> tuple[optuna.Study, bool]:
        """The internal study: every stored raw proposal with the value WAS would have given it."""
        optuna.logging.disable_default_handler()
        inner = optuna.create_study(direction="minimize", sampler=optuna.samplers.RandomSampler(seed=0))
        optuna.logging.enable_default_handler()
        new: list[Any] = []
        any_running = False
        for t in study.get_trials(deepcopy=False):
            raw_arr = attrs.was_params(t)
            if t.number == trial.number or raw_arr is None:
                continue
            for rejected in attrs.was_rejected(t):
                new.append(self._frozen(rejected, TrialState.COMPLETE, self.score(rejected) or 0.0))
            if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value):
                new.append(self._frozen(raw_arr, TrialState.COMPLETE, float(t.value)))
            elif t.state in (TrialState.RUNNING, TrialState.WAITING):
                new.append(self._frozen(raw_arr, TrialState.RUNNING, None))
                any_running = True
        if new:
            inner.add_trials(new)
        return inner, any_running

    def _frozen(self, raw: np.ndarray, state: TrialState, value: float | None) -> FrozenTrial:
        dists = self.distributions(raw)
        params = {
            name: min(max(float(v), dist.low), dist.high) for (name, dist), v in zip(dists.items(), raw, strict=True)
        }
        return optuna.trial.create_trial(state=state, value=value, params=params, distributions=dists)
