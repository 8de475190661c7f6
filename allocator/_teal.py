"""TEAL-compatible export: the histogram and lookup files TEAL's (and WAS's) loaders read.

Layout, under the export directory:

- ``histograms/layer-{i}/self_attn/histograms.pt`` and ``.../mlp/histograms.pt``: ``torch.save`` of
  ``{'h1': counts, 'h1_centers': centers, 'h2': counts, 'h2_centers': centers}`` (float32, signed values,
  increasing bin centers). Attention: h1 = the q/k/v input, h2 = the o input; MLP: h1 = the gate/up
  input, h2 = the down input. Our bins are log-spaced (128 per octave); TEAL's ``Distribution``
  interpolates between bin centers, so any increasing centers work.
- ``lookup/layer-{i}/results.csv`` with header
  ``Effective Sparsity,Activation Error,Baseline Error,q,k,v,o,gate,up,down``: rows of per-site sparsity
  fractions, increasing. TEAL/WAS pick, per layer, the row whose Effective Sparsity is nearest the block's
  target; each layer's file includes a row at exactly the exported block sparsity, so that pick is exact.
- ``block_sparsities.json``: the per-block vector to give those loaders.

Only the ``magnitude`` score has TEAL's meaning (TEAL thresholds |x| through the signed histogram);
weight-aware calibrations are exported as lookup.json only.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from allocator._adapters import INPUT_GROUPS, SITE_NAMES
from allocator._calibration import Calibration
from allocator._greedy import GreedyTable

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
    if calibration.score.kind != "magnitude":
        raise ValueError("TEAL's files describe magnitude scores only.")
    for b in range(calibration.n_blocks):
        files: dict[str, dict[str, torch.Tensor]] = {"self_attn": {}, "mlp": {}}
        for position, name in enumerate(SITE_NAMES):
            group_file, key = _GROUP_FILES[INPUT_GROUPS[name]]
            if key in files[group_file]:
                continue
            counts, centers = calibration.histograms[b][position].signed()
            files[group_file][key] = counts.to(torch.float32)
            files[group_file][f"{key}_centers"] = centers.to(torch.float32)
        for group_file, tensors in files.items():
            path = directory / "histograms" / f"layer-{b}" / group_file
            path.mkdir(parents=True, exist_ok=True)
            torch.save(tensors, path / "histograms.pt")
        rows = _layer_rows(b, site_sparsities[b], site_weights[b], greedy)
        path = directory / "lookup" / f"layer-{b}"
        path.mkdir(parents=True, exist_ok=True)
        with (path / "results.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_HEADER)
            writer.writerows(rows)
    (directory / "block_sparsities.json").write_text(json.dumps([float(s) for s in block_sparsities]) + "\n")


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
