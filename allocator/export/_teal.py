"""TEAL-compatible export: the histogram and lookup files TEAL's (and WAS's) loaders read.

Layout, under the export directory:

- ``histograms/layer-{i}/self_attn/histograms.pt`` and ``.../mlp/histograms.pt``: ``torch.save`` of
  ``{'h1': counts, 'h1_centers': centers, 'h2': counts, 'h2_centers': centers}`` (increasing float32
  centers, float64 counts). Attention: h1 = the q/k/v input, h2 = the o input; MLP: h1 = the gate/up
  input, h2 = the down input.
- ``lookup/layer-{i}/results.csv`` with header
  ``Effective Sparsity,Activation Error,Baseline Error,q,k,v,o,gate,up,down``: rows of per-site sparsity
  fractions, increasing. TEAL/WAS pick, per layer, the row whose Effective Sparsity is nearest the block's
  target; each layer's file includes a row at exactly the exported block sparsity, so that pick is exact.
- ``block_sparsities.json``: the per-block vector to give those loaders.

A frontier export writes these files for each point in its own directory, and at its top level the files of
:func:`write_teal_frontier_files` (one results.csv row per point, one point's histograms).

The histograms are not the signed distribution but the symmetrised distribution of |x|, built so that TEAL's
own reading code returns our threshold. TEAL's ``Distribution`` takes ``cumsum(counts)`` as the CDF *at* each
center, interpolates linearly between centers, and thresholds a site at ``icdf(0.5 + s/2)``: right only for a
symmetric, zero-mean distribution, and some inputs are not (``o`` is mostly positive: through its signed
histogram TEAL set SmolLM2's layer-7 ``o`` threshold at 0.0585 where ours is 0.0749). Our threshold t solves
P(|x| <= t) = s with the magnitude CDF linear inside each log-spaced bin, i.e. through the points
(e_j, share of |x| below e_j). So the magnitude bin [e_j, e_{j+1}) with count c_j becomes two points carrying
c_j / 2 each, one at +e_{j+1} and one at -e_j: every bin of the mirrored signed distribution puts its mass at
its right-hand edge, and zero-count points at -e_k (the outermost edge) and +e_0 (unless e_0 = 0, where -e_0 is
that point) close the curve. The exported CDF at +t is then 1/2 + P(|x| <= t)/2 with the same linear pieces as
ours, and TEAL's icdf(1/2 + s/2) is our threshold up to float rounding (the same mirror at bin centers, as TEAL
writes its own files, reads back up to 0.4% off). Counts are float64 so that TEAL's ``cumsum`` of a real
calibration's counts (hundreds of millions per site) stays exact; bin edges are bfloat16 values, so float32
centers are exact.
Nothing here depends on how the histograms were measured: whatever :class:`~allocator.ScoreHistogram` objects
the calibration holds are exported.

Only the ``magnitude`` score has TEAL's meaning (TEAL thresholds |x| through the signed histogram);
weight-aware calibrations are exported as lookup.json only.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from allocator.model import INPUT_GROUPS, SITE_NAMES
from allocator.sparsity import Calibration, GreedyTable, ScoreHistogram

CSV_HEADER = ("Effective Sparsity", "Activation Error", "Baseline Error", *SITE_NAMES)
_GROUP_FILES = {
    "attn_in": ("self_attn", "h1"),
    "attn_out": ("self_attn", "h2"),
    "mlp_in": ("mlp", "h1"),
    "mlp_out": ("mlp", "h2"),
}
_UNIFORM_GRID = 0.01


def write_teal_files(
    directory: Path,
    calibration: Calibration,
    block_sparsities: torch.Tensor,
    site_sparsities: torch.Tensor,
    site_weights: torch.Tensor,
    greedy: GreedyTable | None = None,
) -> None:
    """Write TEAL's histogram and lookup files for a ``magnitude`` calibration into ``directory``.

    ``block_sparsities`` is the ``n_blocks`` exported vector, ``site_sparsities`` its ``n_blocks x 7`` split
    and ``site_weights`` the ``n_blocks x 7`` weight counts.
    """
    _write_histograms(directory, calibration)
    for b in range(calibration.n_blocks):
        _write_results(directory, b, _layer_rows(b, site_sparsities[b], site_weights[b], greedy))
    (directory / "block_sparsities.json").write_text(json.dumps([float(s) for s in block_sparsities]) + "\n")


def write_teal_frontier_files(
    directory: Path, calibration: Calibration, site_sparsities: Sequence[torch.Tensor], site_weights: torch.Tensor
) -> None:
    """Write the TEAL files of a frontier export's top level into ``directory``.

    ``site_sparsities`` holds each frontier point's ``n_blocks x 7`` split. Each
    ``lookup/layer-{i}/results.csv`` gets one row per point (the layer's effective sparsity and site split
    at that point), sorted by Effective Sparsity, so TEAL's nearest-row pick given a point's
    ``block_sparsities.json`` (in that point's directory) is that point's split. The histograms are those of
    ``calibration``: one point's (the export passes the point at the middle target), so TEAL's thresholds
    for the other points come from histograms measured under another allocation. No top-level
    ``block_sparsities.json`` is written: each point's directory holds its own.
    """
    _write_histograms(directory, calibration)
    for b in range(calibration.n_blocks):
        rows = []
        for sites in site_sparsities:
            effective = float((sites[b] * site_weights[b]).sum() / site_weights[b].sum())
            rows.append((effective, float("nan"), float("nan"), [float(s) for s in sites[b]]))
        rows.sort(key=lambda row: row[0])
        _write_results(directory, b, [[repr(e), repr(a), repr(c), *(repr(s) for s in ss)] for e, a, c, ss in rows])


def _write_histograms(directory: Path, calibration: Calibration) -> None:
    if calibration.score.kind != "magnitude":
        raise ValueError("TEAL's files describe magnitude scores only.")
    for b in range(calibration.n_blocks):
        files: dict[str, dict[str, torch.Tensor]] = {"self_attn": {}, "mlp": {}}
        for position, name in enumerate(SITE_NAMES):
            group_file, key = _GROUP_FILES[INPUT_GROUPS[name]]
            if key in files[group_file]:
                continue
            counts, centers = _symmetrised(calibration.histograms[b][position])
            files[group_file][key] = counts
            files[group_file][f"{key}_centers"] = centers
        for group_file, tensors in files.items():
            path = directory / "histograms" / f"layer-{b}" / group_file
            path.mkdir(parents=True, exist_ok=True)
            torch.save(tensors, path / "histograms.pt")


def _write_results(directory: Path, block: int, rows: list[list[str]]) -> None:
    path = directory / "lookup" / f"layer-{block}"
    path.mkdir(parents=True, exist_ok=True)
    with (path / "results.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_HEADER)
        writer.writerows(rows)


def _symmetrised(hist: ScoreHistogram) -> tuple[torch.Tensor, torch.Tensor]:
    """``(counts, centers)``: float64 counts and increasing float32 centers of the mirrored histogram of |x|.

    TEAL's CDF at point i is the sum of counts up to and including i, so every point carries the mass that
    ends there (see the module docstring). For ``k`` magnitude bins with edges ``e_0 < ... < e_k``:
    ``-e_k, -e_{k-1}, ..., -e_0`` carry ``0, c_{k-1} / 2, ..., c_0 / 2`` and ``(+e_0,) +e_1, ..., +e_k`` carry
    ``(0,) c_0 / 2, ..., c_{k-1} / 2``: ``2k + 2`` points, or ``2k + 1`` when ``e_0 = 0``.
    """
    counts = hist.magnitude_counts().to(torch.float64) / 2  # halves of integers below 2**53: exact
    if counts.numel() == 0:
        return counts, torch.zeros(0, dtype=torch.float32)
    edges = hist.magnitude_edges().clamp(max=torch.finfo(torch.float32).max)  # the edge above the top finite bin
    zero = torch.zeros(1, dtype=torch.float64)
    negative_centers, negative_counts = -edges.flip(0), torch.cat([zero, counts.flip(0)])
    if edges[0] > 0:
        positive_centers, positive_counts = edges, torch.cat([zero, counts])
    else:  # -e_0 = +e_0 = 0 is already the last negative point
        positive_centers, positive_counts = edges[1:], counts
    centers = torch.cat([negative_centers, positive_centers]).to(torch.float32)
    return torch.cat([negative_counts, positive_counts]), centers


def _layer_rows(
    block: int, chosen_sites: torch.Tensor, weights: torch.Tensor, greedy: GreedyTable | None
) -> list[list[str]]:
    """Rows of one layer's results.csv, increasing in Effective Sparsity, with the chosen split as one row."""
    rows: list[tuple[float, float, float, list[float]]] = []
    if greedy is not None:
        table = zip(
            greedy.effective[block], greedy.error[block], greedy.baseline_error[block], greedy.sites[block], strict=True
        )
        for effective, error, baseline, sites in table:
            if effective > 0:  # TEAL writes no row at sparsity 0
                rows.append((float(effective), float(error), float(baseline), [float(s) for s in sites]))
    else:
        steps = round(0.99 / _UNIFORM_GRID)
        for k in range(1, steps + 1):
            level = k * _UNIFORM_GRID
            rows.append((level, float("nan"), float("nan"), [level] * len(SITE_NAMES)))
    chosen_effective = float((chosen_sites * weights).sum() / weights.sum())
    rows = [row for row in rows if abs(row[0] - chosen_effective) > 1e-12]
    if chosen_effective > 0:
        rows.append((chosen_effective, float("nan"), float("nan"), [float(s) for s in chosen_sites]))
    rows.sort(key=lambda row: row[0])
    return [[repr(e), repr(a), repr(b), *(repr(s) for s in sites)] for e, a, b, sites in rows]
