"""Test helpers shared by sparsealloc's tests and benchmarks (like ``optuna.testing``).

``synthetic`` holds a seeded objective with a known constrained optimum; ``sampler_contract`` holds the
one contract every sampler passes; ``tiny`` builds tiny random-weight models and a tokenizer;
``local_tasks`` writes lm-eval tasks that run offline.
"""

from __future__ import annotations

from allocator.testing.synthetic import SyntheticObjective, optimise_frontier, run_frontier, run_sampler

__all__ = ["SyntheticObjective", "optimise_frontier", "run_frontier", "run_sampler"]
