"""Every attribute sparsealloc stores on an Optuna trial, with typed writers and readers.

User attributes (what a person reading the study with Optuna or optuna-dashboard wants to see) hold the
evaluated vector and what the evaluation measured; system attributes (``sparsealloc:`` keys) hold the
samplers' bookkeeping. Samplers write system attributes at sampling time through
:func:`set_system_attr`, the one place that reaches into Optuna's private storage (Optuna's public
``Trial.set_system_attr`` is deprecated, and a ``FrozenTrial`` has no setter at all).

This module imports neither torch nor botorch, so ``status``, ``list`` and ``export`` stay fast.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from allocator.search import _optuna_internals as optuna_internals

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

# -- user attributes ----------------------------------------------------------------------------------------
#: The model-level sparsity the trial's vector meets exactly (one of a frontier study's targets).
TARGET = "target"
#: The block vector actually evaluated (``d`` floats; after the projection for samplers that need one).
VECTOR = "vector"
#: ``‖evaluated − suggested‖₂``: 0.0 when the sampler's suggestion was already on the constraint.
PROJECTION_DISTANCE = "projection_distance"
#: Site-weighted share of linear inputs the sparse model really zeroed on the search tokens.
MEASURED_SPARSITY = "measured_sparsity"
#: Site-weighted sparsity the allocation's thresholds were set for (on the calibration tokens).
NOMINAL_SPARSITY = "model_sparsity"
#: Mean next-token negative log-likelihood on the search tokens.
MEAN_NLL = "mean_nll"
#: Seconds the evaluation took (the screen's: what compares across trials).
SECONDS = "seconds"
#: Seconds of all the trial's forward passes: its screen and every promotion (a study's overhead is the rest).
FORWARD_SECONDS = "forward_seconds"
#: Mean per-token KL to the dense model on the screen (the search's first rung).
KL = "kl"
#: Perplexity on the screen.
PERPLEXITY = "perplexity"
#: The largest |measured − target| sparsity of any site on the screen.
SITE_SPARSITY_ERROR = "site_sparsity_error"
#: The objective's value at each rung the trial reached (cumulative means: rung r covers rungs 0..r).
RUNG_VALUES = "rung_values"
#: The objective over each rung's own sequences (not cumulative), and how many sequences each rung has.
RUNG_OWN_VALUES = "rung_own_values"
RUNG_SIZES = "rung_sizes"
#: Per-sequence KL and NLL over every sequence the trial evaluated, in rung order.
SEQUENCE_KL = "sequence_kl"
SEQUENCE_NLL = "sequence_nll"
#: Forward tokens the trial's evaluations used (screen and promotions): what a budget counts.
TOKENS = "tokens"
#: Held-out perplexity and KL, measured for trials that improved on the best so far (reported, never searched on).
HELDOUT_PERPLEXITY = "heldout_perplexity"
HELDOUT_KL = "heldout_kl"
#: A trial that yielded because the study's last slots were taken by trials with lower numbers.
SURPLUS = "surplus"
#: Of a study that searches the split (``sparsity.split: search``): the share of TEAL's greedy split in the
#: trial's blend of the greedy and uniform site splits.
SPLIT_SHARE = "split_share"
#: Set on a no-search start point (the uniform vector at one share): its name, e.g. ``blend-uniform``.
NO_SEARCH = "no_search"

# -- system attributes ----------------------------------------------------------------------------------------
#: A sampler's proposal, written at sampling time so other workers see it as a pending point.
PROPOSAL = "sparsealloc:proposal"
#: The name of the sampler that made the proposal.
SAMPLER = "sparsealloc:sampler"
#: The GP hyperparameters fitted for a ``bo`` proposal (the warm start of the next fit).
BO_GP = "sparsealloc:bo_gp"
#: Why a ``bo`` proposal fell back to the space-filling design (the model step failed).
BO_FALLBACK = "sparsealloc:bo_fallback"
#: How a frontier ``bo`` proposal chose its target: per target, its best log acquisition value per cost.
FRONTIER_CHOICE = "sparsealloc:frontier_choice"
#: The raw WAS parameters ``r`` of the proposal ``was`` accepted.
WAS_PARAMS = "sparsealloc:was_params"
#: The raw WAS parameters the band rejected before the accepted one.
WAS_REJECTED = "sparsealloc:was_rejected"
#: A staged selection the runner performs instead of one evaluation (EvoPress's reference form):
#: ``{"candidates": [parent, offspring...], "stages": [[sequences, survivors], ...]}``.
SELECTION_PLAN = "sparsealloc:selection_plan"
#: The selection's record: per stage, the candidates evaluated (by index) and their values.
SELECTION = "selection"
#: The split a sampler placed the trial at: ``{"share": s, "no_search": name or None}``.
SPLIT_PLACE = "sparsealloc:split"
#: Set by Optuna's retry callback on a trial that re-runs a failed one: the original trial's number.
RETRIED_FROM = "failed_trial"
#: Set by ``study.enqueue_trial`` (and the retry callback): the parameters the trial must evaluate.
FIXED_PARAMS = "fixed_params"


def set_system_attr(study: optuna.Study, trial: optuna.Trial | FrozenTrial, key: str, value: Any) -> None:
    """Write a system attribute of ``trial`` through the study's storage (works on frozen trials too)."""
    optuna_internals.set_trial_system_attr(study, trial, key, value)


