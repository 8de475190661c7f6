"""Everything a worker needs for one study, rebuilt step by step from the study's stored configuration.

The steps, in order (each a function of its own, shared by every command):

1. :func:`load_tokens`: the model's tokenizer cuts the configured text into the four data roles
   (calibration, search, validation, held-out; plus an out-of-domain held-out set if configured).
2. :func:`build_spaces`: the constraint space of each target from the block weights and the configured bounds,
   checked *before* anything expensive, so bad per-block bounds fail at once.
3. :func:`calibration_for` and :func:`greedy_table_for`: the score histograms (and greedy split tables),
   fetched from the artifact store or computed once and stored there (:func:`stored_artifact`), keyed by
   model fingerprint + calibration-token hash + settings, so every later worker, run or export reuses them.
4. The sparse model and the objective; the dense reference of each token set the objective's KL needs is
   fetched or computed on first use (:meth:`StudySession.reference`), stored like the calibration.

The artifact store is the study database for studies, or a :class:`MemoryArtifacts` for the one-off
``calibrate`` and ``evaluate`` commands, which thus take the very same path.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from allocator import (
    CALIBRATION_FORMAT,
    GREEDY_FORMAT,
    REFERENCE_FORMAT,
    BlendSplit,
    Calibration,
    ConstraintSpace,
    DenseReference,
    Evaluation,
    GreedySplit,
    GreedyTable,
    InputError,
    LoadedModel,
    Objective,
    Score,
    SparseModel,
    SplitRule,
    TokenSets,
    build_greedy_table,
    calibrate,
    check_seq_len,
    compute_reference,
    load_model,
    load_text,
    make_token_sets,
    teal_step,
)
from allocator.search import trial_attributes as attrs
from storage import Database
from studies._config import GreedyConfig, SparsityConfig, StudyConfig

Notify = Callable[[str], None]
Progress = Callable[[str, int], Callable[[int], None]]
"""``progress(label, total)`` returns ``advance(n)`` for a long step."""


class ArtifactStore(Protocol):
    """Where computed artifacts live: compute each key once, hand the stored bytes to everyone after."""

    def get_or_compute_artifact(
        self,
        key: str,
        *,
        kind: str,
        model_fingerprint: str,
        settings: dict[str, Any],
        compute: Callable[[], bytes],
        on_wait: Callable[[str], None] | None = None,
    ) -> tuple[bytes, bool]:
        """The artifact stored under ``key``, calling ``compute`` only if nobody has stored it; returns ``(blob,
        computed_here)``."""
        ...


@dataclass
class MemoryArtifacts:
    """An artifact store in this process's memory (for commands that keep nothing)."""

    blobs: dict[str, bytes] = field(default_factory=dict)

    def get_or_compute_artifact(
        self,
        key: str,
        *,
        kind: str,
        model_fingerprint: str,
        settings: dict[str, Any],
        compute: Callable[[], bytes],
        on_wait: Callable[[str], None] | None = None,
    ) -> tuple[bytes, bool]:
        """The artifact kept under ``key``, computed on first request; returns ``(blob, computed_here)`` as a study
        database does."""
        computed = key not in self.blobs
        if computed:
            self.blobs[key] = compute()
        return self.blobs[key], computed


