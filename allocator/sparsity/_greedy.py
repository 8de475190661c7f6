"""TEAL's greedy intra-block split, vectorised: for each block, the site split that least disturbs its output.

Per block, starting from all sites dense, each step raises one site's sparsity by ``step · W / w_site``
(``W`` the block's total site weight), so every candidate raises the block's effective (site-weighted)
sparsity by the same ``step``; the candidate whose block output moves least from the dense output is kept.
TEAL evaluates the seven candidates one after another; we stack them along the batch dimension and run
the block once per step, each slice of the batch sparsified with its own thresholds.

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
from allocator.sparsity._blocks import block_output, capture_block_inputs
from allocator.sparsity._calibration import Calibration

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


class _CandidateSparsifiers:
    """Hooks on one block's sites that sparsify slice k of a stacked ``(K*B) x T x C`` batch with thresholds k."""

    def __init__(self, adapter: ModelAdapter, calibration: Calibration, block: int, sparsify_fraction: float):
        self.sites = adapter.sites[block]
        self.histograms = calibration.histograms[block]
        self.sparsify_fraction = sparsify_fraction
        self.scales = []
        for site in self.sites:
            norms = calibration.score.channel_norms(site.module)
            self.scales.append(None if norms is None else torch.where(norms > 0, 1.0 / norms, torch.inf))
        self.thresholds: list[torch.Tensor] = []
        self.n_candidates = 1

    def set_candidates(self, site_sparsities: torch.Tensor) -> None:
        """``K x 7`` per-site sparsities, one row per candidate."""
        self.n_candidates = site_sparsities.shape[0]
        self.thresholds = []
        for i, (hist, scale) in enumerate(zip(self.histograms, self.scales, strict=True)):
            values = hist.thresholds(site_sparsities[:, i])  # (K,) in score units
            if scale is None:
                self.thresholds.append(values.float().view(-1, 1, 1, 1))  # (K, 1, 1, 1)
            else:
                self.thresholds.append(
                    (values[:, None] * scale.double()[None, :]).float().view(-1, 1, 1, scale.numel())
                )

    def install(self) -> list[Any]:
        return [site.module.register_forward_pre_hook(self._hook(i)) for i, site in enumerate(self.sites)]

    def _hook(self, index: int) -> Callable[..., Any]:
        def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            x = args[0]  # (K*B, T, C)
            k = self.n_candidates
            stacked = x.reshape(k, -1, x.shape[-2], x.shape[-1])  # (K, B, T, C)
            threshold = self.thresholds[index].to(device=x.device)
            keep = torch.sign(stacked.abs() - threshold).clamp_(min=0)
            n_tokens = x.shape[-2]
            if self.sparsify_fraction < 1.0 and n_tokens > 1:
                keep[..., : n_tokens - int(self.sparsify_fraction * n_tokens), :] = 1.0
            return ((stacked * keep).reshape(x.shape), *args[1:])

        return hook


def _stack(value: Any, batch: int, copies: int) -> Any:
    """Repeat a captured input ``copies`` times along the batch when it is per-sequence (leading dim ``batch``)."""
    if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == batch and batch > 1:
        return value.repeat(copies, *([1] * (value.dim() - 1)))
    if isinstance(value, tuple):
        return tuple(_stack(v, batch, copies) for v in value)
    return value


def _stacked_output(layer: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], copies: int) -> torch.Tensor:
    """The block's output on ``copies`` stacked copies of its inputs (each sparsified by its own candidate)."""
    hidden = args[0]  # (B, T, C)
    batch = hidden.shape[0]
    stacked_args = (hidden.repeat(copies, 1, 1), *args[1:])
    stacked_kwargs = {key: _stack(value, batch, copies) for key, value in kwargs.items()}
    output = block_output(layer, stacked_args, stacked_kwargs)
    return output.reshape(copies, batch, *output.shape[1:])  # (K, B, T, C)


