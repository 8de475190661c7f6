"""TEAL's own reading rule, applied to our TEAL-compatible files, recovers our per-site thresholds.

``_TealDistribution`` is written from TEAL's documented behaviour (``utils/utils.py``, ``Distribution``): the
CDF at each (increasing) bin center is the cumulative count through that center over the total, ``icdf(q)``
interpolates linearly between centers, and a site's threshold for sparsity s is ``icdf(0.5 + s/2)``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from allocator import (
    INPUT_GROUPS,
    SITE_NAMES,
    Calibration,
    GreedyTable,
    Score,
    ScoreHistogram,
    calibrate,
    key_counts,
    load_model,
    write_teal_files,
)

SPARSITIES = torch.linspace(0.05, 0.95, 91, dtype=torch.float64)
# TEAL's layout: which file and key hold each site's input distribution.
TEAL_FILES = {
    "q": ("self_attn", "h1"),
    "k": ("self_attn", "h1"),
    "v": ("self_attn", "h1"),
    "o": ("self_attn", "h2"),
    "gate": ("mlp", "h1"),
    "up": ("mlp", "h1"),
    "down": ("mlp", "h2"),
}


class _TealDistribution:
    """TEAL's reading of one histogram: a CDF through (center, cumulative count) points, inverted linearly."""

    def __init__(self, counts: torch.Tensor, centers: torch.Tensor) -> None:
        self.centers = centers
        self.total = counts.sum()
        self.cumulative = torch.cumsum(counts, dim=0)

    @classmethod
    def load(cls, directory: Path, layer: int, site: str) -> _TealDistribution:
        group, key = TEAL_FILES[site]
        hist = torch.load(directory / "histograms" / f"layer-{layer}" / group / "histograms.pt", weights_only=True)
        return cls(hist[key], hist[f"{key}_centers"])

    def icdf(self, q: float) -> float:
        target = q * self.total
        index = int(torch.searchsorted(self.cumulative, target))
        if index == 0:
            return float(self.centers[0])
        if index == len(self.centers):
            return float(self.centers[-1])
        lower_count, upper_count = self.cumulative[index - 1], self.cumulative[index]
        lower, upper = self.centers[index - 1], self.centers[index]
        return float(lower + (target - lower_count) / (upper_count - lower_count) * (upper - lower))

    def threshold(self, sparsity: float) -> float:
        """TEAL's threshold: it assumes a symmetric, zero-mean distribution of the signed input."""
        return 0.0 if sparsity == 0 else self.icdf(0.5 + sparsity / 2)


def _histogram(values: torch.Tensor) -> ScoreHistogram:
    return ScoreHistogram.from_key_counts(key_counts(values))


def _skewed(n: int, seed: int, *, positive: float = 0.9, zeros: float = 0.0) -> torch.Tensor:
    """Heavy-tailed values over many octaves, a share ``positive`` of them positive (like the ``o`` input) and
    larger than the negative ones, and a share ``zeros`` of exact zeros (as in inputs measured under sparsity)."""
    generator = torch.Generator().manual_seed(seed)
    magnitude = torch.randn(n, generator=generator).abs() * torch.randn(n, generator=generator).exp()
    sign = torch.rand(n, generator=generator) < positive
    values = torch.where(sign, magnitude, -0.3 * magnitude)
    values[: round(zeros * n)] = 0.0
    return values


def _synthetic_calibration() -> Calibration:
    """Two blocks of skewed inputs; sites reading one tensor share one histogram, as in :func:`calibrate`."""
    rows = []
    for block in range(2):
        groups = {
            "attn_in": _histogram(torch.randn(50_000, generator=torch.Generator().manual_seed(block))),
            "attn_out": _histogram(_skewed(80_000, 10 + block)),
            "mlp_in": _histogram(_skewed(60_000, 20 + block, positive=0.2)),
            "mlp_out": _histogram(_skewed(70_000, 30 + block, positive=0.7, zeros=0.073)),  # 7.3%: off the grid
        }
        rows.append(tuple(groups[INPUT_GROUPS[name]] for name in SITE_NAMES))
    return Calibration(score=Score(), histograms=tuple(rows), model_fingerprint="synthetic", n_tokens=0)


def _export(directory: Path, calibration: Calibration, sites: torch.Tensor, greedy: GreedyTable | None = None):
    weights = torch.tensor([[4.0, 1.0, 1.0, 4.0, 10.0, 10.0, 10.0]] * calibration.n_blocks, dtype=torch.float64)
    vector = (sites * weights).sum(dim=1) / weights.sum(dim=1)
    write_teal_files(directory, calibration, vector, sites, weights, greedy=greedy)
    return vector, weights


def _worst_relative_error(directory: Path, calibration: Calibration) -> float:
    """The largest |TEAL's threshold - ours| / ours over every site and every sparsity in ``SPARSITIES``."""
    shape = (calibration.n_blocks, len(SITE_NAMES))
    ours = torch.stack(
        [calibration.thresholds(torch.full(shape, float(s), dtype=torch.float64)) for s in SPARSITIES]
    )  # (S, B, 7)
    worst = 0.0
    for layer in range(calibration.n_blocks):
        for position, site in enumerate(SITE_NAMES):
            distribution = _TealDistribution.load(directory, layer, site)
            teal = torch.tensor([distribution.threshold(float(s)) for s in SPARSITIES], dtype=torch.float64)
            worst = max(worst, float(((teal - ours[:, layer, position]).abs() / ours[:, layer, position]).max()))
    return worst


