"""TEAL's greedy intra-block split, vectorised: for each block, the site split that least disturbs its output.

Per block, starting from all sites dense, each step raises one site's sparsity by ``step · W / w_site``
(``W`` the block's total site weight), so every candidate raises the block's effective (site-weighted)
sparsity by the same ``step``; the candidate whose block output moves least from the dense output is kept.
TEAL evaluates the seven candidates one after another, each a whole-block forward; we compute each from
the site it changes onward, on the rows its error reads (:mod:`allocator.sparsity._greedy_blocks`).

The result is a table per block: rows of effective sparsity (increasing, from 0) with the per-site
sparsities of the greedy path. A block's target between two rows is met exactly by interpolating the
two rows' site sparsities linearly (effective sparsity is linear in the site sparsities).

Block inputs are the *dense* model's hidden states (as in TEAL), so blocks are optimised independently.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from allocator.errors import InputError
from allocator.model import SITE_NAMES, ModelAdapter
from allocator.sparsity._blocks import capture_block_inputs, has_llama_layout
from allocator.sparsity._calibration import Calibration
from allocator.sparsity._greedy_blocks import (
    ERROR_NORMS,
    CandidateSparsifiers,
    FastBlock,
    NaiveBlock,
    StackedBlock,
)

GREEDY_FORMAT = "sparsealloc.greedy/v1"


@dataclass(frozen=True)
class GreedyTable:
    """Greedy site splits of every block.

    ``effective[b]`` is a ``n_rows`` float64 tensor of effective sparsities (increasing, first row 0);
    ``sites[b]`` the ``n_rows x 7`` per-site sparsities; ``error[b]`` the block-output mean squared error
    along the path and ``baseline_error[b]`` that of the uniform split at the same effective sparsity.
    """

    effective: tuple[torch.Tensor, ...]
    sites: tuple[torch.Tensor, ...]
    error: tuple[torch.Tensor, ...]
    baseline_error: tuple[torch.Tensor, ...]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n_blocks(self) -> int:
        """The number of blocks the table covers, which must match the model it is used with."""
        return len(self.effective)

    @property
    def max_sparsity(self) -> float:
        """The largest block sparsity every block's table reaches."""
        return float(min(rows[-1] for rows in self.effective))

    def site_sparsities(self, block_sparsities: torch.Tensor) -> torch.Tensor:
        """``n_blocks`` block sparsities -> ``n_blocks x 7`` site sparsities, by interpolating the table rows."""
        block_sparsities = torch.as_tensor(block_sparsities, dtype=torch.float64)
        if tuple(block_sparsities.shape) != (self.n_blocks,):
            raise InputError(f"Expected {self.n_blocks} block sparsities, got shape {tuple(block_sparsities.shape)}.")
        out = torch.empty(self.n_blocks, len(SITE_NAMES), dtype=torch.float64)
        for b, (target, effective, sites) in enumerate(zip(block_sparsities, self.effective, self.sites, strict=True)):
            if target > effective[-1] + 1e-12:
                raise InputError(
                    f"Block {b} sparsity {float(target):.4f} is above the greedy table's maximum "
                    f"{float(effective[-1]):.4f}; build the table with a larger `max_sparsity`."
                )
            upper = int(torch.searchsorted(effective, target.clamp(min=0)).clamp(1, effective.numel() - 1))
            lower = upper - 1
            span = effective[upper] - effective[lower]
            alpha = ((target - effective[lower]) / span).clamp(0.0, 1.0) if span > 0 else torch.tensor(0.0)
            out[b] = (1 - alpha) * sites[lower] + alpha * sites[upper]
        return out

    # -- serialisation -----------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """One safetensors blob of the table and its settings, so that it is computed once per model and tokens."""
        from safetensors.torch import save

        tensors: dict[str, torch.Tensor] = {}
        for b in range(self.n_blocks):
            tensors[f"{b}.effective"] = self.effective[b].contiguous()
            tensors[f"{b}.sites"] = self.sites[b].contiguous()
            tensors[f"{b}.error"] = self.error[b].contiguous()
            tensors[f"{b}.baseline_error"] = self.baseline_error[b].contiguous()
        metadata = {"format": GREEDY_FORMAT, "n_blocks": str(self.n_blocks), "settings": json.dumps(self.settings)}
        return save(tensors, metadata=metadata)

    @classmethod
    def from_bytes(cls, blob: bytes) -> GreedyTable:
        """The table stored by :meth:`to_bytes`; a blob of another format is refused."""
        from safetensors.torch import load

        header_length = int.from_bytes(blob[:8], "little")
        metadata = json.loads(blob[8 : 8 + header_length]).get("__metadata__", {})
        if metadata.get("format") != GREEDY_FORMAT:
            raise InputError(f"Unknown greedy-table format {metadata.get('format')!r}; expected {GREEDY_FORMAT}.")
        tensors = load(blob)
        n_blocks = int(metadata["n_blocks"])

        def column(name: str) -> tuple[torch.Tensor, ...]:
            return tuple(tensors[f"{b}.{name}"] for b in range(n_blocks))

        return cls(
            effective=column("effective"),
            sites=column("sites"),
            error=column("error"),
            baseline_error=column("baseline_error"),
            settings=json.loads(metadata["settings"]),
        )