@dataclass
class StudySession:
    """A study's model, tokens, constraint space, calibration, sparse model and objective."""

    config: StudyConfig
    artifacts: ArtifactStore
    loaded: LoadedModel
    tokens: TokenSets
    spaces: dict[float, ConstraintSpace]
    calibration: Calibration
    calibration_key: str
    greedy: GreedyTable | None
    sparse_model: SparseModel
    objective: Objective
    notify: Notify = lambda message: None
    progress: Progress | None = None  # long steps' progress (the display's ``bar(label, total)``), if shown
    _references: dict[str, DenseReference] = field(default_factory=dict, repr=False)

    @property
    def space(self) -> ConstraintSpace:
        """The constraint space of a single-target study (of a frontier study: its lowest target's)."""
        return self.spaces[self.config.sparsity.targets[0]]

    def space_for(self, target: float | None) -> ConstraintSpace:
        """The constraint space of ``target`` (None: the study's only, or lowest, target)."""
        if target is None:
            return self.space
        known = attrs.known_target(self.spaces, target)
        if known is not None:
            return self.spaces[known]
        raise InputError(
            f"Study {self.config.name!r} has no target {target}; its targets are "
            f"{', '.join(f'{t:g}' for t in self.spaces)}."
        )

    @property
    def score(self) -> Score:
        """The score the study's calibration was made with, which every threshold and lookup of the study uses."""
        return self.calibration.score

    @property
    def database(self) -> Database:
        """The study database (a session opened on a :class:`MemoryArtifacts` has none)."""
        if not isinstance(self.artifacts, Database):
            raise TypeError("This session keeps its artifacts in memory and has no study database.")
        return self.artifacts

    def reference(self, role: str, progress: Progress | None = None) -> DenseReference:
        """The dense model's top-k distributions on a role's tokens: stored once, shared by every worker;
        ``progress`` (default: the session's) follows the dense pass when this call computes it."""
        if role not in self._references:
            self._references[role] = reference_for(
                self.artifacts,
                self.config,
                self.loaded,
                self.tokens,
                role,
                notify=self.notify,
                progress=progress or self.progress,
            )
        return self._references[role]

    def rungs_order(self) -> torch.Tensor:
        """Every search-pool sequence number in the seeded order the rungs take them in."""
        return rung_indices(self.tokens.search.shape[0], [self.tokens.search.shape[0]], seed=self.config.data.seed)[0]

    def rungs(self) -> list[torch.Tensor]:
        """The search pool's sequence numbers of each rung: the screen, then each promotion's fresh ones."""
        return rung_indices(
            self.tokens.search.shape[0],
            [self.config.search.screen_sequences, *self.config.search.promote_sequences],
            seed=self.config.data.seed,
        )

    def sparse_model_for(self, share: float | None) -> SparseModel:
        """The sparse model under the blend of TEAL's greedy split at ``share`` (a trial of a study that searches the
        split), or under the study's own split (None)."""
        if share is None:
            return self.sparse_model
        if self.greedy is None:
            raise InputError(f"Study {self.config.name!r} has no greedy split tables, so no share of them.")
        return self.sparse_model.with_split(BlendSplit(GreedySplit(self.greedy), share))

    def evaluate(
        self,
        allocation: Any,
        role: str,
        *,
        index: torch.Tensor | None = None,
        rule: str | None = None,
        thresholds: torch.Tensor | None = None,
        on_batch: Any = None,
        share: float | None = None,
    ) -> Evaluation:
        """``allocation`` on a role's tokens (the sequences ``index`` selects), with KL to the dense model.

        ``rule`` defaults to the study's search rule; ``thresholds`` (with ``rule="threshold"``) are the
        exported ones for reports; ``share``: split by that share of the greedy split (:meth:`sparse_model_for`).
        """
        tokens = self.tokens[role] if index is None else self.tokens[role][index]
        reference = self.reference(role)
        if index is not None:
            reference = reference.subset(index)
        objective = self.objective
        if share is not None:
            objective = Objective(
                self.sparse_model_for(share), batch_size=objective.batch_size, head_chunk=objective.head_chunk
            )
        return objective.evaluate(
            allocation,
            tokens,
            reference=reference,
            rule=rule or self.config.search.rule,
            thresholds=thresholds,
            on_batch=on_batch,
        )


def rung_indices(pool: int, sizes: list[int], *, seed: int) -> list[torch.Tensor]:
    """Consecutive slices of a seeded permutation of the pool's ``pool`` sequences, one per rung size."""
    order = torch.randperm(pool, generator=torch.Generator().manual_seed(seed + 1))
    starts = [sum(sizes[:r]) for r in range(len(sizes))]
    return [order[start : start + size] for start, size in zip(starts, sizes, strict=True)]


