"""The dense model's next-token distributions on a token set, stored once, for the KL objective.

The objective is the mean per-token forward KL divergence KL(P_dense ‖ Q_sparse) over the vocabulary
(EvoPress's fitness). The dense distributions are computed once per (model fingerprint, tokens) and stored
like the calibration, so every worker and every trial reuses them. Full distributions do not fit: 64k
tokens x 49,152 vocabulary entries is 6 GB even in half precision. So each position keeps its ``k`` most
probable tokens (half-precision log-probabilities and int32 indices) and the log of the remaining tail mass
(float32): ``k = 64`` costs 388 bytes a token, 25 MB for 64k tokens.

The KL is then computed over the ``k + 1`` outcomes "one of the top-k tokens, or the tail":

    KL_k = Σ_{i ∈ top} p_i (log p_i − log q_i) + p_tail (log p_tail − log q_tail),  q_tail = 1 − Σ_{i ∈ top} q_i

a lower bound of the full KL (merging outcomes never increases a divergence) that equals it when the tail
carries no mass; ``bench/kl_reference.py`` measures how closely it ranks allocations as the full KL does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from allocator.errors import InputError
from allocator.model import ModelAdapter

REFERENCE_FORMAT = "sparsealloc.reference/v1"
DEFAULT_TOP_K = 64
_MIN_MASS = 1e-12


@dataclass(frozen=True)
class DenseReference:
    """Top-``k`` log-probabilities of the dense model at every predicting position of ``n`` sequences.

    Attributes:
        top_logprobs: A ``n x (T−1) x k`` float16 tensor, most probable first.
        top_indices: A ``n x (T−1) x k`` int32 tensor of their token ids.
        tail_logmass: A ``n x (T−1)`` float32 tensor, ``log(1 − Σ top probabilities)``.
        model_fingerprint: The model they were computed with.
        tokens_hash: The tokens they were computed on.
        seconds: The dense pass's time.
    """

    top_logprobs: torch.Tensor
    top_indices: torch.Tensor
    tail_logmass: torch.Tensor
    model_fingerprint: str
    tokens_hash: str
    seconds: float = 0.0

    @property
    def k(self) -> int:
        """The number of log-probabilities kept per position; the rest of the distribution is the tail mass."""
        return int(self.top_logprobs.shape[-1])

    @property
    def n_sequences(self) -> int:
        """The number of sequences the reference covers."""
        return int(self.top_logprobs.shape[0])

    def rows(self, index: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(top_logprobs, top_indices, tail_logmass)`` of the sequences ``index`` selects."""
        return self.top_logprobs[index], self.top_indices[index], self.tail_logmass[index]

    def subset(self, index: torch.Tensor) -> DenseReference:
        """The reference of the sequences ``index`` (a 1-D tensor of sequence numbers) selects, in its order."""
        logprobs, indices, tail = self.rows(index)
        return DenseReference(
            top_logprobs=logprobs,
            top_indices=indices,
            tail_logmass=tail,
            model_fingerprint=self.model_fingerprint,
            tokens_hash=f"{self.tokens_hash}[{','.join(str(int(i)) for i in index)}]",
            seconds=0.0,
        )

    def to_bytes(self) -> bytes:
        """One safetensors blob with its format and provenance, so the dense pass is stored once and reused."""
        from safetensors.torch import save

        tensors = {
            "top_logprobs": self.top_logprobs.contiguous(),
            "top_indices": self.top_indices.contiguous(),
            "tail_logmass": self.tail_logmass.contiguous(),
        }
        metadata = {
            "format": REFERENCE_FORMAT,
            "model_fingerprint": self.model_fingerprint,
            "tokens_hash": self.tokens_hash,
            "seconds": repr(self.seconds),
        }
        return save(tensors, metadata=metadata)

    @classmethod
    def from_bytes(cls, blob: bytes) -> DenseReference:
        """The reference stored by :meth:`to_bytes`; a blob of another format is refused."""
        from safetensors.torch import load

        header_length = int.from_bytes(blob[:8], "little")
        metadata = json.loads(blob[8 : 8 + header_length]).get("__metadata__", {})
        if metadata.get("format") != REFERENCE_FORMAT:
            raise InputError(f"Unknown dense-reference format {metadata.get('format')!r}; expected {REFERENCE_FORMAT}.")
        tensors = load(blob)
        return cls(
            top_logprobs=tensors["top_logprobs"],
            top_indices=tensors["top_indices"],
            tail_logmass=tensors["tail_logmass"],
            model_fingerprint=metadata["model_fingerprint"],
            tokens_hash=metadata["tokens_hash"],
            seconds=float(metadata["seconds"]),
        )


