"""Calibration: one dense pass over calibration tokens that records every site's score histogram.

For ``magnitude`` scores q/k/v share one histogram per block (they read the same tensor), as do gate/up; for
``weight_aware`` each site scores its input with its own column norms and gets its own histogram. Thresholds
for any per-site sparsities are then the histograms' inverse CDF, with no further pass over data.

A :class:`Calibration` serialises to one safetensors blob (tensors plus JSON metadata), which is what the
study database stores and what lookups record as provenance.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from allocator.errors import InputError
from allocator.model import INPUT_GROUPS, SITE_NAMES, ModelAdapter
from allocator.sparsity._histogram import ScoreHistogram, key_counts
from allocator.sparsity._scores import Score

CALIBRATION_FORMAT = "sparsealloc.calibration/v1"

ProgressCallback = Callable[[int], None]
"""Called with the number of sequences just processed."""


@dataclass(frozen=True)
class Calibration:
    """Per-site score histograms of one model on one set of calibration tokens.

    ``histograms[b][i]`` is the histogram of site ``SITE_NAMES[i]`` of block ``b``; sites sharing a
    distribution share the object.
    """

    score: Score
    histograms: tuple[tuple[ScoreHistogram, ...], ...]
    model_fingerprint: str
    n_tokens: int
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def n_blocks(self) -> int:
        """The number of blocks the calibration covers, which must match the model it is used with."""
        return len(self.histograms)

    def thresholds(self, site_sparsities: torch.Tensor) -> torch.Tensor:
        """Thresholds (score units) for a ``n_blocks x 7`` tensor of per-site sparsities in [0, 1)."""
        site_sparsities = torch.as_tensor(site_sparsities, dtype=torch.float64)
        if tuple(site_sparsities.shape) != (self.n_blocks, len(SITE_NAMES)):
            raise InputError(
                f"Per-site sparsities should have shape ({self.n_blocks}, {len(SITE_NAMES)}), "
                f"got {tuple(site_sparsities.shape)}."
            )
        if bool(((site_sparsities < 0) | (site_sparsities >= 1) | site_sparsities.isnan()).any()):
            raise InputError("Every sparsity should be in [0, 1).")
        out = torch.zeros_like(site_sparsities)
        for b, row in enumerate(self.histograms):
            for i, hist in enumerate(row):
                out[b, i] = hist.thresholds(site_sparsities[b, i : i + 1])[0]
        return out

    def threshold_table(self, levels: Sequence[float]) -> torch.Tensor:
        """A ``n_blocks x 7 x L`` table: every site's threshold at each of the ``L`` sparsities ``levels``."""
        levels = torch.as_tensor(levels, dtype=torch.float64)
        if levels.dim() != 1 or bool(((levels < 0) | (levels >= 1) | levels.isnan()).any()):
            raise InputError("Every level of a threshold table should be a sparsity in [0, 1).")
        return torch.stack([torch.stack([hist.thresholds(levels) for hist in row]) for row in self.histograms])

    # -- serialisation -----------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """One safetensors blob; shared histograms are stored once."""
        from safetensors.torch import save

        tensors: dict[str, torch.Tensor] = {}
        layout: list[list[str]] = []
        offsets: dict[str, int] = {}
        stored: dict[int, str] = {}
        for b, row in enumerate(self.histograms):
            names = []
            for i, hist in enumerate(row):
                key = stored.get(id(hist))
                if key is None:
                    key = f"{b}.{SITE_NAMES[i]}"
                    stored[id(hist)] = key
                    tensors[f"{key}.negative"] = hist.negative.contiguous()
                    tensors[f"{key}.positive"] = hist.positive.contiguous()
                    offsets[key] = hist.offset
                names.append(key)
            layout.append(names)
        metadata = {
            "format": CALIBRATION_FORMAT,
            "score": json.dumps(self.score.describe()),
            "model_fingerprint": self.model_fingerprint,
            "n_tokens": str(self.n_tokens),
            "seconds": repr(self.seconds),
            "data": json.dumps(self.data, sort_keys=True),
            "layout": json.dumps(layout),
            "offsets": json.dumps(offsets),
        }
        return save(tensors, metadata=metadata)

    @classmethod
    def from_bytes(cls, blob: bytes) -> Calibration:
        """The calibration stored by :meth:`to_bytes`, with shared histograms shared again; a blob of another format is
        refused."""
        from safetensors.torch import load

        tensors = load(blob)
        # safetensors reads metadata only from files; the header is 8 bytes of little-endian length, then JSON.
        header_length = int.from_bytes(blob[:8], "little")
        metadata = json.loads(blob[8 : 8 + header_length]).get("__metadata__", {})
        if metadata.get("format") != CALIBRATION_FORMAT:
            raise InputError(f"Unknown calibration format {metadata.get('format')!r}; expected {CALIBRATION_FORMAT}.")
        offsets = json.loads(metadata["offsets"])
        cache: dict[str, ScoreHistogram] = {}

        def histogram(key: str) -> ScoreHistogram:
            if key not in cache:
                cache[key] = ScoreHistogram(
                    offset=int(offsets[key]), negative=tensors[f"{key}.negative"], positive=tensors[f"{key}.positive"]
                )
            return cache[key]

        return cls(
            score=Score.from_description(json.loads(metadata["score"])),
            histograms=tuple(tuple(histogram(key) for key in row) for row in json.loads(metadata["layout"])),
            model_fingerprint=metadata["model_fingerprint"],
            n_tokens=int(metadata["n_tokens"]),
            seconds=float(metadata["seconds"]),
            data=json.loads(metadata["data"]),
        )


