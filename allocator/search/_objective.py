"""The objective: how far the sparse model's next-token distributions are from the dense model's.

Default: the mean per-token forward KL(P_dense ‖ Q_sparse) against a stored dense reference
(:mod:`allocator.search._reference`; EvoPress's fitness); it ranks allocations by their held-out quality better
than perplexity on the same tokens does. Every evaluation measures both KL and perplexity (the NLL of the
true next token), per sequence, so a study can search on either, record both, and estimate its noise from
the spread over sequences.

Every evaluation also measures the sparsity the model really ran at. Searches evaluate with the
``quantile`` rule (:mod:`allocator.sparsity._sparsifier`): each forward pass zeroes exactly each site's share of its
inputs, so every trial is compared at its target's measured sparsity. Reports on held-out text use the
exported thresholds (the ``threshold`` rule), as inference will.

Logits are computed by the LM head in chunks of positions, so a ``B x T x V`` logits tensor is never
materialised (for SmolLM2, 8 x 256 x 49,152 float32 logits would be 400 MB).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from allocator.errors import InputError
from allocator.model import ModelAdapter
from allocator.search._reference import DenseReference, kl_to_reference
from allocator.sparsity import SparseModel

BatchCallback = Callable[[int, float], bool]
"""Called after each batch with (sequences done, running mean NLL); returning True stops the evaluation."""

#: What a study can minimise.
OBJECTIVES: tuple[str, ...] = ("kl", "perplexity")


@dataclass(frozen=True)
class Evaluation:
    """One allocation on one set of sequences: KL and perplexity, per sequence and overall, and sparsity."""

    perplexity: float
    mean_nll: float
    n_tokens: int  # predicted tokens
    measured_sparsity: float
    seconds: float
    sequence_nll: tuple[float, ...] = ()  # mean NLL of each sequence
    sequence_kl: tuple[float, ...] = ()  # mean KL of each sequence (empty without a reference)
    site_sparsity: tuple[tuple[float, ...], ...] = field(default=(), repr=False)  # n_blocks x 7, measured
    complete: bool = True  # False when a batch callback stopped it early

    @property
    def kl(self) -> float | None:
        """Mean per-token KL to the dense model (sequences have equal lengths), or None without a reference."""
        return sum(self.sequence_kl) / len(self.sequence_kl) if self.sequence_kl else None

    def value(self, objective: str) -> float:
        """The figure a study minimises: ``kl`` or ``perplexity``."""
        if objective == "perplexity":
            return self.perplexity
        if self.kl is None:
            raise InputError("This evaluation has no dense reference, so no KL.")
        return self.kl

    def as_dict(self) -> dict[str, float | int | bool | None]:
        """The overall figures as plain values, for stored trial attributes and JSON reports (per-sequence values left
        out)."""
        return {
            "kl": self.kl,
            "perplexity": self.perplexity,
            "mean_nll": self.mean_nll,
            "n_tokens": self.n_tokens,
            "measured_sparsity": self.measured_sparsity,
            "seconds": self.seconds,
            "complete": self.complete,
        }


def _per_position(
    adapter: ModelAdapter,
    batch: torch.Tensor,
    reference: tuple[torch.Tensor, ...] | None,
    head_chunk: int,
    whole_forward: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-position NLL and KL (``B x (T−1)`` each; KL None without a reference) of a ``B x T`` batch.

    The body's hidden states go through the head in chunks; with ``whole_forward`` the model's own forward
    gives every logit at once instead (wrappers such as NNCF's run their hooks only there)."""
    if whole_forward:
        outputs = adapter.model(input_ids=batch, use_cache=False).logits  # (B, T, V)
        project: torch.nn.Module = torch.nn.Identity()
    else:
        outputs = adapter.body(input_ids=batch, use_cache=False).last_hidden_state  # (B, T, C)
        project = adapter.head
    shape = (batch.shape[0], batch.shape[1] - 1)
    outputs = outputs[:, :-1].reshape(-1, outputs.shape[-1])  # (B*(T-1), C or V): position t predicts t+1
    targets = batch[:, 1:].reshape(-1)  # (B*(T-1),)
    rows = None if reference is None else [r.reshape(-1, *r.shape[2:]).to(batch.device) for r in reference]
    nll, kl = [], []
    for start in range(0, targets.numel(), head_chunk):
        logits = project(outputs[start : start + head_chunk]).float()  # (chunk, V)
        nll.append(F.cross_entropy(logits, targets[start : start + head_chunk], reduction="none"))
        if rows is not None:
            kl.append(kl_to_reference(logits, *(r[start : start + head_chunk] for r in rows)))
    return torch.cat(nll).view(shape).double(), (torch.cat(kl).view(shape).double() if rows is not None else None)