# -- writers -------------------------------------------------------------------------------------------------
def record_vector(trial: optuna.Trial, vector: Sequence[float], distance: float) -> None:
    """Store the vector the trial really evaluates, and how far the projection onto the constraint moved it."""
    trial.set_user_attr(VECTOR, [float(v) for v in vector])
    trial.set_user_attr(PROJECTION_DISTANCE, float(distance))


def record_measurements(trial: optuna.Trial, measurements: dict[str, Any]) -> None:
    """Store what an evaluation measured (keys among this module's user-attribute names; numbers or lists)."""
    for key, value in measurements.items():
        trial.set_user_attr(key, [float(v) for v in value] if isinstance(value, list | tuple) else float(value))


def assign_target(study: optuna.Study, trial: FrozenTrial, target: float) -> None:
    """Give ``trial`` its target through storage, and on the frozen copy the running trial reads its own
    attributes from (Optuna builds a trial's ``user_attrs`` from the frozen trial its sampler was given)."""
    optuna_internals.set_trial_user_attr(study, trial, TARGET, float(target))
    trial.user_attrs[TARGET] = float(target)


def record_split(trial: optuna.Trial, share: float, no_search: str | None) -> None:
    """Store the trial's share of the greedy split, and the name of the no-search point it is (if it is one)."""
    trial.set_user_attr(SPLIT_SHARE, float(share))
    if no_search is not None:
        trial.set_user_attr(NO_SEARCH, no_search)


def mark_surplus(trial: optuna.Trial) -> None:
    """Mark a trial that yielded because the study already had its requested number of trials."""
    trial.set_user_attr(SURPLUS, True)


# -- readers -------------------------------------------------------------------------------------------------
def _block_params(params: dict[str, Any], dim: int | None) -> np.ndarray | None:
    if dim is None:
        dim = sum(1 for name in params if name.startswith("block_"))
    if dim == 0:
        return None
    try:
        return np.array([float(params[f"block_{b}"]) for b in range(dim)], dtype=np.float64)
    except KeyError:
        return None


def _vector(raw: Any, dim: int | None) -> np.ndarray | None:
    if raw is None:
        return None
    vector = np.asarray(raw, dtype=np.float64)
    return vector if vector.ndim == 1 and (dim is None or vector.shape[0] == dim) else None


def evaluated_vector(trial: FrozenTrial, dim: int | None = None) -> np.ndarray | None:
    """The vector ``trial`` evaluated: its ``vector`` attribute, else its ``block_i`` params; None if neither
    is there (or, given ``dim``, has another length)."""
    found = _vector(trial.user_attrs.get(VECTOR), dim)
    return found if found is not None else _block_params(trial.params, dim)


def pending_params(trial: FrozenTrial, dim: int) -> np.ndarray | None:
    """What storage knows of the point a RUNNING or WAITING trial will evaluate, in order of reliability: the
    evaluated vector, the sampler's proposal, the params suggested so far (once every block is suggested),
    the params of an enqueued trial. None if nothing is known yet."""
    for raw in (trial.user_attrs.get(VECTOR), trial.system_attrs.get(PROPOSAL)):
        found = _vector(raw, dim)
        if found is not None:
            return found
    found = _block_params(trial.params, dim)
    return found if found is not None else _block_params(trial.system_attrs.get(FIXED_PARAMS, {}), dim)