@torch.no_grad()
def calibrate(
    adapter: ModelAdapter,
    tokens: torch.Tensor,
    *,
    score: Score | None = None,
    model_fingerprint: str = "",
    batch_size: int = 8,
    data: dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
) -> Calibration:
    """Run the dense model over ``tokens`` (a ``n x seq_len`` int64 tensor) and histogram every site's score."""
    score = score or Score()
    if tokens.dim() != 2 or tokens.shape[0] == 0:
        raise InputError(
            f"Calibration tokens should be a non-empty n x seq_len tensor, got shape {tuple(tokens.shape)}."
        )
    if batch_size < 1:
        raise InputError(f"The value of `batch_size` should be a positive integer, got {batch_size}.")
    model = adapter.model
    model.eval()
    shared = score.shares_group_distribution
    # One key-count accumulator per distinct histogram: per (block, group) when shared, per site otherwise.
    accumulators: dict[tuple[int, str], torch.Tensor] = {}
    handles = _install_histogram_hooks(adapter, score, accumulators)
    try:
        started = time.perf_counter()
        device = next(model.parameters()).device
        for start in range(0, tokens.shape[0], batch_size):
            batch = tokens[start : start + batch_size].to(device)
            adapter.body(input_ids=batch, use_cache=False)  # (B, T, C); the LM head is not needed
            if progress is not None:
                progress(batch.shape[0])
        seconds = time.perf_counter() - started
    finally:
        for handle in handles:
            handle.remove()
    histograms = {key: ScoreHistogram.from_key_counts(counts) for key, counts in accumulators.items()}
    table = tuple(
        tuple(histograms[(b, INPUT_GROUPS[name] if shared else name)] for name in SITE_NAMES)
        for b in range(adapter.n_blocks)
    )
    return Calibration(
        score=score,
        histograms=table,
        model_fingerprint=model_fingerprint,
        n_tokens=int(tokens.numel()),
        seconds=seconds,
        data=dict(data or {}),
    )


def _install_histogram_hooks(
    adapter: ModelAdapter, score: Score, accumulators: dict[tuple[int, str], torch.Tensor]
) -> list[Any]:
    """Forward pre-hooks adding each distinct score distribution's key counts into ``accumulators``."""
    shared = score.shares_group_distribution
    handles = []
    try:
        for block in adapter.sites:
            for site in block:
                key = (site.block, site.input_group if shared else site.name)
                if key in accumulators:
                    continue  # another site of this group already records the shared tensor
                accumulators[key] = torch.zeros(1 << 16, dtype=torch.int64)
                norms = score.channel_norms(site.module)

                def hook(module: torch.nn.Module, args: tuple[Any, ...], key=key, norms=norms) -> None:
                    x = args[0]  # (B, T, C)
                    values = x if norms is None else x.float() * norms.to(x.device)
                    accumulators[key] += key_counts(values).cpu()

                handles.append(site.module.register_forward_pre_hook(hook))
    except BaseException:
        for handle in handles:
            handle.remove()
        raise
    return handles
