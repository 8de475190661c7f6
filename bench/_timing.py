"""The dense body-only pass, timed: the denominator of the calibration and table-building costs that
bench/eval_speed.py, bench/greedy_tables.py and bench/sparsity_rules.py report."""

from __future__ import annotations

import time
from typing import Any

import torch


@torch.no_grad()
def dense_body_seconds(adapter: Any, tokens: torch.Tensor, batch_size: int = 8) -> float:
    """Seconds of one pass of the model's body (no LM head) over ``tokens`` in batches of ``batch_size``."""
    started = time.perf_counter()
    for start in range(0, tokens.shape[0], batch_size):
        adapter.body(input_ids=tokens[start : start + batch_size], use_cache=False)
    return time.perf_counter() - started
