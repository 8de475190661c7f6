"""Study configuration: one YAML file, validated on load; unknown keys refused, every error naming its key.

The validated configuration is stored in the study database, so every worker and every resume rebuilds
the same study from the study's name alone. The storage URL is not part of it (it says where the study
lives, not what it is, and may hold a password).

Types are strict (``trials: true`` or ``trials: "10"`` is refused, not read as 1 or 10), numbers must be
finite, a key given twice in the YAML is refused, and ``sampler.options`` are validated against the
sampler's own options model (see :mod:`allocator.search.samplers`), all before anything is stored. What needs the
model's configuration (per-block bound lists against its block count, reachability of the target) is
checked by :func:`studies.check_study` before the study is created.

Example (every key but ``name`` and ``sparsity.target`` has a default)::

    name: smollm2-bo-50
    model: smollm2-135m
    data: {source: pydoc, seq_len: 256, calibration_sequences: 16, search_sequences: 64}
    sparsity: {target: 0.5, lower: 0.0, upper: 0.9, score: magnitude, split: uniform}
    sampler: {name: bo, options: {}}
    search: {objective: kl, screen_sequences: 4, promote_sequences: [8], budget_tokens: null}
    trials: 30
    seed: 0
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BeforeValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from allocator.errors import InputError
from allocator.paths import path_errors
from allocator.schema import StrictModel

#: Seeds feed NumPy, PyTorch and Optuna generators, which take unsigned 32-bit seeds.
MAX_SEED = 2**32 - 1

Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)]


def _check_samplers(info: ValidationInfo) -> bool:
    """Whether to check sampler names and options against the registry (which imports every sampler).

    A stored configuration was checked when its study was created; reading it back for ``status`` or
    ``list`` skips the check so those commands do not import the samplers' numerical libraries.
    """
    return not (isinstance(info.context, dict) and info.context.get("stored"))


class ModelConfig(StrictModel):
    """The model and where it runs. A plain string is the source with ``device`` and ``dtype`` ``auto``."""

    source: str = "smollm2-135m"
    device: str = Field(default="auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"

    @model_serializer(mode="wrap")
    def _shorthand(self, handler: Any) -> Any:
        # Stored as the plain source when nothing else is chosen, as configurations always were.
        if self.device == "auto" and self.dtype == "auto":
            return self.source
        return handler(self)


def _model_entry(value: Any) -> Any:
    return {"source": value} if isinstance(value, str) else value


class DataConfig(StrictModel):
    """Where the tokens of the four data roles come from (never two roles on one document)."""

    source: str = "pydoc"
    heldout: str | None = Field(
        default=None, description="Held-out source; by default documents of `source` no other role uses."
    )
    ood: str | None = Field(default=None, description="A second, out-of-domain held-out source (reported only).")
    text_field: str = "text"
    seq_len: int = Field(default=256, ge=2)
    calibration_sequences: int = Field(default=64, ge=1, description="Thresholds and greedy split tables.")
    search_sequences: int = Field(default=256, ge=1, description="The pool the search evaluates on.")
    validation_sequences: int = Field(default=16, ge=1, description="Chooses the exported trial.")
    heldout_sequences: int = Field(default=16, ge=1, description="Reported, never used to choose.")
    ood_sequences: int = Field(default=16, ge=1)
    seed: Seed = 0


class SearchConfig(StrictModel):
    """What the search minimises, on which tokens, and how much it may spend.

    Every trial is screened on the first ``screen_sequences`` of the (seeded) search pool, common to all
    trials, so their values compare without noise from the choice of text. A trial whose screen value is
    among the best ``1/promote_ratio`` of the trials screened so far is promoted to the next rung: the next
    ``promote_sequences[0]`` sequences of the pool, fresh and common to every trial promoted there; and so on.
    The exported trial is chosen among the best-promoted ones by validation KL.
    """

    objective: Literal["kl", "perplexity"] = "kl"
    reference_top_k: int = Field(default=64, ge=1, description="Top tokens kept of each dense distribution.")
    rule: Literal["quantile", "topk", "threshold"] = Field(
        default="quantile",
        description="quantile: every trial runs at exactly its target sparsity; threshold: dense thresholds.",
    )
    screen_sequences: int = Field(default=4, ge=1)
    promote_sequences: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [8])
    promote_ratio: float = Field(default=3.0, gt=1.0, allow_inf_nan=False)
    budget_tokens: int | None = Field(default=None, ge=1, description="Forward tokens the search may use.")
    validation_candidates: int = Field(default=3, ge=1)


class GreedyConfig(StrictModel):
    """Settings of the greedy split tables (built once per calibration)."""

    protocol: Literal["default", "teal"] = Field(
        default="default",
        description="default: `step`, the error over every position (mean squared); teal: TEAL's greedyopt.py, "
        "each step raising a site by 0.05 over its weight relative to q's, the block output's L2 error on the "
        "last quarter of each sequence (TEAL scores 20,480 tokens: `sequences` x `data.seq_len`).",
    )
    step: float = Field(default=0.025, gt=0, le=0.5, allow_inf_nan=False)
    sequences: int = Field(default=4, ge=1, description="Calibration sequences whose block inputs score the splits.")
    blend: float = Field(
        default=0.5,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="The `blend` split's share of the greedy split (of the `search` split: the share searched "
        "until a start point has a value).",
    )
    start_shares: list[Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]] = Field(
        default_factory=lambda: [0.0, 0.5, 1.0],
        min_length=1,
        max_length=11,
        description="The `search` split's no-search start points: the uniform vector at each share of the greedy "
        "split (0: uniform, 1: TEAL's greedy-uniform); the search continues at the best one's share.",
    )

    share_probes: int = Field(
        default=3,
        ge=0,
        le=16,
        description="The `search` split's share probes after the start points: the uniform vector at shares a "
        "bracketing line search chooses between them (3: the share to 1/8); the search then continues at the "
        "best share found.",
    )

    @field_validator("start_shares")
    @classmethod
    def _distinct(cls, shares: list[float]) -> list[float]:
        if len(set(shares)) != len(shares):
            raise ValueError("a start share is given twice")
        return shares


#: The most targets one frontier study may name (each needs its own uniform baseline and trials).
MAX_TARGETS = 32


def _expand_targets(value: Any) -> Any:
    """``{from, to, step}`` to the list of targets it names (``to`` included); anything else as given."""
    if not isinstance(value, dict):
        return value
    unknown = sorted(set(value) - {"from", "to", "step"})
    if unknown:
        raise ValueError(f"unknown key `{unknown[0]}` in a target range; give `from`, `to` and `step`")
    missing = [key for key in ("from", "to", "step") if key not in value]
    if missing:
        raise ValueError(f"a target range needs `from`, `to` and `step`; `{missing[0]}` is missing")
    start, stop, step = (value[key] for key in ("from", "to", "step"))
    for key, number in (("from", start), ("to", stop), ("step", step)):
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            raise ValueError(f"`{key}` of a target range should be a finite number; got {number!r}")
    if step <= 0 or stop < start:
        raise ValueError(f"a target range needs `step` > 0 and `from` <= `to`; got {start} to {stop} by {step}")
    count = (stop - start) / step
    if abs(count - round(count)) > 1e-6:
        raise ValueError(f"`step` {step} does not divide the range from {start} to {stop} into whole steps")
    if round(count) + 1 > MAX_TARGETS:
        raise ValueError(f"the target range names {round(count) + 1} targets; at most {MAX_TARGETS} are allowed")
    return [round(start + i * step, 10) for i in range(round(count) + 1)]


Target = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]


#: The allocation a study of each fixed split gets with no search: the uniform vector under that split.
NO_SEARCH_NAMES = {"uniform": "uniform", "greedy": "greedy-uniform", "blend": "blend-uniform"}


class SparsityConfig(StrictModel):
    """The constraint and how sparsity is applied.

    ``target`` is one model-level sparsity, or several (a list, or a range ``{from, to, step}``): a
    frontier study, whose every trial meets one of them exactly. :attr:`targets` is always the sorted tuple.
    """

    target: Annotated[Target | list[Target], BeforeValidator(_expand_targets)]
    lower: Fraction | list[Fraction] = 0.0
    upper: Fraction | list[Fraction] = 0.9
    score: Literal["magnitude", "weight_aware"] = "magnitude"
    norm: Literal[1, 2] = 1
    split: Literal["uniform", "greedy", "blend", "search"] = "uniform"
    greedy: GreedyConfig = GreedyConfig()
    sparsify_fraction: float = Field(default=1.0, gt=0, le=1, allow_inf_nan=False)

    @property
    def targets(self) -> tuple[float, ...]:
        """Every target of the study, in increasing order (one for a single-target study)."""
        return tuple(self.target) if isinstance(self.target, list) else (self.target,)

    @property
    def is_frontier(self) -> bool:
        """Whether the study names several targets."""
        return len(self.targets) > 1

    @field_validator("target")
    @classmethod
    def _targets_sorted_and_distinct(cls, target: float | list[float]) -> float | list[float]:
        if not isinstance(target, list):
            return target
        if not target:
            raise ValueError("the list of targets is empty; give at least one")
        if len(target) > MAX_TARGETS:
            raise ValueError(f"{len(target)} targets are given; at most {MAX_TARGETS} are allowed")
        for before, after in itertools.pairwise(target):
            if after == before:
                raise ValueError(f"the target {after} is given twice")
            if after < before:
                raise ValueError(f"targets must be listed in increasing order; {after} follows {before}")
        return target[0] if len(target) == 1 else target

    @model_validator(mode="after")
    def _scalar_bounds_reach_the_target(self) -> SparsityConfig:
        # Per-block lists are checked against the model's block count and weights by `check_study`.
        if isinstance(self.lower, float) and isinstance(self.upper, float):
            if self.lower > self.upper:
                raise ValueError(f"`lower` ({self.lower}) is above `upper` ({self.upper})")
            for target in self.targets:
                if not self.lower <= target <= self.upper:
                    raise ValueError(
                        f"bounds [{self.lower}, {self.upper}] cannot reach the target {target}; "
                        f"the reachable range is [{self.lower}, {self.upper}]"
                    )
        return self


class SamplerConfig(StrictModel):
    """The sampler by its registered name, and its options (validated by the sampler's options model)."""

    name: str = "bo"
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str, info: ValidationInfo) -> str:
        if not _check_samplers(info):
            return name
        from allocator.search.samplers import sampler_names

        if name not in sampler_names():
            raise ValueError(f"unknown sampler {name!r}; valid names are {', '.join(sampler_names())}")
        return name

    @model_validator(mode="after")
    def _options_valid(self, info: ValidationInfo) -> SamplerConfig:
        if not _check_samplers(info):
            return self
        from allocator.search.samplers import parse_options

        try:
            parse_options(self.name, self.options)
        except InputError as error:
            raise ValueError(str(error).rstrip(".")) from None
        return self


