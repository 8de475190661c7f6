"""One block's output error under candidate site splits: the inner loop of TEAL's greedy split, three ways.

Every greedy step scores up to seven candidates, each the current split with one site raised; the score is
the error of the block's output against the dense output on the error rows (the last ``error_positions``
share of each sequence: TEAL's last quarter, or all of them). Three evaluators give the same errors:

* :class:`NaiveBlock`: one whole-block forward per candidate, as TEAL's ``greedyopt.py`` does. The reference.
* :class:`StackedBlock`: the candidates stacked along the batch, one whole-block forward per step.
* :class:`FastBlock`: computes each candidate only from the site it touches onward, and only what the error
  reads. A Llama-layout block is ``h = x + o_proj(attn(x))``, ``y = h + mlp(norm(h))``; the o projection,
  the norm and the MLP are position-wise, so they run on the error rows alone. An MLP candidate reuses the
  current split's ``h``; an o candidate reuses its attention output; only q/k/v candidates run attention.
  And a step that raised an MLP site leaves every attention candidate's ``h`` as it was: those are kept
  and reused, so such a candidate costs the MLP on the error rows alone.

Hooks on the block's sites (:class:`CandidateSparsifiers`) sparsify slice ``k`` of a stacked batch with
candidate ``k``'s thresholds, knowing the absolute positions of the rows they are given (TEAL's and WAS's
dense leading tokens stay dense when only the trailing rows run).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from allocator.model import ModelAdapter
from allocator.sparsity._blocks import StopForward, block_output
from allocator.sparsity._calibration import Calibration

ERROR_NORMS: tuple[str, ...] = ("mse", "l2")
"""``mse``: mean squared error over every error-row element; ``l2`` (TEAL's): per sequence the L2 norm of the
difference over its error rows, averaged over sequences."""

_ATTENTION_SITES = (0, 1, 2, 3)  # q, k, v, o in SITE_NAMES order
_O_SITE = 3


def error_start(length: int, error_positions: float) -> int:
    """The first error row of a ``length``-token sequence: its last ``error_positions`` share is scored."""
    return length - max(1, round(error_positions * length))


def output_error(output: torch.Tensor, dense: torch.Tensor, norm: str) -> torch.Tensor:
    """``(K,)`` errors of ``K x B x R x C`` outputs against the ``B x R x C`` dense output (both error rows only)."""
    difference = output - dense
    if norm == "l2":
        return difference.pow(2).sum(dim=(2, 3)).sqrt().mean(dim=1).double()
    return difference.pow(2).mean(dim=(1, 2, 3)).double()


class CandidateSparsifiers:
    """Hooks on one block's sites that sparsify slice k of a stacked ``(K*B) x R x C`` batch with thresholds k."""

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
        self.offset = 0  # absolute position of the first row the hooks are given
        self.length: int | None = None  # the sequences' full length when only trailing rows run

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

    @contextlib.contextmanager
    def rows(self, offset: int, length: int) -> Any:
        """Within the block, the hooks are given rows ``offset..length-1`` of ``length``-token sequences."""
        self.offset, self.length = offset, length
        try:
            yield
        finally:
            self.offset, self.length = 0, None

    def install(self) -> list[Any]:
        """Put the hooks on the block's sites; returns their handles (the caller removes them)."""
        return [site.module.register_forward_pre_hook(self._hook(i)) for i, site in enumerate(self.sites)]

    def _dense_rows(self, n_rows: int) -> int:
        length = self.length if self.length is not None else n_rows
        if self.sparsify_fraction >= 1.0 or length <= 1:
            return 0
        return max(0, length - int(self.sparsify_fraction * length) - self.offset)

    def _hook(self, index: int) -> Callable[..., Any]:
        def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            x = args[0]  # (K*B, R, C)
            stacked = x.reshape(self.n_candidates, -1, x.shape[-2], x.shape[-1])  # (K, B, R, C)
            threshold = self.thresholds[index].to(device=x.device)
            keep = torch.sign(stacked.abs() - threshold).clamp_(min=0)
            dense = self._dense_rows(x.shape[-2])
            if dense:
                keep[..., :dense, :] = 1.0
            return ((stacked * keep).reshape(x.shape), *args[1:])

        return hook


def _stack(value: Any, batch: int, copies: int) -> Any:
    """Repeat a captured input ``copies`` times along the batch when it is per-sequence (leading dim ``batch``)."""
    if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == batch and batch > 1:
        return value.repeat(copies, *([1] * (value.dim() - 1)))
    if isinstance(value, tuple):
        return tuple(_stack(v, batch, copies) for v in value)
    return value


def stacked_inputs(args: tuple[Any, ...], kwargs: dict[str, Any], copies: int) -> tuple[tuple[Any, ...], dict]:
    """A block's inputs repeated ``copies`` times along the batch (per-sequence keyword inputs too)."""
    hidden = args[0]  # (B, T, C)
    batch = hidden.shape[0]
    stacked_kwargs = {key: _stack(value, batch, copies) for key, value in kwargs.items()}
    return (hidden.repeat(copies, 1, 1), *args[1:]), stacked_kwargs


def stacked_output(layer: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], copies: int) -> torch.Tensor:
    """The block's output on ``copies`` stacked copies of its inputs (each sparsified by its own candidate)."""
    stacked_args, stacked_kwargs = stacked_inputs(args, kwargs, copies)
    output = block_output(layer, stacked_args, stacked_kwargs)
    return output.reshape(copies, args[0].shape[0], *output.shape[1:])  # (K, B, T, C)