def artifact_key(settings: dict[str, Any]) -> str:
    """The storage key of an artifact: sha256 of its canonical settings."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def stored_artifact(
    artifacts: ArtifactStore,
    *,
    kind: str,
    label: str,
    settings: dict[str, Any],
    model_fingerprint: str,
    compute: Callable[[], bytes],
    notify: Notify,
) -> tuple[bytes, str]:
    """Fetch the artifact of ``settings`` from the store, or compute and store it; returns ``(blob, key)``."""
    key = artifact_key(settings)
    blob, computed = artifacts.get_or_compute_artifact(
        key, kind=kind, model_fingerprint=model_fingerprint, settings=settings, compute=compute, on_wait=notify
    )
    notify(f"{'Computed' if computed else 'Reused the stored'} {label} ({key[:12]})")
    return blob, key


def load_tokens(config: StudyConfig, tokenizer: Any) -> TokenSets:
    """The four data roles' tokens (plus ``ood`` if configured): documents of one source dealt to the roles,
    or the held-out role (and the out-of-domain set) from sources of their own."""
    data = config.data
    counts = {
        "calibration": data.calibration_sequences,
        "search": data.search_sequences,
        "validation": data.validation_sequences,
        "heldout": data.heldout_sequences if data.heldout is None else 0,
    }

    def cut(source: str, role_counts: dict[str, int]) -> TokenSets:
        corpus = load_text(source, text_field=data.text_field)
        return make_token_sets(corpus, tokenizer, seq_len=data.seq_len, counts=role_counts, seed=data.seed)

    main = cut(data.source, counts)
    sets, provenance = dict(main.sets), dict(main.provenance)
    separate = (("heldout", data.heldout, data.heldout_sequences), ("ood", data.ood, data.ood_sequences))
    for role, source, count in separate:
        if source is not None:
            other = cut(source, {"heldout": count})
            sets[role] = other.heldout
            provenance[f"{role}_source"] = {"source": source, **other.provenance}
    return TokenSets(
        sets=sets,
        source=data.source,
        seed=data.seed,
        unit=main.unit,
        documents=main.documents,
        provenance=provenance,
    )


def build_spaces(config: StudyConfig, block_weights: Any) -> dict[float, ConstraintSpace]:
    """The study's constraint space of each target: ``Σ_b w_b s_b = t·Σw`` within the per-block bounds."""
    sparsity = config.sparsity
    return {
        target: ConstraintSpace(weights=block_weights, target=target, lower=sparsity.lower, upper=sparsity.upper)
        for target in sparsity.targets
    }


def calibration_for(
    artifacts: ArtifactStore,
    config: StudyConfig,
    loaded: LoadedModel,
    tokens: TokenSets,
    *,
    notify: Notify,
    progress: Progress | None = None,
) -> tuple[Calibration, str]:
    """The stored calibration of these tokens, or a new one (one dense pass); returns it and its key."""
    score = Score(kind=config.sparsity.score, norm=config.sparsity.norm)
    settings = {
        "format": CALIBRATION_FORMAT,
        "model": loaded.fingerprint,
        "tokens": tokens.hash("calibration"),
        "score": score.describe(),
        **({"dtype": loaded.dtype} if loaded.dtype != "float32" else {}),
    }

    def compute() -> bytes:
        advance = progress("Calibrating", tokens.calibration.shape[0]) if progress else None
        return calibrate(
            loaded.adapter,
            tokens.calibration,
            score=score,
            model_fingerprint=loaded.fingerprint,
            batch_size=config.evaluation.batch_size,
            data=tokens.describe(),
            progress=advance,
        ).to_bytes()

    blob, key = stored_artifact(
        artifacts,
        kind="histograms",
        label="calibration",
        settings=settings,
        model_fingerprint=loaded.fingerprint,
        compute=compute,
        notify=notify,
    )
    return Calibration.from_bytes(blob), key


def greedy_table_for(
    artifacts: ArtifactStore,
    config: StudyConfig,
    loaded: LoadedModel,
    calibration: Calibration,
    calibration_key: str,
    tokens: TokenSets,
    *,
    notify: Notify,
    progress: Progress | None = None,
) -> GreedyTable | None:
    """The greedy split tables of this calibration (None for the uniform split), stored like the calibration.

    The ``blend`` split uses the same tables as ``greedy``: one artifact serves both."""
    sparsity = config.sparsity
    if sparsity.split == "uniform":
        return None
    upper = sparsity.upper if isinstance(sparsity.upper, float) else max(sparsity.upper)
    protocol = greedy_protocol(sparsity.greedy, loaded.adapter.site_weights()[0])
    settings = {
        "format": GREEDY_FORMAT,
        "calibration": calibration_key,
        "step": protocol["step"],
        "sequences": sparsity.greedy.sequences,
        "max_sparsity": upper,
        "sparsify_fraction": sparsity.sparsify_fraction,
    }
    if sparsity.greedy.protocol == "teal":  # the default protocol keys as before, so stored tables stay found
        settings.update(error_positions=protocol["error_positions"], error_norm=protocol["error_norm"])

    def compute() -> bytes:
        advance = progress("Greedy split tables", loaded.adapter.n_blocks) if progress else None
        return build_greedy_table(
            loaded.adapter,
            calibration,
            tokens.calibration[: sparsity.greedy.sequences],
            max_sparsity=upper,
            sparsify_fraction=sparsity.sparsify_fraction,
            progress=advance,
            **protocol,
        ).to_bytes()

    blob, _ = stored_artifact(
        artifacts,
        kind="greedy",
        label="greedy split tables",
        settings=settings,
        model_fingerprint=loaded.fingerprint,
        compute=compute,
        notify=notify,
    )
    return GreedyTable.from_bytes(blob)