@torch.no_grad()
def batch_nll(adapter: ModelAdapter, batch: torch.Tensor, *, head_chunk: int = 1024) -> tuple[float, int]:
    """Summed next-token NLL (float64) and the number of predicted tokens of a ``B x T`` batch."""
    nll, _ = _per_position(adapter, batch, None, head_chunk)
    return float(nll.sum()), int(nll.numel())


@torch.no_grad()
def evaluate_tokens(
    adapter: ModelAdapter,
    tokens: torch.Tensor,
    *,
    reference: DenseReference | None = None,
    batch_size: int = 8,
    head_chunk: int = 1024,
    on_batch: BatchCallback | None = None,
    measured_sparsity: Callable[[], float] = lambda: 0.0,
    measured_site_sparsity: Callable[[], torch.Tensor] | None = None,
    whole_forward: bool = False,
) -> Evaluation:
    """Perplexity (and KL to ``reference``, whose sequences are ``tokens``') of the model as it is, with
    whatever sparsifiers are installed; ``measured_sparsity`` reads their counts once the pass is done.
    ``whole_forward``: the model's own forward, not its body and a chunked head (for NNCF's hooks). A CUDA
    out-of-memory error halves the batch and retries it (said once, as a warning)."""
    if batch_size < 1:
        raise InputError(f"The value of `batch_size` should be a positive integer, got {batch_size}.")
    if reference is not None and reference.n_sequences != tokens.shape[0]:
        raise InputError(f"The reference has {reference.n_sequences} sequences for {tokens.shape[0]} token rows.")
    model = adapter.model
    model.eval()
    device = next(model.parameters()).device
    started = time.perf_counter()
    sequence_nll: list[float] = []
    sequence_kl: list[float] = []
    complete, start = True, 0
    while start < tokens.shape[0]:
        batch = tokens[start : start + batch_size].to(device)
        rows = None if reference is None else reference.rows(slice(start, start + batch.shape[0]))
        try:
            nll, kl = _per_position(adapter, batch, rows, head_chunk, whole_forward)
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size //= 2
            warnings.warn(f"Out of GPU memory: evaluating {batch_size} sequences at a time.", stacklevel=2)
            torch.cuda.empty_cache()
            continue
        sequence_nll += nll.mean(dim=1).tolist()
        if kl is not None:
            sequence_kl += kl.mean(dim=1).tolist()
        start += batch.shape[0]
        if on_batch is not None and on_batch(start, sum(sequence_nll) / len(sequence_nll)):
            complete = start >= tokens.shape[0]
            break
    mean_nll = sum(sequence_nll) / len(sequence_nll)
    sites = () if measured_site_sparsity is None else tuple(map(tuple, measured_site_sparsity().tolist()))
    return Evaluation(
        perplexity=math.exp(mean_nll),
        mean_nll=mean_nll,
        n_tokens=len(sequence_nll) * (tokens.shape[1] - 1),
        measured_sparsity=measured_sparsity(),
        seconds=time.perf_counter() - started,
        sequence_nll=tuple(sequence_nll),
        sequence_kl=tuple(sequence_kl),
        site_sparsity=sites,
        complete=complete,
    )


class Objective:
    """Evaluations of allocations on token sets: KL to the dense model and perplexity, with measured sparsity.

    Args:
        sparse_model: The model with its sparsifiers.
        batch_size: Sequences per forward pass.
        head_chunk: Positions per LM-head chunk.
    """

    def __init__(self, sparse_model: SparseModel, *, batch_size: int = 8, head_chunk: int = 1024) -> None:
        if batch_size < 1:
            raise InputError(f"The value of `batch_size` should be a positive integer, got {batch_size}.")
        self.sparse_model = sparse_model
        self.batch_size = batch_size
        self.head_chunk = head_chunk

    def evaluate(
        self,
        allocation: Sequence[float] | torch.Tensor | float,
        tokens: torch.Tensor,
        *,
        reference: DenseReference | None = None,
        rule: str = "quantile",
        thresholds: torch.Tensor | None = None,
        on_batch: BatchCallback | None = None,
    ) -> Evaluation:
        """``allocation`` (one sparsity per block, or a scalar for uniform) on ``tokens`` (``n x seq_len``).

        ``rule`` is the sparsifier rule (``quantile``: exact measured sparsity, the search's; ``threshold``:
        fixed ``thresholds``, or the dense calibration's when None; ``topk``: per-token top-k).
        """
        sparse_model = self.sparse_model
        with sparse_model.applied(allocation, rule=rule, thresholds=thresholds):
            return evaluate_tokens(
                sparse_model.adapter,
                tokens,
                reference=reference,
                batch_size=self.batch_size,
                head_chunk=self.head_chunk,
                on_batch=on_batch,
                measured_sparsity=sparse_model.measured_sparsity,
                measured_site_sparsity=sparse_model.sparsifiers.measured_site_sparsity,
            )
