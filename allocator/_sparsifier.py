"""Sparsifiers on every site of a model, owned by one context manager.

Each site gets a forward pre-hook that zeroes the input elements whose score does not exceed the site's
threshold: ``x_j`` is kept iff ``score_j > t``. One :class:`Sparsifiers` object installs every hook and
removes all of them on exit, even on error, so a model is never left half-sparsified (llm-compressor's
hook-ownership rule).

The hot path is a handful of cheap elementwise passes per site (``|x|`` computed once for the sites that read
the same tensor, ``keep = relu(sign(|x| - t))``, ``x * keep``, and the whole result reused by the next site
when it reads the same tensor at the same threshold); comparing and multiplying by a boolean mask
is several times slower on CPU. Sites at sparsity 0 are skipped entirely, so an all-zero allocation runs the
dense model bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from allocator._adapters import ModelAdapter
from allocator._scores import Score
from allocator.errors import InputError

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.hooks import RemovableHandle

_EXACT_FLOAT32_SUM = 1 << 24  # float32 counts integers exactly below this


@dataclass
class _SiteState:
    index: tuple[int, int]  # (block, site position)
    channel_scale: torch.Tensor | None  # 1 / column norm for weight_aware, else None
    threshold: torch.Tensor | float = 0.0  # magnitude threshold: scalar, or per-channel vector
    active: bool = False
    kept: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64))
    seen: int = 0


class Sparsifiers:
    """Forward pre-hooks on every site of ``adapter``'s model; use as a context manager.

    ``sparsify_fraction`` is the share of each sequence's trailing tokens that are sparsified (TEAL
    sparsifies the last 50% during prefill, WAS the last 99%); single-token inputs (decoding) are always
    sparsified. ``apply=False`` counts what would be zeroed without changing the inputs (used to check
    thresholds against the dense activations they were calibrated on).
    """

    def __init__(
        self,
        adapter: ModelAdapter,
        *,
        score: Score,
        sparsify_fraction: float = 1.0,
        count: bool = True,
        apply: bool = True,
    ) -> None:
        if not 0.0 < sparsify_fraction <= 1.0:
            raise InputError(f"The value of `sparsify_fraction` should be in (0, 1], got {sparsify_fraction}.")
        self.adapter = adapter
        self.score = score
        self.sparsify_fraction = float(sparsify_fraction)
        self.count = count
        self.apply = apply
        self._states: list[list[_SiteState]] = []
        for block in adapter.sites:
            row = []
            for position, site in enumerate(block):
                norms = score.channel_norms(site.module)
                scale = None if norms is None else torch.where(norms > 0, 1.0 / norms, torch.inf)
                row.append(_SiteState(index=(site.block, position), channel_scale=scale))
            self._states.append(row)
        self._handles: list[RemovableHandle] = []
        self._abs_input: torch.Tensor | None = None
        self._abs_value: torch.Tensor | None = None
        # (input, threshold, keep, kept, output) of the last scalar-threshold site: see ``_mask``.
        self._memo: tuple[torch.Tensor, float, torch.Tensor, torch.Tensor | None, torch.Tensor] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------
    def __enter__(self) -> Sparsifiers:
        if self._handles:
            return self  # already installed (e.g. by load_lookup): the with-block still removes them on exit
        try:
            for block, row in zip(self.adapter.sites, self._states, strict=True):
                for site, state in zip(block, row, strict=True):
                    self._handles.append(site.module.register_forward_pre_hook(self._make_hook(state)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook this object installed (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._abs_input = self._abs_value = None
        self._memo = None

    @property
    def installed(self) -> bool:
        return bool(self._handles)

    # -- thresholds --------------------------------------------------------------------------------------
    def set_thresholds(self, thresholds: torch.Tensor) -> None:
        """Set every site's threshold (a ``n_blocks x 7`` tensor in score units; 0 disables a site)."""
        thresholds = torch.as_tensor(thresholds, dtype=torch.float64)
        expected = (self.adapter.n_blocks, len(self._states[0]))
        if tuple(thresholds.shape) != expected:
            raise InputError(f"Thresholds should have shape {expected}, got {tuple(thresholds.shape)}.")
        for row, values in zip(self._states, thresholds.tolist(), strict=True):
            for state, value in zip(row, values, strict=True):
                state.active = value > 0.0
                if state.channel_scale is None:
                    state.threshold = float(value)
                else:
                    state.threshold = (state.channel_scale.double() * value).float()

    # -- measured sparsity -------------------------------------------------------------------------------
    def reset_counts(self) -> None:
        for row in self._states:
            for state in row:
                state.kept = torch.zeros((), dtype=torch.float64)
                state.seen = 0

    def measured_site_sparsity(self) -> torch.Tensor:
        """A ``n_blocks x 7`` float64 tensor: the zeroed share of each site's inputs since the last reset.

        Sites that were inactive (threshold 0) report 0.
        """
        return torch.tensor(
            [[1.0 - float(s.kept) / s.seen if s.seen else 0.0 for s in row] for row in self._states],
            dtype=torch.float64,
        )

    def measured_model_sparsity(self) -> float:
        """Site-weighted measured sparsity: the share of linear-layer weight reads skipped."""
        weights = self.adapter.site_weights()
        return float((self.measured_site_sparsity() * weights).sum() / weights.sum())

    # -- the hook ----------------------------------------------------------------------------------------
    def _abs(self, x: torch.Tensor) -> torch.Tensor:
        # q/k/v (and gate/up) receive the very same tensor object: compute |x| once for them.
        if x is not self._abs_input:
            self._abs_input, self._abs_value = x, x.abs()
        assert self._abs_value is not None
        return self._abs_value

    def _mask(self, x: torch.Tensor, state: _SiteState) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """``(keep, kept count or None, x * keep or x)`` for one site's input.

        Under a scalar threshold, sites that read the same tensor at the same threshold (q/k/v and gate/up
        under the uniform split: they share one distribution) get the very same result, computed once.
        """
        shared = isinstance(state.threshold, float)
        memo = self._memo
        if shared and memo is not None and memo[0] is x and memo[1] == state.threshold:
            return memo[2], memo[3], memo[4]
        keep = torch.sign(self._abs(x) - state.threshold).clamp_(min=0)  # 1 where score > t, else 0
        n_tokens = x.shape[-2] if x.dim() >= 2 else 1
        if self.sparsify_fraction < 1.0 and n_tokens > 1:
            dense_tokens = n_tokens - int(self.sparsify_fraction * n_tokens)
            keep[..., :dense_tokens, :] = 1.0
        kept = None
        if self.count:
            kept = keep.sum(dtype=torch.float64) if keep.numel() >= _EXACT_FLOAT32_SUM else keep.sum()
        output = x * keep if self.apply else x
        if shared:
            self._memo = (x, state.threshold, keep, kept, output)
        return keep, kept, output

    def _make_hook(self, state: _SiteState) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            if not state.active:
                return None
            x = args[0]  # (B, T, C)
            keep, kept, output = self._mask(x, state)
            if kept is not None:
                state.kept += kept
                state.seen += keep.numel()
            if not self.apply:
                return None
            return (output, *args[1:])

        return hook