def greedy_protocol(greedy: GreedyConfig, site_weights: torch.Tensor) -> dict[str, Any]:
    """The greedy path's step and error of ``greedy.protocol``: ``default`` (``greedy.step``, the error over every
    position, mean squared) or TEAL's ``greedyopt.py`` (each step raises a site by 0.05 over its weight relative
    to q's, :func:`allocator.teal_step`; the block output's L2 error on the last quarter of each sequence)."""
    if greedy.protocol == "teal":
        return {"step": teal_step(site_weights), "error_positions": 0.25, "error_norm": "l2"}
    return {"step": greedy.step, "error_positions": 1.0, "error_norm": "mse"}


def split_rule(sparsity: SparsityConfig, greedy: GreedyTable | None) -> SplitRule | None:
    """The split rule ``sparsity.split`` names (None: uniform), over the greedy tables where it needs them."""
    if sparsity.split == "uniform":
        return None
    if greedy is None:
        raise InputError(f"The `{sparsity.split}` split needs greedy split tables; none were built.")
    if sparsity.split == "greedy":
        return GreedySplit(greedy)
    return BlendSplit(GreedySplit(greedy), sparsity.greedy.blend)  # `search`: its share before any is chosen


def reference_for(
    artifacts: ArtifactStore,
    config: StudyConfig,
    loaded: LoadedModel,
    tokens: TokenSets,
    role: str,
    *,
    notify: Notify,
    progress: Progress | None = None,
) -> DenseReference:
    """The stored dense reference of a role's tokens, or a new one (one dense pass)."""
    k = config.search.reference_top_k
    settings = {"format": REFERENCE_FORMAT, "model": loaded.fingerprint, "tokens": tokens.hash(role), "k": k}
    if loaded.dtype != "float32":  # float32 keys as before, so stored artifacts stay found
        settings["dtype"] = loaded.dtype

    def compute() -> bytes:
        advance = progress(f"Dense reference ({role})", tokens[role].shape[0]) if progress else None
        return compute_reference(
            loaded.adapter,
            tokens[role],
            k=k,
            model_fingerprint=loaded.fingerprint,
            tokens_hash=tokens.hash(role),
            batch_size=config.evaluation.batch_size,
            progress=advance,
        ).to_bytes()

    blob, _ = stored_artifact(
        artifacts,
        kind="reference",
        label=f"dense reference of the {role} tokens",
        settings=settings,
        model_fingerprint=loaded.fingerprint,
        compute=compute,
        notify=notify,
    )
    return DenseReference.from_bytes(blob)


def open_session(
    artifacts: ArtifactStore,
    config: StudyConfig,
    *,
    notify: Notify = lambda message: None,
    progress: Progress | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> StudySession:
    """Build a study's session: model, tokens, constraint space, calibration, greedy tables, objective.

    ``device`` and ``dtype`` override the study's for this process (one worker per GPU: ``cuda:1``).
    """
    device = device or config.model.device
    dtype = dtype or config.model.dtype
    notify(f"Loading model {config.model.source}")
    loaded = load_model(config.model.source, device=device, dtype=dtype, progress=progress)
    # `study create` checked it; a study stored before that check was made is refused here.
    check_seq_len(config.data.seq_len, loaded.max_positions, model=config.model.source, name="data.seq_len")
    spaces = build_spaces(config, loaded.adapter.block_weights().tolist())  # bad bounds fail before any pass
    if isinstance(artifacts, Database):
        artifacts.register_model(loaded.identity(), loaded.adapter.site_weights().tolist())
    tokens = load_tokens(config, loaded.tokenizer)
    calibration, key = calibration_for(artifacts, config, loaded, tokens, notify=notify, progress=progress)
    greedy = greedy_table_for(artifacts, config, loaded, calibration, key, tokens, notify=notify, progress=progress)
    sparse_model = SparseModel(
        loaded.adapter,
        calibration,
        split=split_rule(config.sparsity, greedy),
        sparsify_fraction=config.sparsity.sparsify_fraction,
    )
    objective = Objective(sparse_model, batch_size=config.evaluation.batch_size)
    return StudySession(
        config=config,
        artifacts=artifacts,
        loaded=loaded,
        tokens=tokens,
        spaces=spaces,
        calibration=calibration,
        calibration_key=key,
        greedy=greedy,
        sparse_model=sparse_model,
        objective=objective,
        notify=notify,
        progress=progress,
    )