def test_teal_reads_back_our_thresholds_on_skewed_inputs(tmp_path):
    calibration = _synthetic_calibration()
    _export(tmp_path, calibration, torch.full((2, 7), 0.5, dtype=torch.float64))
    worst = _worst_relative_error(tmp_path, calibration)
    assert worst < 0.01
    assert worst < 1e-9  # in fact exact up to rounding: the exported CDF has our CDF's linear pieces


def test_the_signed_histogram_fails_that_check_on_a_skewed_input():
    hist = _histogram(_skewed(80_000, 10))
    counts, centers = hist.signed()  # the former export: the signed histogram at bin centers
    distribution = _TealDistribution(counts.to(torch.float32), centers.to(torch.float32))
    teal = torch.tensor([distribution.threshold(float(s)) for s in SPARSITIES], dtype=torch.float64)
    ours = hist.thresholds(SPARSITIES)
    assert float(((teal - ours).abs() / ours).max()) > 0.01


def test_histogram_files_hold_float32_centers_and_exact_float64_counts(tmp_path):
    calibration = _synthetic_calibration()
    _export(tmp_path, calibration, torch.full((2, 7), 0.5, dtype=torch.float64))
    for group, site in (("self_attn", "o"), ("mlp", "down")):
        hist = torch.load(tmp_path / "histograms" / "layer-1" / group / "histograms.pt", weights_only=True)
        assert set(hist) == {"h1", "h1_centers", "h2", "h2_centers"}
        counts, centers = hist["h2"], hist["h2_centers"]
        assert centers.dtype == torch.float32 and counts.dtype == torch.float64
        assert bool((centers[1:] > centers[:-1]).all())
        assert torch.equal(centers, -centers.flip(0))  # mirrored
        total = calibration.histograms[1][SITE_NAMES.index(site)].total
        assert float(counts.sum()) == total and 2 * float(counts[centers > 0].sum()) == total


@pytest.fixture(scope="module")
def tiny_calibration(trained_tiny_dir):
    from pydoc_data.topics import topics

    loaded = load_model(trained_tiny_dir)
    text = "\n".join(topics[key] for key in sorted(topics)[40:50])
    ids = torch.tensor(loaded.tokenizer(text)["input_ids"])
    tokens = ids[: 8 * 64].view(8, 64)
    return calibrate(loaded.adapter, tokens, model_fingerprint=loaded.fingerprint)


def test_teal_reads_back_the_tiny_models_thresholds_within_one_percent(tiny_calibration, tmp_path):
    _export(tmp_path, tiny_calibration, torch.full((tiny_calibration.n_blocks, 7), 0.5, dtype=torch.float64))
    assert _worst_relative_error(tmp_path, tiny_calibration) < 0.01


def _rows(directory: Path, layer: int) -> list[list[str]]:
    with (directory / "lookup" / f"layer-{layer}" / "results.csv").open(newline="") as handle:
        return list(csv.reader(handle))


def test_uniform_lookup_rows_and_block_vector(tmp_path):
    calibration = _synthetic_calibration()
    sites = torch.tensor([[0.3, 0.3, 0.3, 0.5, 0.6, 0.6, 0.7], [0.5] * 7], dtype=torch.float64)
    vector, _ = _export(tmp_path, calibration, sites)
    assert json.loads((tmp_path / "block_sparsities.json").read_text()) == vector.tolist()
    for layer in range(2):
        rows = _rows(tmp_path, layer)
        assert rows[0] == ["Effective Sparsity", "Activation Error", "Baseline Error", *SITE_NAMES]
        expected = {k * 0.01: [k * 0.01] * 7 for k in range(1, 100) if abs(k * 0.01 - float(vector[layer])) > 1e-12}
        expected[float(vector[layer])] = sites[layer].tolist()
        assert [float(row[0]) for row in rows[1:]] == sorted(expected)
        for row in rows[1:]:
            assert row[1] == row[2] == "nan"
            assert [float(s) for s in row[3:]] == expected[float(row[0])]


def _approx(rows: list[list[float]]) -> list:
    return [pytest.approx(row, nan_ok=True) for row in rows]


def test_greedy_lookup_rows(tmp_path):
    calibration = _synthetic_calibration()
    effective = torch.tensor([0.0, 0.2, 0.5], dtype=torch.float64)
    table_sites = torch.stack([torch.zeros(7), torch.full((7,), 0.2), torch.full((7,), 0.5)]).double()
    greedy = GreedyTable(
        effective=(effective, effective),
        sites=(table_sites, table_sites),
        error=(torch.tensor([0.0, 0.1, 0.3]), torch.tensor([0.0, 0.1, 0.3])),
        baseline_error=(torch.tensor([0.0, 0.2, 0.4]), torch.tensor([0.0, 0.2, 0.4])),
    )
    sites = torch.tensor([[0.5] * 7, [0.3, 0.3, 0.3, 0.4, 0.35, 0.35, 0.4]], dtype=torch.float64)
    vector, _ = _export(tmp_path, calibration, sites, greedy)
    # Block 0's choice is the table's 0.5 row (replaced, errors unknown); the 0 row is never written.
    rows = [[float(x) for x in row] for row in _rows(tmp_path, 0)[1:]]
    assert [row[:3] for row in rows] == _approx([[0.2, 0.1, 0.2], [0.5, math.nan, math.nan]])
    # Block 1's choice falls between the table's rows and is inserted in order.
    rows = [[float(x) for x in row] for row in _rows(tmp_path, 1)[1:]]
    assert [row[:3] for row in rows] == _approx(
        [[0.2, 0.1, 0.2], [float(vector[1]), math.nan, math.nan], [0.5, 0.3, 0.4]]
    )
    assert rows[1][3:] == sites[1].tolist() and rows[2][3:] == [0.5] * 7