class GreedySplit:
    """The ``greedy`` split rule: each block's sites split as its :class:`GreedyTable` row says."""

    name = "greedy"

    def __init__(self, table: GreedyTable) -> None:
        self.table = table

    def site_sparsities(self, block_sparsities: torch.Tensor) -> torch.Tensor:
        """``n_blocks`` float64 in, ``n_blocks x 7`` float64 out, interpolated between the table's rows."""
        return self.table.site_sparsities(block_sparsities)


GREEDY_METHODS: tuple[str, ...] = ("fast", "stacked", "naive")
"""How a step's candidates are scored (:mod:`allocator.sparsity._greedy_blocks`); the same errors every way."""


def teal_step(weights: torch.Tensor) -> float:
    """TEAL's step rule as an effective-sparsity step: each step raises a site by ``0.05 / w_site`` with the
    weights relative to q's, so the block's effective sparsity rises by ``0.05 · w_q / W``."""
    weights = torch.as_tensor(weights, dtype=torch.float64)
    return float(0.05 * weights[0] / weights.sum())


def _evaluator(method: str, layer: torch.nn.Module, inputs: Any, sparsifiers: Any, **options: Any) -> StackedBlock:
    if method == "naive":
        return NaiveBlock(layer, inputs, sparsifiers, **options)
    if method == "fast" and has_llama_layout(layer):
        try:
            return FastBlock(layer, inputs, sparsifiers, **options)
        except ValueError:
            pass  # a block the decomposition does not reproduce: the stacked way gives the same errors
    return StackedBlock(layer, inputs, sparsifiers, **options)


def greedy_path(
    block: StackedBlock, weights: torch.Tensor, *, step: float, max_sparsity: float, site_max: float
) -> tuple[torch.Tensor, list[float]]:
    """TEAL's greedy path for one block: ``n_rows x 7`` site splits from all-dense, and their errors."""
    w, total = weights, weights.sum()
    site_step = step * total / w  # (7,) raising site i by this raises the effective sparsity by `step`
    current = torch.zeros(len(SITE_NAMES), dtype=torch.float64)
    rows, errors = [current.clone()], [0.0]
    while float((current * w).sum() / total) < max_sparsity - 1e-9:
        open_sites = [i for i in range(len(SITE_NAMES)) if current[i] < site_max - 1e-12]
        if not open_sites:
            break
        candidates = current.repeat(len(open_sites), 1)  # (K, 7)
        for k, i in enumerate(open_sites):
            candidates[k, i] = min(float(current[i] + site_step[i]), site_max)
        error = block.step_errors(current, candidates, open_sites)
        gained = (candidates * w).sum(dim=1) / total - (current * w).sum() / total  # (K,)
        best = int(torch.argmin((error - errors[-1]) / gained))  # least error growth per unit of sparsity
        current = candidates[best]
        rows.append(current.clone())
        errors.append(float(error[best]))
    return torch.stack(rows), errors


def uniform_errors(block: StackedBlock, effective: torch.Tensor) -> torch.Tensor:
    """The uniform split's error at each effective sparsity (TEAL's "Baseline Error" column)."""
    uniform = effective.unsqueeze(1).expand(-1, len(SITE_NAMES))
    return torch.cat([block.errors(uniform[start : start + 8]) for start in range(0, uniform.shape[0], 8)])


def _block_rows(block: StackedBlock, weights: torch.Tensor, path: dict[str, float]) -> dict[str, torch.Tensor]:
    """One block's table columns: its greedy path, the path's errors and the uniform split's."""
    sites, errors = greedy_path(block, weights, **path)
    effective = (sites * weights).sum(dim=1) / weights.sum()
    return {
        "effective": effective,
        "sites": sites,
        "error": torch.tensor(errors, dtype=torch.float64),
        "baseline_error": uniform_errors(block, effective),
    }


