"""Score histograms with log-spaced bins, and their inverse CDF (score -> threshold for a sparsity).

Activation scores span many orders of magnitude and pile up near zero, so linear bins (TEAL's 10,000
bins between the 1% and 99% quantiles) are coarse exactly where small sparsities need resolution. We bin by
the top 16 bits of the float32 value, i.e. its bfloat16 truncation: sign, exponent and 7 mantissa bits,
which is 128 bins per octave (each bin 0.55% wide relative to its value) over the whole float range, with no
range to guess before seeing the data. Filling one costs an integer shift and a ``bincount`` per tensor.

Bin ``m`` of the folded (absolute-value) histogram holds magnitudes in ``[edge(m), edge(m+1))`` where
``edge(m)`` is the float32 with bits ``m << 16``. The inverse CDF interpolates linearly inside a bin.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_N_KEYS = 1 << 16  # 16-bit keys: sign bit + 15 magnitude bits
_N_MAGNITUDES = 1 << 15
_FINITE_MAGNITUDES = 0x7F80  # magnitude keys at or above this are inf/NaN


def histogram_keys(scores: torch.Tensor) -> torch.Tensor:
    """The 16-bit bin key (0..65535) of every element of a float32 tensor, flattened."""
    bits = scores.detach().to(torch.float32).contiguous().view(torch.int32)
    return (bits >> 16).add_(1 << 15).view(-1)  # arithmetic shift keeps the sign; shift into 0..65535


def key_counts(scores: torch.Tensor) -> torch.Tensor:
    """A ``65536`` int64 tensor of counts of ``scores`` by bin key."""
    return torch.bincount(histogram_keys(scores), minlength=_N_KEYS)


def _edges() -> torch.Tensor:
    """``32769`` float64 magnitude edges: edge(m) = float32 with bits ``m << 16``."""
    bits = (torch.arange(_N_MAGNITUDES + 1, dtype=torch.int64) << 16).to(torch.int32)
    edges = bits.view(torch.float32).to(torch.float64)
    edges[_FINITE_MAGNITUDES:] = float("inf")
    return edges


_EDGES = _edges()


@dataclass(frozen=True)
class ScoreHistogram:
    """Counts of a site's signed score by log-spaced bin, trimmed to the occupied magnitude range.

    ``negative[i]`` / ``positive[i]`` count scores with magnitude bin ``offset + i`` and that sign.
    """

    offset: int
    negative: torch.Tensor  # int64, k
    positive: torch.Tensor  # int64, k

    @classmethod
    def from_key_counts(cls, counts: torch.Tensor) -> ScoreHistogram:
        """Build from a ``65536`` key-count tensor (see :func:`key_counts`)."""
        counts = counts.to(torch.int64)
        # Key k = (bits >> 16) + 32768: negatives occupy keys 0..32767 with magnitude bits k,
        # positives keys 32768..65535 with magnitude bits k - 32768.
        negative, positive = counts[:_N_MAGNITUDES], counts[_N_MAGNITUDES:]
        occupied = torch.nonzero(negative + positive).view(-1)
        if occupied.numel() == 0:
            return cls(offset=0, negative=torch.zeros(0, dtype=torch.int64), positive=torch.zeros(0, dtype=torch.int64))
        lo, hi = int(occupied[0]), int(occupied[-1]) + 1
        return cls(offset=lo, negative=negative[lo:hi].clone(), positive=positive[lo:hi].clone())

    @property
    def total(self) -> int:
        """The number of scores counted, the denominator of every sparsity the histogram gives."""
        return int(self.negative.sum() + self.positive.sum())

    def magnitude_counts(self) -> torch.Tensor:
        """A ``k`` int64 tensor of counts by magnitude bin, both signs together: what thresholds on ``|score|`` read."""
        return self.negative + self.positive

    def magnitude_edges(self) -> torch.Tensor:
        """``k + 1`` float64 edges of the trimmed magnitude bins."""
        return _EDGES[self.offset : self.offset + self.negative.numel() + 1]

    def thresholds(self, sparsities: torch.Tensor) -> torch.Tensor:
        """Threshold t with P(|score| <= t) = s for each sparsity s (float64 in, float64 out).

        s = 0 maps to 0.0: nothing nonzero is dropped (the sparsifier skips such sites entirely).
        """
        sparsities = torch.as_tensor(sparsities, dtype=torch.float64)
        if self.total == 0:
            raise ValueError("Cannot compute thresholds from an empty histogram.")
        counts = self.magnitude_counts().to(torch.float64)
        cumulative = torch.cumsum(counts, 0)
        target = sparsities.clamp(0.0, 1.0) * cumulative[-1]
        index = torch.searchsorted(cumulative, target, right=False).clamp(max=counts.numel() - 1)
        before = torch.where(index > 0, cumulative[(index - 1).clamp(min=0)], torch.zeros_like(target))
        fraction = ((target - before) / counts[index]).clamp(0.0, 1.0)
        edges = self.magnitude_edges()
        lower, upper = edges[index], edges[index + 1]
        upper = torch.where(torch.isinf(upper), lower, upper)
        thresholds = lower + fraction * (upper - lower)
        return torch.where(sparsities <= 0, torch.zeros_like(thresholds), thresholds)

    def sparsity_at(self, threshold: float) -> float:
        """The fraction of scores with magnitude <= ``threshold`` (the inverse of :meth:`thresholds`)."""
        counts = self.magnitude_counts().to(torch.float64)
        edges = self.magnitude_edges()
        inside = ((threshold - edges[:-1]) / (edges[1:] - edges[:-1])).clamp(0.0, 1.0)
        inside = torch.nan_to_num(inside, nan=1.0)
        return float((counts * inside).sum() / counts.sum())

    def signed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(counts, centers)`` of the signed histogram, increasing centers (the TEAL export's form)."""
        edges = self.magnitude_edges()
        centers = (edges[:-1] + edges[1:].clamp(max=torch.finfo(torch.float32).max)) / 2
        counts = torch.cat([self.negative.flip(0), self.positive])
        return counts, torch.cat([-centers.flip(0), centers])

    def merged(self, other: ScoreHistogram) -> ScoreHistogram:
        """The histogram of both sets of scores."""
        full = torch.zeros(_N_KEYS, dtype=torch.int64)
        for hist in (self, other):
            k = hist.negative.numel()
            full[hist.offset : hist.offset + k] += hist.negative
            full[_N_MAGNITUDES + hist.offset : _N_MAGNITUDES + hist.offset + k] += hist.positive
        return ScoreHistogram.from_key_counts(full)