class EvaluationConfig(StrictModel):
    """How trials are evaluated: sequences per forward pass, and whether held-out figures are reported as the best trial
    improves."""

    batch_size: int = Field(default=8, ge=1)
    heldout: Literal["best", "none"] = Field(
        default="best", description="Report held-out figures of each trial that improves on the best so far."
    )


class StudyConfig(StrictModel):
    """A whole study file, validated: what every worker of the study rebuilds its model, data, sampler and search from.

    Storage keeps its :meth:`canonical` form, so workers and later commands read the study's settings from the database
    rather than from a file that may have changed.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
    model: Annotated[ModelConfig, BeforeValidator(_model_entry)] = ModelConfig()
    data: DataConfig = DataConfig()
    sparsity: SparsityConfig
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    search: SearchConfig = SearchConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    trials: int = Field(default=30, ge=1)
    seed: Seed = 0

    @model_validator(mode="after")
    def _pool_holds_the_rungs(self) -> StudyConfig:
        needed = self.search.screen_sequences + sum(self.search.promote_sequences)
        if needed > self.data.search_sequences:
            raise ValueError(
                f"the screen and promotion rungs need {needed} search sequences but `data.search_sequences` "
                f"is {self.data.search_sequences}"
            )
        return self

    @model_validator(mode="after")
    def _sampler_gets_its_split(self, info: ValidationInfo) -> StudyConfig:
        if not _check_samplers(info):
            return self
        from allocator.search.samplers import sampler_entry

        entry = sampler_entry(self.sampler.name)
        if entry.site_split is not None and self.sparsity.split != entry.site_split:
            raise ValueError(f"sampler `{self.sampler.name}` needs `sparsity.split: {entry.site_split}`")
        if self.sparsity.split == "search" and not entry.searches_split:
            raise ValueError(f"sampler `{self.sampler.name}` cannot search the site split (`sparsity.split: search`)")
        greedy = self.sparsity.greedy
        starts = len(greedy.start_shares) * len(self.sparsity.targets)
        probes = greedy.share_probes * len(self.sparsity.targets)
        if self.sparsity.split == "search" and starts + probes >= self.trials:
            raise ValueError(
                f"`trials` ({self.trials}) leaves no trial for the search after the {starts} start points "
                f"and {probes} share probes (`sparsity.greedy.start_shares` and `share_probes` at each target)"
            )
        return self

    def canonical(self) -> dict[str, Any]:
        """The configuration as stored: plain JSON types, every default filled in."""
        return self.model_dump(mode="json")

    def digest(self) -> str:
        """The sha256 of the canonical configuration, by which storage refuses a study name reused with another
        configuration."""
        return hashlib.sha256(json.dumps(self.canonical(), sort_keys=True).encode()).hexdigest()


def _format_error(error: ValidationError, source: str) -> str:
    # Of a union's several errors (`upper: [0.5, 1.5]` fails as a float and as a list), the deepest one
    # names the culprit (`sparsity.upper.1`).
    first = max(error.errors(), key=lambda e: len(e["loc"]))
    parts = [str(part) for part in first["loc"] if not str(part).startswith("function-after")]
    # A union's failing member is named in the location (`lower.float`, `lower.list[float].2`): keep the key
    # and list positions, drop the member names.
    location = ".".join(part for part in parts if part.isidentifier() or part.isdigit())
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key `{location}`."
    if first["type"] == "missing":
        return f"{source}: missing required key `{location}`."
    message = first["msg"].removeprefix("Value error, ")
    where = f"`{location}`: " if location else ""
    return f"{source}: {where}{message}."


def parse_config(data: Any, *, source: str = "config", stored: bool = False) -> StudyConfig:
    """Validate a configuration mapping; errors are one sentence naming the key.

    ``stored=True`` reads back a configuration validated when its study was created: the sampler's name
    and options are not checked again here (building the sampler checks them).
    """
    if not isinstance(data, dict):
        raise InputError(f"{source}: the configuration should be a mapping of keys to values.")
    storage = data.get("storage")
    data = {key: value for key, value in data.items() if key != "storage"}
    try:
        config = StudyConfig.model_validate(data, context={"stored": stored})
    except ValidationError as error:
        raise InputError(_format_error(error, source)) from None
    if storage is not None and not isinstance(storage, str):
        raise InputError(f"{source}: `storage` should be a URL string.")
    return config


Section = Mapping[str, Any] | None


def build_config(
    name: str,
    *,
    target: float | Sequence[float] | Mapping[str, float],
    model: str | Mapping[str, Any] | None = None,
    data: Section = None,
    sparsity: Section = None,
    sampler: str | Mapping[str, Any] | None = None,
    search: Section = None,
    evaluation: Section = None,
    trials: int | None = None,
    seed: int | None = None,
    source: str = "config",
) -> StudyConfig:
    """A validated study configuration from Python: a study file's sections as keyword arguments.

    The one way code builds a study (the command line's one-off commands, the demo, the soak, the
    benchmarks): each section is the mapping a study file holds under that key (``model`` and ``sampler``
    may also be a bare name), ``target`` is ``sparsity.target``, and only what is given is set. A section or
    key left out, or given as None, takes the schema's default (the models above), as in a YAML file, so no
    default is written twice. Errors are :func:`parse_config`'s: one sentence naming the key, after ``source``.
    """
    if sparsity is not None and "target" in sparsity:
        raise TypeError("build_config takes the target once, as `target`, not also in `sparsity`")
    if isinstance(target, Sequence):
        target = list(target)  # a tuple of targets too (strict validation takes lists only)
    sections: dict[str, Any] = {
        "model": model,
        "data": data,
        "sparsity": {**(sparsity or {}), "target": target},
        "sampler": {"name": sampler} if isinstance(sampler, str) else sampler,
        "search": search,
        "evaluation": evaluation,
        "trials": trials,
        "seed": seed,
    }
    document: dict[str, Any] = {"name": name}
    for key, value in sections.items():
        if isinstance(value, Mapping):
            value = {field: given for field, given in value.items() if given is not None}
        if value is not None:
            document[key] = value
    return parse_config(document, source=source)


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping key given twice in a YAML file (PyYAML alone silently keeps the last)."""


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, refusing a mapping key given twice."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        """PyYAML's mapping constructor, raising :class:`DuplicateKeyError` at the second occurrence of a key."""
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise DuplicateKeyError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path) -> tuple[StudyConfig, str | None]:
    """Read and validate a YAML study file; returns the configuration and its ``storage`` URL (if any)."""
    path = Path(path)
    try:
        with path_errors(f"Config file {str(path)!r} cannot be read"):  # missing, unreadable, a loop of links...
            text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"Config file {str(path)!r} cannot be read: {error}.") from None
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)
    except DuplicateKeyError as error:
        mark = error.problem_mark
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"Config file {str(path)!r} has a {error.problem}{where}.") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"Config file {str(path)!r} is not valid YAML{where}.") from None
    storage = data.get("storage") if isinstance(data, dict) else None
    return parse_config(data, source=str(path)), storage