class StackedBlock:
    """Errors of candidate splits: all candidates stacked along the batch, one whole-block forward."""

    def __init__(
        self,
        layer: torch.nn.Module,
        inputs: tuple[tuple[Any, ...], dict[str, Any]],
        sparsifiers: CandidateSparsifiers,
        *,
        error_positions: float = 1.0,
        norm: str = "mse",
    ) -> None:
        self.layer, (self.args, self.kwargs) = layer, inputs
        self.sparsifiers, self.norm = sparsifiers, norm
        self.start = error_start(self.args[0].shape[1], error_positions)
        with _without(sparsifiers):
            self.dense = stacked_output(layer, self.args, self.kwargs, 1)[0][:, self.start :]  # (B, R, C)

    def errors(self, candidates: torch.Tensor) -> torch.Tensor:
        """``(K,)`` errors of the rows of a ``K x 7`` split."""
        self.sparsifiers.set_candidates(candidates)
        output = stacked_output(self.layer, self.args, self.kwargs, candidates.shape[0])[:, :, self.start :]
        return output_error(output, self.dense, self.norm)

    def step_errors(self, current: torch.Tensor, candidates: torch.Tensor, changed: list[int]) -> torch.Tensor:
        """The errors of one greedy step's candidates (each ``current`` with site ``changed[k]`` raised)."""
        return self.errors(candidates)


class NaiveBlock(StackedBlock):
    """Errors of candidate splits as TEAL computes them: one whole-block forward per candidate."""

    def errors(self, candidates: torch.Tensor) -> torch.Tensor:
        """``(K,)`` errors, one forward each."""
        return torch.cat([super(NaiveBlock, self).errors(candidates[k : k + 1]) for k in range(candidates.shape[0])])


@contextlib.contextmanager
def _without(sparsifiers: CandidateSparsifiers) -> Any:
    """Run the block dense although the hooks are installed (all thresholds 0 keep every nonzero input)."""
    saved, count = sparsifiers.thresholds, sparsifiers.n_candidates
    sparsifiers.thresholds = [torch.zeros(1, 1, 1, 1)] * len(sparsifiers.sites)
    sparsifiers.n_candidates = 1
    try:
        yield
    finally:
        sparsifiers.thresholds, sparsifiers.n_candidates = saved, count