def _log_tail(top_logprobs: torch.Tensor) -> torch.Tensor:
    """``log(1 − Σ exp(top))`` in float32, clamped away from log 0."""
    tail = (1.0 - top_logprobs.float().exp().sum(dim=-1)).clamp(min=_MIN_MASS)
    return tail.log()


@torch.no_grad()
def compute_reference(
    adapter: ModelAdapter,
    tokens: torch.Tensor,
    *,
    k: int = DEFAULT_TOP_K,
    model_fingerprint: str = "",
    tokens_hash: str = "",
    batch_size: int = 8,
    head_chunk: int = 1024,
    progress: Callable[[int], None] | None = None,
) -> DenseReference:
    """The dense model's top-``k`` next-token log-probabilities on ``tokens`` (``n x seq_len``)."""
    if not k >= 1:
        raise InputError(f"The value of `k` should be a positive integer, got {k}.")
    adapter.model.eval()
    device = next(adapter.model.parameters()).device
    started = time.perf_counter()
    parts: list[tuple[torch.Tensor, torch.Tensor]] = []
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start : start + batch_size].to(device)
        hidden = adapter.body(input_ids=batch, use_cache=False).last_hidden_state[:, :-1]  # (B, T-1, C)
        flat = hidden.reshape(-1, hidden.shape[-1])
        chunks = []
        for offset in range(0, flat.shape[0], head_chunk):
            logits = adapter.head(flat[offset : offset + head_chunk]).float()  # (N, V)
            top = logits.topk(min(k, logits.shape[-1]), dim=-1)
            # log-probabilities of the top k alone: one logsumexp, not a log-softmax over the vocabulary
            chunks.append((top.values - torch.logsumexp(logits, dim=-1, keepdim=True), top.indices))
        values = torch.cat([c[0] for c in chunks]).reshape(*hidden.shape[:2], -1)
        indices = torch.cat([c[1] for c in chunks]).reshape(*hidden.shape[:2], -1)
        parts.append((values.cpu(), indices.cpu()))
        if progress is not None:
            progress(batch.shape[0])
    values = torch.cat([p[0] for p in parts])
    return DenseReference(
        top_logprobs=values.to(torch.float16),
        top_indices=torch.cat([p[1] for p in parts]).to(torch.int32),
        tail_logmass=_log_tail(values),
        model_fingerprint=model_fingerprint,
        tokens_hash=tokens_hash,
        seconds=time.perf_counter() - started,
    )


def kl_to_reference(
    logits: torch.Tensor, top_logprobs: torch.Tensor, top_indices: torch.Tensor, tail_logmass: torch.Tensor
) -> torch.Tensor:
    """Per-position KL_k(P_dense ‖ Q) of ``N x V`` logits against ``N x k`` reference rows (``N`` values)."""
    logq = F.log_softmax(logits.float(), dim=-1)  # (N, V)
    logp = top_logprobs.float()  # (N, k)
    logq_top = logq.gather(-1, top_indices.long())  # (N, k)
    q_tail = (1.0 - logq_top.exp().sum(dim=-1)).clamp(min=_MIN_MASS)  # (N,)
    p_tail = tail_logmass.float().exp()
    top = (logp.exp() * (logp - logq_top)).sum(dim=-1)
    return top + p_tail * (tail_logmass.float() - q_tail.log())


def full_kl(logits: torch.Tensor, dense_logits: torch.Tensor) -> torch.Tensor:
    """Per-position KL(P_dense ‖ Q) over the whole vocabulary (``N x V`` each; for benchmarks and tests)."""
    logp = F.log_softmax(dense_logits.float(), dim=-1)
    logq = F.log_softmax(logits.float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(dim=-1)
