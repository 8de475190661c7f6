"""Scores: what a sparsifier compares with a site's threshold.

``magnitude`` scores an input element by |x_j| (TEAL, NNCF). ``weight_aware`` scores it by |x_j|·‖W[:, j]‖
with the L1 (WAS) or L2 (WINA) norm of the weight column it multiplies: an input that feeds small weights
matters less. The column norms are static, so a weight-aware threshold t is the per-channel magnitude
threshold t / ‖W[:, j]‖, and both scores cost the same at inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from allocator.errors import InputError

if TYPE_CHECKING:
    import torch
    from torch import nn

SCORE_KINDS: tuple[str, ...] = ("magnitude", "weight_aware")


@dataclass(frozen=True)
class Score:
    """A score kind, with the column norm order for ``weight_aware`` (1 = WAS, 2 = WINA)."""

    kind: str = "magnitude"
    norm: int = 1

    def __post_init__(self) -> None:
        if self.kind not in SCORE_KINDS:
            raise InputError(f"The value of `score` should be one of {', '.join(SCORE_KINDS)}, got {self.kind!r}.")
        if self.norm not in (1, 2):
            raise InputError(f"The value of `norm` should be 1 or 2, got {self.norm!r}.")

    @property
    def shares_group_distribution(self) -> bool:
        """True when sites reading one tensor (q/k/v, gate/up) have one score distribution."""
        return self.kind == "magnitude"

    def channel_norms(self, module: nn.Linear) -> torch.Tensor | None:
        """``in_features`` float32 column norms ‖W[:, j]‖ for ``weight_aware``; None for ``magnitude``."""
        if self.kind == "magnitude":
            return None
        return module.weight.detach().to(dtype=module.weight.dtype).float().norm(p=self.norm, dim=0)

    def describe(self) -> dict[str, object]:
        """The score as plain values, for stored calibrations and lookup files (``norm`` None for ``magnitude``)."""
        return {"kind": self.kind, "norm": self.norm if self.kind == "weight_aware" else None}

    @classmethod
    def from_description(cls, description: dict[str, object]) -> Score:
        """The score :meth:`describe` wrote, validated again."""
        return cls(kind=str(description["kind"]), norm=int(description.get("norm") or 1))
