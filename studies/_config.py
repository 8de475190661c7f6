"""Study configuration: one YAML file, validated on load; unknown keys refused, every error naming its key.

The validated configuration is stored in the study database, so every worker and every resume rebuilds
the same study from the study's name alone. The storage URL is not part of it (it says where the study
lives, not what it is, and may hold a password).

Example (every key but ``name`` and ``sparsity.target`` has a default)::

    name: smollm2-bo-50
    model: smollm2-135m
    data: {calibration: pydoc, seq_len: 256, calibration_sequences: 16, heldout_sequences: 16}
    sparsity: {target: 0.5, lower: 0.0, upper: 0.9, score: magnitude, split: uniform}
    sampler: {name: bo, options: {}}
    trials: 30
    seed: 0
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from allocator._errors import InputError

SAMPLER_NAMES = ("bo", "uniform", "greedy", "random", "tpe", "cmaes", "was", "evopress")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    """Where calibration and held-out tokens come from."""

    calibration: str = "pydoc"
    heldout: str | None = Field(
        default=None, description="Held-out source; by default a part of `calibration` no calibration sequence shares."
    )
    text_field: str = "text"
    seq_len: int = Field(default=256, ge=2)
    calibration_sequences: int = Field(default=16, ge=1)
    heldout_sequences: int = Field(default=16, ge=1)
    seed: int = 0


class GreedyConfig(_Strict):
    """Settings of the greedy split tables (built once per calibration)."""

    step: float = Field(default=0.025, gt=0, le=0.5)
    sequences: int = Field(default=1, ge=1, description="Calibration sequences whose block inputs score the splits.")


class SparsityConfig(_Strict):
    """The constraint and how sparsity is applied."""

    target: float = Field(gt=0, lt=1)
    lower: float | list[float] = 0.0
    upper: float | list[float] = 0.9
    score: Literal["magnitude", "weight_aware"] = "magnitude"
    norm: Literal[1, 2] = 1
    split: Literal["uniform", "greedy"] = "uniform"
    greedy: GreedyConfig = GreedyConfig()
    sparsify_fraction: float = Field(default=1.0, gt=0, le=1)

    @model_validator(mode="after")
    def _bounds_in_range(self) -> SparsityConfig:
        for key in ("lower", "upper"):
            values = getattr(self, key)
            for value in values if isinstance(values, list) else [values]:
                if not 0 <= value < 1:
                    raise ValueError(f"`{key}` values should be in [0, 1), got {value}")
        if isinstance(self.lower, float) and isinstance(self.upper, float):
            if self.lower > self.upper:
                raise ValueError(f"`lower` ({self.lower}) is above `upper` ({self.upper})")
            if not self.lower <= self.target <= self.upper:
                raise ValueError(
                    f"bounds [{self.lower}, {self.upper}] cannot reach the target {self.target}; "
                    f"the reachable range is [{self.lower}, {self.upper}]"
                )
        return self


class SamplerConfig(_Strict):
    name: Literal["bo", "uniform", "greedy", "random", "tpe", "cmaes", "was", "evopress"] = "bo"
    options: dict[str, Any] = Field(default_factory=dict)


class EvaluationConfig(_Strict):
    batch_size: int = Field(default=8, ge=1)
    heldout: Literal["best", "none"] = Field(
        default="best", description="Measure held-out perplexity of each trial that improves on the best so far."
    )


class StudyConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
    model: str = "smollm2-135m"
    data: DataConfig = DataConfig()
    sparsity: SparsityConfig
    sampler: SamplerConfig = SamplerConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    trials: int = Field(default=30, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _greedy_sampler_uses_greedy_split(self) -> StudyConfig:
        if self.sampler.name == "greedy" and self.sparsity.split != "greedy":
            raise ValueError("sampler `greedy` is TEAL's greedy-uniform method: set `sparsity.split: greedy`")
        return self

    @property
    def split(self) -> str:
        return self.sparsity.split

    def canonical(self) -> dict[str, Any]:
        """The configuration as stored: plain JSON types, every default filled in."""
        return self.model_dump(mode="json")

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.canonical(), sort_keys=True).encode()).hexdigest()


def _format_error(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"] if not str(part).startswith("function-after"))
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key `{location}`."
    if first["type"] == "missing":
        return f"{source}: missing required key `{location}`."
    message = first["msg"].removeprefix("Value error, ")
    where = f"`{location}`: " if location else ""
    return f"{source}: {where}{message}."


def parse_config(data: Any, *, source: str = "config") -> StudyConfig:
    """Validate a configuration mapping; errors are one sentence naming the key."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: the configuration should be a mapping of keys to values.")
    storage = data.get("storage")
    data = {key: value for key, value in data.items() if key != "storage"}
    try:
        config = StudyConfig.model_validate(data)
    except ValidationError as error:
        raise InputError(_format_error(error, source)) from None
    if storage is not None and not isinstance(storage, str):
        raise InputError(f"{source}: `storage` should be a URL string.")
    return config


def load_config(path: str | Path) -> tuple[StudyConfig, str | None]:
    """Read and validate a YAML study file; returns the configuration and its ``storage`` URL (if any)."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"Config file {str(path)!r} does not exist.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"Config file {str(path)!r} cannot be read: {error}.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"Config file {str(path)!r} is not valid YAML{where}.") from None
    storage = data.get("storage") if isinstance(data, dict) else None
    return parse_config(data, source=str(path)), storage
