"""The objective: perplexity of the sparse model on calibration tokens, plus its measured sparsity.

The objective is deterministic given its tokens (no dropout, no sampling), which the study tells the GP.
Logits are computed by the LM head in chunks of tokens, so a ``B x T x V`` logits tensor is never
materialised (for SmolLM2, 8 x 256 x 49,152 float32 logits would be 400 MB).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from allocator._adapters import ModelAdapter
from allocator._data import TokenSplit
from allocator._sparse_model import SparseModel
from allocator.errors import InputError

BatchCallback = Callable[[int, float], bool]
"""Called after each batch with (sequences done, running mean NLL); returning True stops the evaluation."""


@dataclass(frozen=True)
class Evaluation:
    """Perplexity of one allocation on one set of tokens."""

    perplexity: float
    mean_nll: float
    n_tokens: int  # predicted tokens
    measured_sparsity: float
    seconds: float
    complete: bool = True  # False when a batch callback stopped it early

    def as_dict(self) -> dict[str, float | int | bool]:
        return {
            "perplexity": self.perplexity,
            "mean_nll": self.mean_nll,
            "n_tokens": self.n_tokens,
            "measured_sparsity": self.measured_sparsity,
            "seconds": self.seconds,
            "complete": self.complete,
        }


@torch.no_grad()
def batch_nll(adapter: ModelAdapter, batch: torch.Tensor, *, head_chunk: int = 1024) -> tuple[float, int]:
    """Summed next-token NLL (float64) and the number of predicted tokens of a ``B x T`` batch."""
    hidden = adapter.body(input_ids=batch, use_cache=False).last_hidden_state  # (B, T, C)
    hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])  # (B*(T-1), C): position t predicts token t+1
    targets = batch[:, 1:].reshape(-1)  # (B*(T-1),)
    total = 0.0
    for start in range(0, targets.numel(), head_chunk):
        logits = adapter.head(hidden[start : start + head_chunk]).float()  # (chunk, V)
        total += float(F.cross_entropy(logits, targets[start : start + head_chunk], reduction="sum"))
    return total, int(targets.numel())


class PerplexityObjective:
    """Perplexity of allocations on a :class:`TokenSplit`'s calibration (search) or held-out (report) tokens."""

    def __init__(self, sparse_model: SparseModel, tokens: TokenSplit, *, batch_size: int = 8, head_chunk: int = 1024):
        if batch_size < 1:
            raise InputError(f"The value of `batch_size` should be a positive integer, got {batch_size}.")
        self.sparse_model = sparse_model
        self.tokens = tokens
        self.batch_size = batch_size
        self.head_chunk = head_chunk

    def __call__(
        self, allocation: Sequence[float] | torch.Tensor | float, *, on_batch: BatchCallback | None = None
    ) -> Evaluation:
        """Calibration perplexity of ``allocation`` (one sparsity per block, or a scalar for uniform)."""
        return self.evaluate(allocation, self.tokens.calibration, on_batch=on_batch)

    def heldout(
        self, allocation: Sequence[float] | torch.Tensor | float, *, on_batch: BatchCallback | None = None
    ) -> Evaluation:
        """Held-out perplexity of ``allocation``: the figure to report, never the one to search on."""
        if self.tokens.heldout.shape[0] == 0:
            raise InputError("This token split has no held-out sequences.")
        return self.evaluate(allocation, self.tokens.heldout, on_batch=on_batch)

    def evaluate(
        self,
        allocation: Sequence[float] | torch.Tensor | float,
        tokens: torch.Tensor,
        *,
        on_batch: BatchCallback | None = None,
    ) -> Evaluation:
        """Perplexity and measured sparsity of ``allocation`` on ``tokens`` (a ``n x seq_len`` tensor)."""
        with self.sparse_model.applied(allocation):
            evaluation = evaluate_tokens(
                self.sparse_model.adapter,
                tokens,
                batch_size=self.batch_size,
                head_chunk=self.head_chunk,
                on_batch=on_batch,
                measured_sparsity=self.sparse_model.measured_sparsity,
            )
        return evaluation


@torch.no_grad()
def evaluate_tokens(
    adapter: ModelAdapter,
    tokens: torch.Tensor,
    *,
    batch_size: int = 8,
    head_chunk: int = 1024,
    on_batch: BatchCallback | None = None,
    measured_sparsity: Callable[[], float] = lambda: 0.0,
) -> Evaluation:
    """Perplexity of the model as it is (with whatever sparsifiers are installed) on ``tokens``.

    ``measured_sparsity`` reads the installed sparsifiers' counts once the pass is done.
    """
    if batch_size < 1:
        raise InputError(f"The value of `batch_size` should be a positive integer, got {batch_size}.")
    model = adapter.model
    model.eval()
    device = next(model.parameters()).device
    started = time.perf_counter()
    nll, count, complete = 0.0, 0, True
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start : start + batch_size].to(device)
        batch_total, batch_count = batch_nll(adapter, batch, head_chunk=head_chunk)
        nll, count = nll + batch_total, count + batch_count
        if on_batch is not None and on_batch(start + batch.shape[0], nll / count):
            complete = start + batch.shape[0] >= tokens.shape[0]
            break
    mean_nll = nll / count
    return Evaluation(
        perplexity=math.exp(mean_nll),
        mean_nll=mean_nll,
        n_tokens=count,
        measured_sparsity=measured_sparsity(),
        seconds=time.perf_counter() - started,
        complete=complete,
    )