def _float(trial: FrozenTrial, key: str) -> float | None:
    value = trial.user_attrs.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def trial_target(trial: FrozenTrial) -> float | None:
    """The target the trial's vector meets (None for trials of single-target studies made before targets
    were recorded, and for a frontier trial its sampler has not yet given one)."""
    return _float(trial, TARGET)


#: Targets closer than this are one target (targets come from a validated configuration, never arithmetic).
_SAME_TARGET = 1e-9


def same_target(a: float | None, b: float) -> bool:
    """Whether ``a`` names the target ``b`` (targets within 1e-9 are one; None names none)."""
    return a is not None and abs(a - b) <= _SAME_TARGET


def known_target(targets: Iterable[float], target: float | None) -> float | None:
    """The one of ``targets`` that ``target`` names, or None."""
    return next((t for t in targets if same_target(target, t)), None)


def target_of(trial: FrozenTrial, targets: Sequence[float]) -> float | None:
    """The study target ``trial`` meets (a single-target study's trials made before targets were recorded
    meet its only target), or None if its sampler has not given it one yet."""
    recorded = trial_target(trial)
    if recorded is None:
        return targets[0] if len(targets) == 1 else None
    return known_target(targets, recorded)


def trials_at(
    trials: Iterable[FrozenTrial], target: float, targets: Sequence[float] | None = None
) -> list[FrozenTrial]:
    """The ``trials`` that meet ``target``: values of different targets never compare.

    With the study's ``targets``, a trial that records no target meets the only target of a single-target
    study (:func:`target_of`); without them, only a recorded target counts.
    """
    if targets is None:
        return [t for t in trials if same_target(trial_target(t), target)]
    return [t for t in trials if same_target(target_of(t, targets), target)]


def measured_sparsity(trial: FrozenTrial) -> float | None:
    """The model-level sparsity the sparse model really ran at on the trial's tokens, or None."""
    return _float(trial, MEASURED_SPARSITY)


def heldout_perplexity(trial: FrozenTrial) -> float | None:
    """The trial's held-out perplexity (reported only, never used to choose), or None if not measured."""
    return _float(trial, HELDOUT_PERPLEXITY)


def heldout_kl(trial: FrozenTrial) -> float | None:
    """The trial's held-out KL to the dense model (reported only), or None if not measured."""
    return _float(trial, HELDOUT_KL)


def kl(trial: FrozenTrial) -> float | None:
    """The trial's KL to the dense model on the search sequences it was evaluated on, or None."""
    return _float(trial, KL)


def perplexity(trial: FrozenTrial) -> float | None:
    """The trial's perplexity on the search sequences it was evaluated on, or None."""
    return _float(trial, PERPLEXITY)


def tokens_used(trial: FrozenTrial) -> int:
    """How many forward tokens the trial's evaluation used (what a study's token budget counts)."""
    return int(_float(trial, TOKENS) or 0)


def rung_values(trial: FrozenTrial) -> list[float]:
    """The objective at each rung the trial reached (rung 0 first), cumulative over the rungs below."""
    return _floats(trial, RUNG_VALUES)


def rung_own_values(trial: FrozenTrial) -> list[float]:
    """The objective over each rung's own sequences (rung 0 first)."""
    return _floats(trial, RUNG_OWN_VALUES)


def rung_sizes(trial: FrozenTrial) -> list[int]:
    """How many sequences each rung the trial reached evaluated (rung 0 first)."""
    return [int(v) for v in _floats(trial, RUNG_SIZES)]


def sequence_values(trial: FrozenTrial, key: str = SEQUENCE_KL) -> list[float]:
    """Per-sequence values (``SEQUENCE_KL`` or ``SEQUENCE_NLL``) over every sequence evaluated, in rung order."""
    return _floats(trial, key)


def _floats(trial: FrozenTrial, key: str) -> list[float]:
    value = trial.user_attrs.get(key)
    if not isinstance(value, list):
        return []
    return [float(v) for v in value if isinstance(v, int | float) and not isinstance(v, bool)]


def evaluation_seconds(trial: FrozenTrial) -> float:
    """The wall time of the trial's evaluation in seconds (0 if not recorded)."""
    return _float(trial, SECONDS) or 0.0