class FastBlock(StackedBlock):
    """Errors of a greedy step's candidates from the site each touches onward (module docstring); for blocks
    with :func:`~allocator.sparsity._blocks.has_llama_layout`.

    The decomposition is checked against the whole block on the dense inputs when the block is set up; a
    block it does not reproduce is refused (``ValueError``), and the caller falls back to the stacked way.
    """

    def __init__(self, layer: torch.nn.Module, inputs: Any, sparsifiers: CandidateSparsifiers, **options: Any):
        super().__init__(layer, inputs, sparsifiers, **options)
        self.length = self.args[0].shape[1]
        self.residual = self.args[0][:, self.start :]  # (B, R, C): the block input on the error rows
        # attention candidates' (h, attention output) on the error rows, by their q/k/v/o sparsities
        self._attention_cache: dict[tuple[float, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        with _without(self.sparsifiers):
            zero = torch.zeros(1, 7, dtype=torch.float64)
            h, attention = self._attention_half(zero)
            rebuilt = self._mlp_half(h, zero)[0]
        scale = float(self.dense.abs().max()) or 1.0
        if not torch.allclose(rebuilt, self.dense, rtol=1e-4, atol=1e-5 * scale):
            raise ValueError("the block's output is not h + mlp(norm(h)) with h = x + o_proj(attention)")
        self.current_key = (0.0, 0.0, 0.0, 0.0)
        self.current = (h[0], attention[0])  # (B, R, C) each, for the current split's attention sites

    def _attention_half(self, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``h`` and the o projection's (raw) input on the error rows, ``K x B x R x C`` each, from the block input."""
        self.sparsifiers.set_candidates(candidates)
        captured: dict[str, torch.Tensor] = {}

        def at_o(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            captured["attention"] = args[0][:, self.start :]

        def at_norm(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            captured["h"] = args[0][:, self.start :]
            raise StopForward

        handles = [
            self.layer.self_attn.o_proj.register_forward_pre_hook(at_o, prepend=True),
            self.layer.post_attention_layernorm.register_forward_pre_hook(at_norm),
        ]
        try:
            stacked_args, stacked_kwargs = stacked_inputs(self.args, self.kwargs, candidates.shape[0])
            with contextlib.suppress(StopForward):
                self.layer(*stacked_args, **stacked_kwargs)
        finally:
            for handle in handles:
                handle.remove()
        shape = (candidates.shape[0], *self.residual.shape)
        return captured["h"].reshape(shape), captured["attention"].reshape(shape)

    def _o_half(self, attention: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """``h`` on the error rows (``K x B x R x C``) from the attention output, sparsified by the candidates' o."""
        self.sparsifiers.set_candidates(candidates)
        k = candidates.shape[0]
        with self.sparsifiers.rows(self.start, self.length):
            projected = self.layer.self_attn.o_proj(attention.repeat(k, 1, 1))
        return self.residual.unsqueeze(0) + projected.reshape(k, *self.residual.shape)

    def _mlp_half(self, h: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """The block output on the error rows (``K x B x R x C``) from each candidate's ``h``."""
        self.sparsifiers.set_candidates(candidates)
        flat = h.reshape(-1, *h.shape[2:])
        with self.sparsifiers.rows(self.start, self.length):
            output = flat + self.layer.mlp(self.layer.post_attention_layernorm(flat))
        return output.reshape(h.shape)

    def errors(self, candidates: torch.Tensor) -> torch.Tensor:
        """``(K,)`` errors of any splits (every site may differ): attention on all rows, the rest on the error rows."""
        h, _ = self._attention_half(candidates)
        return output_error(self._mlp_half(h, candidates), self.dense, self.norm)

    def step_errors(self, current: torch.Tensor, candidates: torch.Tensor, changed: list[int]) -> torch.Tensor:
        """The errors of one greedy step's candidates, each computed from its changed site onward."""
        key = tuple(float(v) for v in current[:4])
        if key != self.current_key:  # the last step raised an attention site: take that candidate's h
            self.current = self._attention_cache[key]
            self.current_key = key
            self._attention_cache = {}
        h_current, attention_current = self.current
        halves: list[torch.Tensor] = []
        cache: dict[tuple[float, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        qkv = [k for k, site in enumerate(changed) if site in _ATTENTION_SITES and site != _O_SITE]
        fresh = [k for k in qkv if tuple(float(v) for v in candidates[k, :4]) not in self._attention_cache]
        if fresh:
            h, attention = self._attention_half(candidates[fresh])
            for row, k in enumerate(fresh):
                self._attention_cache[tuple(float(v) for v in candidates[k, :4])] = (h[row], attention[row])
        for k, site in enumerate(changed):
            attention_key = tuple(float(v) for v in candidates[k, :4])
            if site == _O_SITE and attention_key not in self._attention_cache:
                h_o = self._o_half(attention_current, candidates[k : k + 1])[0]
                self._attention_cache[attention_key] = (h_o, attention_current)
            if site in _ATTENTION_SITES:
                cache[attention_key] = self._attention_cache[attention_key]
                halves.append(self._attention_cache[attention_key][0])
            else:
                halves.append(h_current)
        self._attention_cache = cache  # what the next step can reuse, if it raises an MLP site
        output = self._mlp_half(torch.stack(halves), candidates)
        return output_error(output, self.dense, self.norm)