@dataclass
class _Block:
    """One block during the greedy search: its captured inputs, dense output and candidate sparsifiers."""

    layer: torch.nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    dense: torch.Tensor  # (B, T, C)
    sparsifiers: _CandidateSparsifiers
    weights: torch.Tensor  # (7,) site weights

    def errors(self, candidates: torch.Tensor) -> torch.Tensor:
        """Block-output mean squared error against the dense output of each row of a ``K x 7`` split."""
        self.sparsifiers.set_candidates(candidates)
        output = _stacked_output(self.layer, self.args, self.kwargs, candidates.shape[0])  # (K, B, T, C)
        return (output - self.dense).pow(2).mean(dim=(1, 2, 3)).double()  # (K,)

    def greedy_path(self, *, step: float, max_sparsity: float, site_max: float) -> tuple[torch.Tensor, list[float]]:
        """TEAL's greedy path: ``n_rows x 7`` site splits from all-dense, and their errors."""
        w, total = self.weights, self.weights.sum()
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
            mse = self.errors(candidates)
            gained = (candidates * w).sum(dim=1) / total - (current * w).sum() / total  # (K,)
            best = int(torch.argmin((mse - errors[-1]) / gained))  # least error growth per unit of sparsity
            current = candidates[best]
            rows.append(current.clone())
            errors.append(float(mse[best]))
        return torch.stack(rows), errors

    def uniform_errors(self, effective: torch.Tensor) -> torch.Tensor:
        """The uniform split's error at each effective sparsity (TEAL's "Baseline Error" column)."""
        uniform = effective.unsqueeze(1).expand(-1, len(SITE_NAMES))
        return torch.cat([self.errors(uniform[start : start + 8]) for start in range(0, uniform.shape[0], 8)])


def _check_settings(step: float, max_sparsity: float, site_max: float) -> None:
    if not 0 < step <= 0.5:
        raise InputError(f"The value of `step` should be in (0, 0.5], got {step}.")
    if not 0 < max_sparsity < 1:
        raise InputError(f"The value of `max_sparsity` should be in (0, 1), got {max_sparsity}.")
    if not max_sparsity <= site_max < 1:
        raise InputError(f"The value of `site_max` should be in [max_sparsity, 1), got {site_max}.")


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
    progress: Callable[[int], None] | None = None,
) -> GreedyTable:
    """Greedy site splits of every block, from the dense block inputs of ``tokens`` (``n x seq_len``).

    ``step`` is the effective-sparsity increment of one greedy step; the path stops once the block's
    effective sparsity reaches ``max_sparsity`` (each site is capped at ``site_max``). ``progress`` is
    called with 1 after each block.
    """
    _check_settings(step, max_sparsity, site_max)
    started = time.perf_counter()
    adapter.model.eval()
    inputs = capture_block_inputs(adapter, tokens)
    weights = adapter.site_weights()  # (n_blocks, 7)
    table: dict[str, list[torch.Tensor]] = {"effective": [], "sites": [], "error": [], "baseline_error": []}
    for b, layer in enumerate(adapter.layers):
        args, kwargs = inputs[b]
        dense = _stacked_output(layer, args, kwargs, 1)[0]  # (B, T, C), before any hook is installed
        sparsifiers = _CandidateSparsifiers(adapter, calibration, b, sparsify_fraction)
        handles = sparsifiers.install()
        try:
            block = _Block(layer, args, kwargs, dense, sparsifiers, weights[b])
            sites, errors = block.greedy_path(step=step, max_sparsity=max_sparsity, site_max=site_max)
            effective = (sites * block.weights).sum(dim=1) / block.weights.sum()
            baseline = block.uniform_errors(effective)
        finally:
            for handle in handles:
                handle.remove()
        table["effective"].append(effective)
        table["sites"].append(sites)
        table["error"].append(torch.tensor(errors, dtype=torch.float64))
        table["baseline_error"].append(baseline)
        if progress is not None:
            progress(1)
    settings = {
        "step": step,
        "max_sparsity": max_sparsity,
        "site_max": site_max,
        "sparsify_fraction": sparsify_fraction,
        "tokens": int(tokens.numel()),
        "seq_len": int(tokens.shape[1]),
        "seconds": time.perf_counter() - started,
        "score": calibration.score.describe(),
    }
    return GreedyTable(
        effective=tuple(table["effective"]),
        sites=tuple(table["sites"]),
        error=tuple(table["error"]),
        baseline_error=tuple(table["baseline_error"]),
        settings=settings,
    )
