"""Sparsifiers on every site of a model, owned by one context manager.

Each site gets a forward pre-hook that zeroes the input elements whose score does not exceed the site's
threshold: ``x_j`` is kept iff ``score_j > t``. One :class:`Sparsifiers` object installs every hook and
removes all of them on exit, even on error, so a model is never left half-sparsified (llm-compressor's
hook-ownership rule).

Three rules set a site's threshold (:data:`RULES`):

* ``threshold``: a fixed threshold per site (from a lookup, or a calibration's inverse CDF). What inference
  uses.
* ``quantile``: a target sparsity per site; each call sets the threshold to the quantile of the scores it
  is given (a histogram of the call's scores, then its inverse CDF), so every forward pass zeroes exactly the
  target share of every site's inputs *under the sparse model upstream*. This is how the search evaluates an
  allocation at the sparsity it really runs at: thresholds from a dense pass would zero more once earlier
  blocks are sparsified (at a nominal 60%, 61-65% in reality).
* ``topk``: k-winners-take-all; each token keeps exactly the ``(1 − s)·C`` largest scores of its ``C``
  inputs (exact per token, no histogram), for comparison with thresholds at equal measured sparsity.

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

from allocator.errors import InputError
from allocator.model import ModelAdapter
from allocator.sparsity._histogram import ScoreHistogram, key_counts
from allocator.sparsity._scores import Score

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.hooks import RemovableHandle

_EXACT_FLOAT32_SUM = 1 << 24  # float32 counts integers exactly below this

#: How a site's threshold is set: fixed, per-call quantile, or per-token top-k (see the module docstring).
RULES: tuple[str, ...] = ("threshold", "quantile", "topk")


@dataclass
class _SiteState:
    index: tuple[int, int]  # (block, site position)
    channel_scale: torch.Tensor | None  # 1 / column norm for weight_aware, else None
    threshold: torch.Tensor | float = 0.0  # magnitude threshold: scalar, or per-channel vector
    target: float = 0.0  # the sparsity of the quantile and topk rules
    active: bool = False
    kept: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64))
    seen: int = 0
    threshold_sum: float = 0.0  # score-unit thresholds the quantile rule used, for reporting
    calls: int = 0


class Sparsifiers:
    """Forward pre-hooks on every site of ``adapter``'s model; use as a context manager.

    ``sparsify_fraction`` is the share of each sequence's trailing tokens that are sparsified (TEAL
    sparsifies the last 50% during prefill, WAS the last 99%); single-token inputs (decoding) are always
    sparsified, and only sparsified positions are counted. ``apply=False`` counts what would be zeroed
    without changing the inputs (used to check thresholds against the dense activations they were
    calibrated on).
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
        self.rule = "threshold"
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
        # (input, scale id, histogram) of the last quantile-rule site: sites reading one tensor share it.
        self._histogram_memo: tuple[torch.Tensor, int, ScoreHistogram] | None = None
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
        self._forget_inputs()

    def _forget_inputs(self) -> None:
        self._abs_input = self._abs_value = None
        self._memo = None
        self._histogram_memo = None

    @property
    def installed(self) -> bool:
        """Whether the hooks are on the model now (inside the with-block, or as ``load_lookup`` leaves them)."""
        return bool(self._handles)

    # -- thresholds and targets --------------------------------------------------------------------------
    def set_thresholds(self, thresholds: torch.Tensor) -> None:
        """The ``threshold`` rule: every site's threshold (a ``n_blocks x 7`` tensor in score units; 0 disables
        a site)."""
        thresholds = self._check_shape(thresholds, "Thresholds")
        self.rule = "threshold"
        for row, values in zip(self._states, thresholds.tolist(), strict=True):
            for state, value in zip(row, values, strict=True):
                state.active = value > 0.0
                state.target = 0.0
                if state.channel_scale is None:
                    state.threshold = float(value)
                else:
                    state.threshold = (state.channel_scale.double() * value).float()

    def set_targets(self, site_sparsities: torch.Tensor, *, rule: str = "quantile") -> None:
        """The ``quantile`` or ``topk`` rule: every site's target sparsity (a ``n_blocks x 7`` tensor in
        [0, 1); 0 disables a site)."""
        if rule not in ("quantile", "topk"):
            raise InputError(f"The value of `rule` should be 'quantile' or 'topk', got {rule!r}.")
        targets = self._check_shape(site_sparsities, "Site sparsities")
        if bool(((targets < 0) | (targets >= 1) | targets.isnan()).any()):
            raise InputError("Every sparsity should be in [0, 1).")
        self.rule = rule
        for row, values in zip(self._states, targets.tolist(), strict=True):
            for state, value in zip(row, values, strict=True):
                state.active = value > 0.0
                state.target = float(value)
                state.threshold = 0.0

    def _check_shape(self, values: torch.Tensor, label: str) -> torch.Tensor:
        values = torch.as_tensor(values, dtype=torch.float64)
        expected = (self.adapter.n_blocks, len(self._states[0]))
        if tuple(values.shape) != expected:
            raise InputError(f"{label} should have shape {expected}, got {tuple(values.shape)}.")
        return values

    # -- measured sparsity -------------------------------------------------------------------------------
    def reset_counts(self) -> None:
        """Zero the measured-sparsity counts, so that the next measurement covers only what runs after it."""
        for row in self._states:
            for state in row:
                state.kept = torch.zeros((), dtype=torch.float64)
                state.seen = 0
                state.threshold_sum, state.calls = 0.0, 0

    def measured_site_sparsity(self) -> torch.Tensor:
        """A ``n_blocks x 7`` float64 tensor: the zeroed share of each site's sparsified inputs since the last
        reset. Sites that were inactive report 0."""
        return torch.tensor(
            [[1.0 - float(s.kept) / s.seen if s.seen else 0.0 for s in row] for row in self._states],
            dtype=torch.float64,
        )

    def measured_model_sparsity(self) -> float:
        """Site-weighted measured sparsity: the share of linear-layer weight reads skipped."""
        weights = self.adapter.site_weights()
        return float((self.measured_site_sparsity() * weights).sum() / weights.sum())

    def used_thresholds(self) -> torch.Tensor:
        """A ``n_blocks x 7`` tensor: the mean threshold (score units) the ``quantile`` rule used per site."""
        return torch.tensor(
            [[s.threshold_sum / s.calls if s.calls else 0.0 for s in row] for row in self._states],
            dtype=torch.float64,
        )

    # -- the hook ----------------------------------------------------------------------------------------
    def dense_tokens(self, x: torch.Tensor) -> int:
        """Leading tokens of each sequence left dense (``sparsify_fraction < 1``; never for single tokens)."""
        n_tokens = x.shape[-2] if x.dim() >= 2 else 1
        if self.sparsify_fraction < 1.0 and n_tokens > 1:
            return n_tokens - int(self.sparsify_fraction * n_tokens)
        return 0

    def _abs(self, x: torch.Tensor) -> torch.Tensor:
        # q/k/v (and gate/up) receive the very same tensor object: compute |x| once for them.
        if x is not self._abs_input:
            self._abs_input, self._abs_value = x, x.abs()
        assert self._abs_value is not None
        return self._abs_value

    def _histogram(self, x: torch.Tensor, state: _SiteState) -> ScoreHistogram:
        """The histogram of the site's scores over its sparsified positions (shared by sites of one input)."""
        scale_id = 0 if state.channel_scale is None else id(state.channel_scale)
        memo = self._histogram_memo
        if memo is not None and memo[0] is x and memo[1] == scale_id:
            return memo[2]
        scores = self._abs(x)[..., self.dense_tokens(x) :, :] if x.dim() >= 2 else self._abs(x)
        if state.channel_scale is not None:
            scores = scores.float() / state.channel_scale.to(scores.device)  # |x_j|·‖W[:, j]‖
        histogram = ScoreHistogram.from_key_counts(key_counts(scores).cpu())
        self._histogram_memo = (x, scale_id, histogram)
        return histogram

    def _quantile_threshold(self, x: torch.Tensor, state: _SiteState) -> torch.Tensor | float:
        histogram = self._histogram(x, state)
        value = float(histogram.thresholds(torch.tensor([state.target], dtype=torch.float64))[0])
        state.threshold_sum += value
        state.calls += 1
        if state.channel_scale is None:
            return value
        return (state.channel_scale.double() * value).float().to(x.device)

    def _topk_keep(self, x: torch.Tensor, state: _SiteState) -> torch.Tensor:
        scores = self._abs(x)
        if state.channel_scale is not None:
            scores = scores.float() / state.channel_scale.to(scores.device)
        channels = scores.shape[-1]
        dropped = min(round(state.target * channels), channels - 1)
        if dropped == 0:
            return torch.ones_like(x)
        cut = scores.kthvalue(dropped, dim=-1, keepdim=True).values  # (..., 1): the largest dropped score
        return (scores > cut).to(x.dtype)

    def _mask(self, x: torch.Tensor, state: _SiteState) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """``(keep, kept count or None, x * keep or x)`` for one site's input.

        Under a scalar threshold, sites that read the same tensor at the same threshold (q/k/v and gate/up
        under the uniform split: they share one distribution) get the very same result, computed once.
        """
        if self.rule == "topk":
            keep = self._topk_keep(x, state)
        else:
            threshold = self._quantile_threshold(x, state) if self.rule == "quantile" else state.threshold
            shared = isinstance(threshold, float)
            memo = self._memo
            if shared and memo is not None and memo[0] is x and memo[1] == threshold:
                return memo[2], memo[3], memo[4]
            keep = torch.sign(self._abs(x) - threshold).clamp_(min=0)  # 1 where score > t, else 0
        dense = self.dense_tokens(x)
        if dense:
            keep[..., :dense, :] = 1.0
        kept = None
        if self.count:
            counted = keep[..., dense:, :] if dense else keep
            kept = counted.sum(dtype=torch.float64) if counted.numel() >= _EXACT_FLOAT32_SUM else counted.sum()
        output = x * keep if self.apply else x
        if self.rule != "topk" and isinstance(threshold, float):
            self._memo = (x, threshold, keep, kept, output)
        return keep, kept, output

    def _make_hook(self, state: _SiteState) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            if not state.active:
                return None
            x = args[0]  # (B, T, C)
            keep, kept, output = self._mask(x, state)
            if kept is not None:
                state.kept += kept
                dense = self.dense_tokens(x)
                state.seen += keep[..., dense:, :].numel() if dense else keep.numel()
            if not self.apply:
                return None
            return (output, *args[1:])

        return hook
