"""The allocator benchmark's study protocol, shared by bench/allocators.py, bench/frontier.py and
bench/heldout_noise.py: benchmark names, one study's configuration, running it and measuring its choice.

Every study uses the same four data roles of the pydoc corpus, never two on one document, and a second
held-out corpus of another domain (``parlspeech``); the KL objective, a screen common to every trial,
promotion of the best third to fresh sequences, the study stopping once its evaluations have used the token
budget. Its allocation is chosen as an export chooses it (among the trials of the highest rung, by validation
KL) and reported on both held-out corpora at exactly the target sparsity.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import optuna
from optuna.trial import TrialState

from allocator.search import trial_attributes as attrs
from storage import Database
from studies import (
    StudyConfig,
    best_candidate,
    build_config,
    candidate_trials,
    create_study,
    evaluate_candidate,
    exported_thresholds,
    load_optuna_study,
    measure,
    open_session,
    run_study,
    tokens_spent,
)

#: Every benchmark name, in the order the reports list them.
SAMPLERS = (
    "uniform",
    "greedy",
    "blend-uniform",
    "random",
    "tpe",
    "cmaes",
    "was",
    "evopress",
    "bo",
    "bo-greedy",
    "bo-blend",
    "bo-search",
    "was-ref",
)
#: The single allocations: one evaluation each, whatever the budget.
SINGLE = ("uniform", "greedy", "blend-uniform")
#: Benchmark names that are not a sampler's own name: (sampler, site split). Any other name is that sampler over
#: the uniform split. ``blend``: half greedy split, half uniform (the config's default blend weight); ``search``:
#: the study chooses the share, its start points being uniform, blend-uniform and greedy-uniform.
VARIANTS = {
    "greedy": ("greedy", "greedy"),
    "blend-uniform": ("uniform", "blend"),
    "bo-greedy": ("bo", "greedy"),
    "bo-blend": ("bo", "blend"),
    "bo-search": ("bo", "search"),
    "was-ref": ("was", "greedy"),
}
#: Benchmark names scored otherwise than by magnitude: ``was-ref`` is WAS in its reference form, its search over
#: TEAL's greedy split of WAS's weight-aware score |x|·‖W[:, j]‖₁ (the WAS notebook's; it sparsifies the last 99%
#: of each sequence, we sparsify all of it like every other allocator: a named deviation).
SCORES = {"was-ref": "weight_aware"}
BASE_BUDGET = 51_200  # today's: 50 evaluations of 1,024 tokens
#: The held-out corpora every allocation is reported on: pydoc documents no other role used, and parlspeech.
CORPORA = ("heldout", "ood")


def study_name(sampler: str, target: float, seed: int, budget: int) -> str:
    """The study's name in the benchmark database: benchmark name, target in percent, seed, budget's scale."""
    if spent_budget(sampler, budget) == BASE_BUDGET:
        scale = ""
    else:
        scale = f"-x{budget // BASE_BUDGET}" if budget % BASE_BUDGET == 0 else f"-b{budget}"
    return f"{sampler}-{round(target * 100)}-s{seed}{scale}"


def spent_budget(sampler: str, budget: int) -> int:
    """The budget a study is run at: one evaluation (filed under the base budget) for the single allocations."""
    return BASE_BUDGET if sampler in SINGLE else budget


def study_config(
    sampler: str,
    target: float | list[float],
    seed: int,
    budget: int,
    args: argparse.Namespace,
    *,
    name: str | None = None,
    source: str | None = None,
) -> StudyConfig:
    """The study configuration of one benchmark cell under the data settings ``args``: named by
    :func:`study_name` unless ``name`` is given (a frontier study, whose ``target`` is a list, names its own);
    ``source`` prefixes its errors (default: the name)."""
    variant, split = VARIANTS.get(sampler, (sampler, "uniform"))
    name = name or study_name(sampler, target, seed, budget)
    return build_config(
        name,
        target=target,
        model="smollm2-135m",
        data={
            "source": "pydoc",
            "ood": "parlspeech",
            "seq_len": args.seq_len,
            "calibration_sequences": args.calibration_sequences,
            "search_sequences": args.search_sequences,
            "validation_sequences": args.validation_sequences,
            "heldout_sequences": args.heldout_sequences,
            "ood_sequences": args.heldout_sequences,
            "seed": 0,
        },
        sparsity={
            "lower": 0.0,
            "upper": 0.9,
            "split": split,
            "score": SCORES.get(sampler),
            "greedy": {"sequences": args.greedy_sequences},
        },
        sampler=variant,
        search={
            "screen_sequences": args.screen,
            "promote_sequences": args.promote,
            # One evaluation whatever the budget: the same study for every --budgets, so invocations share it.
            "budget_tokens": spent_budget(sampler, budget),
            "validation_candidates": 3,
        },
        trials=1 if sampler in SINGLE else 1000,
        seed=seed,
        evaluation={"batch_size": 8, "heldout": "none"},
        source=source or name,
    )


def figures(evaluation: Any, dense: dict[str, float]) -> dict[str, float]:
    """An evaluation's reported figures, with its perplexity degradation against the dense model's."""
    return {
        "perplexity": evaluation.perplexity,
        "kl": evaluation.kl,
        "measured_sparsity": evaluation.measured_sparsity,
        "degradation": (evaluation.perplexity - dense["perplexity"]) / dense["perplexity"],
        "sequence_nll": list(evaluation.sequence_nll),
    }


def run_one(database: Database, config: StudyConfig, dense: dict[str, dict[str, float]], thresholds: bool) -> dict:
    """Run (or reuse) one study, choose its allocation by validation and measure it on the held-out corpora."""
    create_study(database, config)
    session = open_session(database, config)
    started = time.perf_counter()
    run_study(session)  # returns at once for a study already finished in this database (a rerun)
    study = load_optuna_study(session)
    complete = sorted((t for t in study.get_trials() if t.state == TrialState.COMPLETE), key=lambda t: t.number)
    candidates = [evaluate_candidate(session, t) for t in candidate_trials(session, study)]
    best = best_candidate(candidates, "kl")
    no_search = best_candidate([c for c in candidates if c.no_search is not None], "kl")
    run: dict[str, Any] = {
        "name": config.name,
        "trials": len(complete),
        "tokens": tokens_spent(study),
        "wall_seconds": (
            max(t.datetime_complete for t in complete) - min(t.datetime_start for t in complete)
        ).total_seconds(),
        "evaluation_seconds": sum(attrs.evaluation_seconds(t) for t in complete),
        # the forward passes of screens and promotions: the study's overhead is the rest of its wall time
        "forward_seconds": sum(attrs.forward_seconds(t) for t in complete),
        "chosen_trial": best.trial.number,
        "search_value": float(best.trial.value),
        "validation_kl": {c.trial.number: c.validation.kl for c in candidates},
        "vector": [float(v) for v in best.vector],
        "split_share": best.share,
        "chosen_no_search": best.no_search,
        "promoted": _promotions(complete),
    }
    if thresholds:
        _, fixed = exported_thresholds(session, best.vector, best.share)
    for role in CORPORA:
        if thresholds:
            measured = measure(session, best.vector, fixed, role, best.share)
            run[role] = figures(measured.exact, dense[role])
            run[f"{role}_with_thresholds"] = figures(measured.thresholds, dense[role])
        else:
            run[role] = figures(session.evaluate(best.vector, role, rule="quantile", share=best.share), dense[role])
    if no_search is not None:  # the study's own yardstick: its best no-search allocation by validation, held out
        run["best_no_search"] = {"name": no_search.no_search, "trial": no_search.trial.number}
        for role in CORPORA:
            exact = session.evaluate(no_search.vector, role, rule="quantile", share=no_search.share)
            run["best_no_search"][role] = figures(exact, dense[role])
    run["measure_seconds"] = time.perf_counter() - started
    return run


def _promotions(trials: list[optuna.trial.FrozenTrial]) -> list[list[float]]:
    """(screen value, value on the fresh rung-1 sequences) of every promoted trial: how well screens predict."""
    return [attrs.rung_own_values(t)[:2] for t in trials if len(attrs.rung_own_values(t)) >= 2]


def dense_figures(database: Database, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """The dense model's figures on both held-out corpora under the data settings ``args`` (the reference of
    every degradation)."""
    config = study_config("uniform", 0.5, 0, BASE_BUDGET, args, source="dense")
    session = open_session(database, config)
    evaluations = {role: session.evaluate(0.0, role, rule="threshold") for role in CORPORA}
    return {
        role: {"perplexity": e.perplexity, "kl": e.kl, "sequence_nll": list(e.sequence_nll)}
        for role, e in evaluations.items()
    }
