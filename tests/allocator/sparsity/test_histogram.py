from __future__ import annotations

import torch

from allocator import ScoreHistogram, key_counts


def _histogram(values: torch.Tensor) -> ScoreHistogram:
    return ScoreHistogram.from_key_counts(key_counts(values))


def test_threshold_reproduces_any_sparsity_within_half_a_point_on_heavy_tailed_data():
    generator = torch.Generator().manual_seed(0)
    # Student-t-like: a bulk near zero and outliers over many octaves, like LLM activations.
    values = torch.randn(200_000, generator=generator) / torch.rand(200_000, generator=generator).clamp(min=1e-3) ** 0.5
    hist = _histogram(values)
    sparsities = torch.linspace(0.0, 0.99, 100, dtype=torch.float64)
    thresholds = hist.thresholds(sparsities)
    achieved = torch.tensor([(values.abs() <= t).double().mean().item() for t in thresholds.tolist()])
    assert (achieved - sparsities).abs().max() < 0.005
    assert thresholds[0] == 0.0
    assert bool((thresholds[1:] >= thresholds[:-1]).all())


def test_sparsity_at_inverts_thresholds():
    values = torch.randn(50_000, generator=torch.Generator().manual_seed(1))
    hist = _histogram(values)
    for s in (0.1, 0.5, 0.9):
        assert abs(hist.sparsity_at(float(hist.thresholds(torch.tensor([s], dtype=torch.float64))[0])) - s) < 1e-9


def test_counts_keep_sign_and_total():
    values = torch.tensor([-4.0, -1.0, -1.0, 0.0, 0.5, 2.0, 2.0, 2.0])
    hist = _histogram(values)
    assert hist.total == values.numel()
    counts, centers = hist.signed()
    assert bool((centers[1:] > centers[:-1]).all())
    assert counts[centers < 0].sum() == 3 and counts[centers > 0].sum() == 5  # the exact zero counts as +0
    assert counts[(centers - 2.0).abs() < 0.05].sum() == 3


def test_merged_equals_histogram_of_both():
    a, b = torch.randn(1000), torch.randn(1000) * 10
    merged = _histogram(a).merged(_histogram(b))
    direct = _histogram(torch.cat([a, b]))
    assert merged.offset == direct.offset
    assert torch.equal(merged.negative, direct.negative) and torch.equal(merged.positive, direct.positive)
