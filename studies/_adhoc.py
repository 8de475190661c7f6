"""One-off measurements with nothing stored: what ``sparsealloc calibrate``, ``evaluate`` and ``apply`` do.

They are functions a Python user calls as well. ``calibrate`` and ``evaluate`` take a study's own path
(:func:`studies.open_session`: tokens, calibration, sparse model, objective) on a configuration built for the
occasion (:class:`AdhocSettings`), whose artifacts stay in memory; ``apply`` installs an exported lookup with
:func:`allocator.load_lookup` and measures the model as an inference loader would run it.

Each refuses what it can before any weights load: a sequence length past the model's positions, a bad lookup
or sparsity. ``seq_len_option`` is the name that refusal gives the sequence length (the command line passes
``--seq-len``, and checks its options before it shows any progress); ``progress`` is the
``bar(label, total) -> advance(n)`` factory of :func:`studies.open_session`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from allocator import (
    Calibration,
    Evaluation,
    InputError,
    OutputError,
    atomic_write_bytes,
    calibrate_allocation,
    compute_reference,
    evaluate_tokens,
    frontier_point,
    load_lookup,
    load_model,
    load_text,
    make_token_sets,
    model_shape,
)
from allocator.paths import check_writable_place, path_problem
from studies._config import DataConfig, ModelConfig, StudyConfig, build_config
from studies._session import MemoryArtifacts, Progress, StudySession, open_session


@dataclass(frozen=True)
class AdhocSettings:
    """The model, data and sparsity settings of a one-off session (a study's, without the search).

    A field left None takes the study schema's default (:func:`studies.build_config`).
    """

    model: str | None = None
    data: str | None = None
    seq_len: int | None = None
    calibration_sequences: int | None = None
    heldout_sequences: int | None = None
    seed: int | None = None
    score: str | None = None
    norm: int | None = None
    sparsify_fraction: float | None = None
    batch_size: int | None = None
    device: str | None = None
    dtype: str | None = None

    def config(self, *, source: str = "settings", seq_len_option: str = "seq_len") -> StudyConfig:
        """The study configuration of the session: these settings, and the smallest search (it is not run).

        A sequence length past the model's positions is refused first (reading the model's configuration, no
        weights), then a bad setting, in one sentence naming its key after ``source``.
        """
        model = self.model if self.model is not None else ModelConfig.model_fields["source"].default
        seq_len = self.seq_len if self.seq_len is not None else DataConfig.model_fields["seq_len"].default
        model_shape(model).check_seq_len(seq_len, name=seq_len_option)
        return build_config(
            "adhoc",
            target=0.5,  # unused: one-off commands evaluate the allocation they are given
            model={"source": self.model, "device": self.device, "dtype": self.dtype},
            data={
                "source": self.data,
                "seq_len": self.seq_len,
                "calibration_sequences": self.calibration_sequences,
                "search_sequences": 1,  # these commands do not search: the smallest pool and validation set
                "validation_sequences": 1,
                "heldout_sequences": self.heldout_sequences,
                "seed": self.seed,
            },
            sparsity={"score": self.score, "norm": self.norm, "sparsify_fraction": self.sparsify_fraction},
            sampler="uniform",
            search={"screen_sequences": 1, "promote_sequences": []},
            evaluation={"batch_size": self.batch_size},
            source=source,
        )


def open_adhoc_session(settings: AdhocSettings | StudyConfig, *, progress: Progress | None = None) -> StudySession:
    """A study's session with nothing stored: the model, the calibration and held-out tokens, the calibration
    and the objective, on ``settings`` (checked first: :meth:`AdhocSettings.config`) or on a configuration
    already built from them."""
    config = settings if isinstance(settings, StudyConfig) else settings.config()
    return open_session(MemoryArtifacts(), config, progress=progress)


def check_uniform_sparsity(sparsity: float, *, option: str = "sparsity") -> None:
    """Refuse a uniform sparsity outside [0, 1) (``option`` names it in the sentence)."""
    if not 0.0 <= sparsity < 1.0:
        raise InputError(f"The value of `{option}` should be in [0, 1), got {sparsity}.")


@dataclass(frozen=True)
class UniformEvaluation:
    """Held-out figures of one uniform sparsity, with the dense calibration's thresholds and with thresholds
    calibrated under the sparse model."""

    sparsity: float
    nominal: Evaluation  # dense thresholds: the calibration of the dense model
    sparse: Evaluation  # thresholds calibrated under the sparse model, as an export uses


def evaluate_uniform(session: StudySession, sparsity: float, *, progress: Progress | None = None) -> UniformEvaluation:
    """Every site of ``session``'s model at ``sparsity``, on the held-out tokens: KL, perplexity and measured
    sparsity with the dense thresholds (nominal) and with thresholds calibrated under the sparse model."""
    check_uniform_sparsity(sparsity)
    total = session.tokens.heldout.shape[0]
    nominal = session.evaluate(
        sparsity, "heldout", rule="threshold", on_batch=_on_batch(progress, "Dense thresholds", total)
    )
    calibration = calibrate_allocation(
        session.sparse_model, sparsity, session.tokens.calibration, batch_size=session.config.evaluation.batch_size
    )
    thresholds = calibration.thresholds(session.sparse_model.site_sparsities(sparsity))
    sparse = session.evaluate(
        sparsity,
        "heldout",
        rule="threshold",
        thresholds=thresholds,
        on_batch=_on_batch(progress, "Sparse-model thresholds", total),
    )
    return UniformEvaluation(sparsity, nominal, sparse)


def _calibration_subject(path: Path) -> str:
    return f"Cannot write the calibration to {str(path)!r}"


def check_calibration_target(path: Path) -> None:
    """Refuse, before calibrating, a place the calibration file cannot be written to."""
    check_writable_place(path, _calibration_subject(path))


def save_calibration(calibration: Calibration, path: Path) -> None:
    """Write ``calibration`` to the file ``path`` atomically (a reader sees the old file or the new one)."""
    try:
        atomic_write_bytes(path, calibration.to_bytes())
    except OSError as error:
        raise OutputError(f"{_calibration_subject(path)}: {path_problem(error)}.") from error


@dataclass(frozen=True)
class AppliedLookup:
    """What :func:`apply_lookup` measured: the lookup document it installed and the model's figures with it."""

    lookup: dict[str, Any]  # the single-allocation lookup installed (for a frontier export: the chosen point)
    evaluation: Evaluation  # perplexity and KL to the dense model, and the measured sparsity, on ``data``