def _settings(
    step: float,
    max_sparsity: float,
    site_max: float,
    sparsify_fraction: float,
    options: dict[str, Any],
    tokens: torch.Tensor,
    calibration: Calibration,
) -> dict[str, Any]:
    """What a table was built with, stored beside it (the default error keeps the keys older tables carry)."""
    settings = {
        "step": step,
        "max_sparsity": max_sparsity,
        "site_max": site_max,
        "sparsify_fraction": sparsify_fraction,
        "tokens": int(tokens.numel()),
        "seq_len": int(tokens.shape[1]),
        "seconds": 0.0,
        "score": calibration.score.describe(),
    }
    if (options["error_positions"], options["norm"]) != (1.0, "mse"):
        settings.update(error_positions=options["error_positions"], error_norm=options["norm"])
    return settings


def _check_settings(step: float, max_sparsity: float, site_max: float, options: dict[str, Any]) -> None:
    if not 0 < step <= 0.5:
        raise InputError(f"The value of `step` should be in (0, 0.5], got {step}.")
    if not 0 < max_sparsity < 1:
        raise InputError(f"The value of `max_sparsity` should be in (0, 1), got {max_sparsity}.")
    if not max_sparsity <= site_max < 1:
        raise InputError(f"The value of `site_max` should be in [max_sparsity, 1), got {site_max}.")
    if not 0 < options["error_positions"] <= 1:
        raise InputError(f"The value of `error_positions` should be in (0, 1], got {options['error_positions']}.")
    if options["norm"] not in ERROR_NORMS:
        names = ", ".join(ERROR_NORMS)
        raise InputError(f"The value of `error_norm` should be one of {names}, got {options['norm']!r}.")


@torch.no_grad()
def build_greedy_table(
    adapter: ModelAdapter,
    calibration: Calibration,
    tokens: torch.Tensor,
    *,
    step: float = 0.025,
    max_sparsity: float = 0.9,
    site_max: float = 0.99,
    sparsify_fraction: float = 1.0,
    error_positions: float = 1.0,
    error_norm: str = "mse",
    method: str = "fast",
    blocks: list[int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> GreedyTable:
    """Greedy site splits of every block, from the dense block inputs of ``tokens`` (``n x seq_len``).

    ``step`` is the effective-sparsity increment of one greedy step (TEAL's rule: :func:`teal_step`); the path
    stops once the block's effective sparsity reaches ``max_sparsity`` (each site is capped at ``site_max``).
    A step's error is read on the last ``error_positions`` of each sequence (TEAL: 0.25) with ``error_norm``
    (``mse``, or TEAL's ``l2``); ``method`` only says how it is computed (:data:`GREEDY_METHODS`: the same errors).
    ``blocks`` limits the table to those blocks (for timing); ``progress`` is called with 1 after each block.
    """
    options = {"error_positions": error_positions, "norm": error_norm}
    _check_settings(step, max_sparsity, site_max, options)
    if method not in GREEDY_METHODS:
        raise InputError(f"The value of `method` should be one of {', '.join(GREEDY_METHODS)}, got {method!r}.")
    started = time.perf_counter()
    adapter.model.eval()
    inputs = capture_block_inputs(adapter, tokens)
    weights = adapter.site_weights()  # (n_blocks, 7)
    table: dict[str, list[torch.Tensor]] = {"effective": [], "sites": [], "error": [], "baseline_error": []}
    path = {"step": step, "max_sparsity": max_sparsity, "site_max": site_max}
    for b, layer in enumerate(adapter.layers):
        if blocks is not None and b not in blocks:
            continue
        sparsifiers = CandidateSparsifiers(adapter, calibration, b, sparsify_fraction)
        handles = sparsifiers.install()
        try:
            block = _evaluator(method, layer, inputs[b], sparsifiers, **options)
            for name, column in _block_rows(block, weights[b], path).items():
                table[name].append(column)
        finally:
            for handle in handles:
                handle.remove()
        if progress is not None:
            progress(1)
    settings = _settings(step, max_sparsity, site_max, sparsify_fraction, options, tokens, calibration)
    settings["seconds"] = time.perf_counter() - started
    return GreedyTable(
        effective=tuple(table["effective"]),
        sites=tuple(table["sites"]),
        error=tuple(table["error"]),
        baseline_error=tuple(table["baseline_error"]),
        settings=settings,
    )
