"""Everything a worker needs for one study, rebuilt from the study's stored configuration.

The model, the tokens and the constraint follow from the configuration; the calibration (and the greedy
split tables) are computed by the first worker that needs them and stored in the study database, keyed by
model fingerprint + calibration-token hash + settings, so every later worker, run or export reuses them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from allocator import (
    Calibration,
    LoadedModel,
    PerplexityObjective,
    Score,
    SparseModel,
    TokenSplit,
    calibrate,
    load_model,
    load_text,
    tokenize_split,
)
from allocator._calibration import CALIBRATION_FORMAT
from allocator._constraint import ConstraintSpace
from allocator._greedy import GREEDY_FORMAT, GreedySplit, GreedyTable, build_greedy_table
from storage import Database
from studies._config import StudyConfig

Notify = Callable[[str], None]


@dataclass
class StudySession:
    """A study's model, tokens, calibration, sparse model, objective and constraint space."""

    config: StudyConfig
    database: Database
    loaded: LoadedModel
    tokens: TokenSplit
    calibration: Calibration
    calibration_key: str
    greedy: GreedyTable | None
    sparse_model: SparseModel
    objective: PerplexityObjective
    space: ConstraintSpace

    @property
    def score(self) -> Score:
        return self.calibration.score


def _digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def load_tokens(config: StudyConfig, tokenizer: Any) -> TokenSplit:
    """Calibration and held-out tokens: one source split by document, or two sources."""
    data = config.data
    corpus = load_text(data.calibration, text_field=data.text_field)
    if data.heldout is None:
        return tokenize_split(
            corpus,
            tokenizer,
            seq_len=data.seq_len,
            n_calibration=data.calibration_sequences,
            n_heldout=data.heldout_sequences,
            seed=data.seed,
        )
    calibration = tokenize_split(
        corpus, tokenizer, seq_len=data.seq_len, n_calibration=data.calibration_sequences, n_heldout=0, seed=data.seed
    )
    heldout = tokenize_split(
        load_text(data.heldout, text_field=data.text_field),
        tokenizer,
        seq_len=data.seq_len,
        n_calibration=data.heldout_sequences,
        n_heldout=0,
        seed=data.seed,
    )
    return TokenSplit(
        calibration=calibration.calibration,
        heldout=heldout.calibration,
        source=f"{data.calibration} | held-out: {data.heldout}",
        seed=data.seed,
        split_unit="source",
        provenance={"calibration": calibration.provenance, "heldout": heldout.provenance},
    )


def open_session(
    database: Database,
    config: StudyConfig,
    *,
    notify: Notify = lambda message: None,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
) -> StudySession:
    """Build a study's session; computes and stores the calibration (and greedy tables) if no worker has.

    ``progress(label, total)`` may return an ``advance(n)`` callback for long steps.
    """
    notify(f"Loading model {config.model}")
    loaded = load_model(config.model)
    database.register_model(loaded.identity(), loaded.adapter.site_weights().tolist())
    tokens = load_tokens(config, loaded.tokenizer)
    sparsity = config.sparsity
    score = Score(kind=sparsity.score, norm=sparsity.norm)
    batch_size = config.evaluation.batch_size

    calibration_settings = {
        "format": CALIBRATION_FORMAT,
        "model": loaded.fingerprint,
        "tokens": tokens.calibration_hash,
        "score": score.describe(),
    }
    calibration_key = _digest(calibration_settings)

    def compute_calibration() -> bytes:
        advance = progress("Calibrating", tokens.calibration.shape[0]) if progress else None
        return calibrate(
            loaded.adapter,
            tokens.calibration,
            score=score,
            model_fingerprint=loaded.fingerprint,
            batch_size=batch_size,
            data=tokens.describe(),
            progress=advance,
        ).to_bytes()

    blob, computed = database.get_or_compute_artifact(
        calibration_key,
        kind="histograms",
        model_fingerprint=loaded.fingerprint,
        settings=calibration_settings,
        compute=compute_calibration,
        on_wait=notify,
    )
    calibration = Calibration.from_bytes(blob)
    notify(("Calibrated" if computed else "Reused the stored calibration") + f" ({calibration_key[:12]})")

    greedy = None
    if sparsity.split == "greedy":
        upper = sparsity.upper if isinstance(sparsity.upper, float) else max(sparsity.upper)
        greedy_settings = {
            "format": GREEDY_FORMAT,
            "calibration": calibration_key,
            "step": sparsity.greedy.step,
            "sequences": sparsity.greedy.sequences,
            "max_sparsity": upper,
            "sparsify_fraction": sparsity.sparsify_fraction,
        }

        def compute_greedy() -> bytes:
            advance = progress("Greedy split tables", loaded.adapter.n_blocks) if progress else None
            return build_greedy_table(
                loaded.adapter,
                calibration,
                tokens.calibration[: sparsity.greedy.sequences],
                step=sparsity.greedy.step,
                max_sparsity=upper,
                sparsify_fraction=sparsity.sparsify_fraction,
                progress=advance,
            ).to_bytes()

        greedy_key = _digest(greedy_settings)
        blob, computed = database.get_or_compute_artifact(
            greedy_key,
            kind="greedy",
            model_fingerprint=loaded.fingerprint,
            settings=greedy_settings,
            compute=compute_greedy,
            on_wait=notify,
        )
        greedy = GreedyTable.from_bytes(blob)
        notify(("Built" if computed else "Reused the stored") + f" greedy split tables ({greedy_key[:12]})")

    sparse_model = SparseModel(
        loaded.adapter,
        calibration,
        split=GreedySplit(greedy) if greedy is not None else None,
        sparsify_fraction=sparsity.sparsify_fraction,
    )
    objective = PerplexityObjective(sparse_model, tokens, batch_size=batch_size)
    space = ConstraintSpace(
        weights=loaded.adapter.block_weights().tolist(),
        target=sparsity.target,
        lower=sparsity.lower,
        upper=sparsity.upper,
    )
    return StudySession(
        config=config,
        database=database,
        loaded=loaded,
        tokens=tokens,
        calibration=calibration,
        calibration_key=calibration_key,
        greedy=greedy,
        sparse_model=sparse_model,
        objective=objective,
        space=space,
    )