def apply_lookup(
    lookup: str | Path,
    *,
    model: str,
    data: str = "pydoc",
    seq_len: int = 256,
    sequences: int = 16,
    seed: int = 0,
    batch_size: int = 8,
    sparsity: float | None = None,
    device: str | None = None,
    dtype: str | None = None,
    progress: Progress | None = None,
    seq_len_option: str = "seq_len",
) -> AppliedLookup:
    """Install the exported lookup at ``lookup`` on ``model`` and measure it on ``sequences`` held-out
    sequences of ``data``: perplexity, KL to the dense model and measured sparsity.

    A frontier export is loaded at ``sparsity``: a target's own point, or the interpolation of the two
    neighbouring points. A bad lookup or sparsity, and a sequence length past the model's positions, are
    refused before the model loads.
    """
    chosen = frontier_point(lookup, sparsity)
    model_shape(model).check_seq_len(seq_len, name=seq_len_option)
    loaded = load_model(model, device=device or "auto", dtype=dtype or "auto")
    counts = {"heldout": sequences}
    tokens = make_token_sets(load_text(data), loaded.tokenizer, seq_len=seq_len, counts=counts, seed=seed).heldout
    reference = compute_reference(loaded.adapter, tokens, batch_size=batch_size)  # the dense model, before
    with load_lookup(loaded.model, lookup, sparsity) as sparsifiers:
        evaluation = evaluate_tokens(
            loaded.adapter,
            tokens,
            reference=reference,
            batch_size=batch_size,
            on_batch=_on_batch(progress, "Evaluating", sequences),
            measured_sparsity=sparsifiers.measured_model_sparsity,
        )
    return AppliedLookup(lookup=chosen, evaluation=evaluation)


def _on_batch(progress: Progress | None, label: str, total: int) -> Any:
    """An evaluation's batch callback advancing a ``progress`` bar of ``total`` sequences (None: none)."""
    if progress is None:
        return None
    advance = progress(label, total)
    done = 0

    def on_batch(sequences: int, _nll: float) -> bool:
        nonlocal done
        advance(sequences - done)
        done = sequences
        return False  # never stop early

    return on_batch