def forward_seconds(trial: FrozenTrial) -> float:
    """The seconds of all the trial's forward passes, screen and promotions (0 if not recorded)."""
    return _float(trial, FORWARD_SECONDS) or 0.0


def is_surplus(trial: FrozenTrial) -> bool:
    """Whether the trial yielded as surplus (:func:`mark_surplus`): it evaluated nothing and counts for nothing."""
    return bool(trial.user_attrs.get(SURPLUS))


def retried_from(trial: FrozenTrial) -> int | None:
    """The number of the failed trial this one re-runs, or None."""
    value = trial.system_attrs.get(RETRIED_FROM)
    return int(value) if isinstance(value, int) else None


def bo_hyperparameters(trial: FrozenTrial) -> dict[str, Any] | None:
    """The GP hyperparameters ``bo`` fitted when proposing the trial (the next fit's warm start), or None."""
    value = trial.system_attrs.get(BO_GP)
    return value if isinstance(value, dict) else None


def selection_plan(study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> dict[str, Any] | None:
    """The staged selection a sampler planned for ``trial`` (read from storage: it was written at sampling
    time, after the objective's own view of the trial was taken)."""
    plan = optuna_internals.trial_system_attrs(study, trial).get(SELECTION_PLAN)
    return plan if isinstance(plan, dict) else None


def _place(system_attrs: dict[str, Any]) -> tuple[float, str | None] | None:
    place = system_attrs.get(SPLIT_PLACE)
    if isinstance(place, dict) and isinstance(place.get("share"), (int, float)):
        return float(place["share"]), place.get("no_search")
    return None


def sampler_place(trial: FrozenTrial) -> tuple[float, str | None] | None:
    """The share and no-search name a sampler placed ``trial`` at, as the trial's own copy of its system attributes
    holds them (a retried trial inherits its original's); None if none placed it."""
    return _place(trial.system_attrs)


def split_place(study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> tuple[float, str | None] | None:
    """The share and no-search name the sampler placed ``trial`` at (read from storage, where it was written at
    sampling time), else those the trial recorded (a retried trial inherits them); None without either."""
    placed = _place(optuna_internals.trial_system_attrs(study, trial))
    if placed is not None:
        return placed
    recorded = trial_split(trial)  # type: ignore[arg-type]
    return None if recorded is None else (recorded, no_search_name(trial))  # type: ignore[arg-type]


def trial_split(trial: FrozenTrial) -> float | None:
    """The share of the greedy split the trial evaluated at, or None (a study with a fixed split)."""
    return _float(trial, SPLIT_SHARE)


def placed_share(trial: FrozenTrial) -> float | None:
    """The share a finished or pending trial has: recorded by its evaluation, else placed by its sampler."""
    recorded = trial_split(trial)
    if recorded is not None:
        return recorded
    placed = _place(trial.system_attrs)
    return None if placed is None else placed[0]


def is_share_probe(trial: FrozenTrial) -> bool:
    """Whether the sampler placed ``trial`` as a share probe: the uniform vector at a share the split search's line
    search chose (see ``samplers._split``)."""
    place = trial.system_attrs.get(SPLIT_PLACE)
    return isinstance(place, dict) and bool(place.get("probe", False))


def no_search_name(trial: FrozenTrial) -> str | None:
    """The name of the no-search start point the trial evaluated (``uniform``, ``blend-uniform``...), or None."""
    value = trial.user_attrs.get(NO_SEARCH)
    if value is None and (placed := _place(trial.system_attrs)) is not None:
        value = placed[1]
    return value if isinstance(value, str) else None


def is_uniform(vector: Any) -> bool:
    """Whether ``vector`` (a trial's evaluated vector, or None) gives every block the same sparsity."""
    return vector is not None and len(vector) > 0 and float(np.ptp(vector)) <= 1e-9


def was_params(trial: FrozenTrial) -> np.ndarray | None:
    """The WAS sampler's own parameters (its depth profile) behind the trial's vector, or None."""
    return _vector(trial.system_attrs.get(WAS_PARAMS), None)


def was_rejected(trial: FrozenTrial) -> list[np.ndarray]:
    """The WAS parameter draws the sampler rejected before this trial's (they missed the constraint)."""
    return [np.asarray(raw, dtype=np.float64) for raw in trial.system_attrs.get(WAS_REJECTED, [])]
