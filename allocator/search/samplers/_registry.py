"""The sampler registry: the one list of sampler names, each with its typed options and its capabilities.

Every sampler module registers its factory with :func:`register_sampler`, naming a pydantic options model
(unknown options refused, types strict), as llm-compressor's modifiers and BoTorch's acquisition input
constructors do. A study's ``sampler.options`` are validated against that model when the study is created,
before any model is loaded, and the sampler is then built from the validated options.

Capabilities are declared, never tested by name: ``max_trials`` (how many distinct proposals), ``site_split``
(the site split a study must use) and ``frontier`` (how the sampler runs a frontier study of several targets).
Registering a sampler gives it the generic frontier variant, :class:`~allocator.search.samplers.TargetsInTurn` (one
instance per target, the targets taking turns); a sampler that learns across targets registers its own with
:func:`register_frontier`. :func:`create_sampler` and :func:`create_frontier_sampler` build either by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from allocator.errors import InputError
from allocator.schema import StrictModel
from allocator.search.samplers._frontier import TargetsInTurn

if TYPE_CHECKING:
    from optuna.samplers import BaseSampler

    from allocator.search._constraint import ConstraintSpace


class SamplerOptions(StrictModel):
    """Base of every sampler's options: frozen, strict types, unknown keys refused."""


SamplerFactory = Callable[..., "BaseSampler"]
"""``factory(space=..., seed=..., options=...)`` builds the sampler."""

FrontierFactory = Callable[..., "BaseSampler"]
"""``factory(spaces=..., seed=..., options=...)`` builds the sampler of a frontier study (``spaces``: the
constraint space of each target)."""


@dataclass(frozen=True)
class SamplerEntry:
    """A registered sampler.

    Attributes:
        name: The name studies use.
        factory: Builds the sampler from ``space``, ``seed`` and validated ``options``.
        options: The options model.
        max_trials: How many distinct proposals the sampler has (None: no limit).
        site_split: The site split rule the sampler requires (``greedy`` is TEAL's greedy-uniform), or None.
        summary: One line for help texts.
        frontier: Builds the sampler of a frontier study from ``spaces``, ``seed`` and validated ``options``.
        learns_across_targets: Whether ``frontier`` is the sampler's own (registered with
            :func:`register_frontier`) rather than one instance per target taking turns.
    """

    name: str
    factory: SamplerFactory
    options: type[SamplerOptions]
    max_trials: int | None
    site_split: str | None
    summary: str
    frontier: FrontierFactory
    learns_across_targets: bool = False

    @property
    def searches_split(self) -> bool:
        """Whether the sampler can search the site split too (``sparsity.split: search``): a block sampler with
        more than one proposal (it places each trial at a share before proposing, see ``SplitSearch``)."""
        return callable(getattr(self.factory, "search_split", None)) and self.max_trials is None


_ENTRIES: dict[str, SamplerEntry] = {}


def register_sampler(
    name: str,
    *,
    options: type[SamplerOptions] | None = None,
    max_trials: int | None = None,
    site_split: str | None = None,
    summary: str = "",
) -> Callable[[SamplerFactory], SamplerFactory]:
    """Register the decorated factory under ``name``; a name registered twice is a programming error.

    ``options`` defaults to the factory's own ``Options`` attribute (a ``ProposalSampler`` subclass's), and a
    decorated class gets ``name`` as its ``name`` attribute (the name is written once, here). The sampler's
    frontier variant is :func:`in_turn` of the factory until :func:`register_frontier` gives its own.
    """

    def decorate(factory: SamplerFactory) -> SamplerFactory:
        if name in _ENTRIES:
            raise RuntimeError(f"A sampler named {name!r} is already registered.")
        model = options or getattr(factory, "Options", SamplerOptions)
        limit = max_trials if max_trials is not None else getattr(factory, "max_trials", None)
        if isinstance(factory, type):
            factory.name = name  # type: ignore[attr-defined]
        _ENTRIES[name] = SamplerEntry(
            name=name,
            factory=factory,
            options=model,
            max_trials=limit,
            site_split=site_split,
            summary=summary,
            frontier=in_turn(factory),
        )
        return factory

    return decorate


def register_frontier(name: str) -> Callable[[FrontierFactory], FrontierFactory]:
    """Register the decorated factory as the frontier variant of the registered sampler ``name``, one that learns
    across the targets (it takes the sampler's options); registering a second one is a programming error."""

    def decorate(factory: FrontierFactory) -> FrontierFactory:
        entry = _ENTRIES.get(name)
        if entry is None or entry.learns_across_targets:
            raise RuntimeError(f"Sampler {name!r} is not registered, or already has its own frontier variant.")
        if isinstance(factory, type):
            factory.name = name  # type: ignore[attr-defined]
        _ENTRIES[name] = replace(entry, frontier=factory, learns_across_targets=True)
        return factory

    return decorate


def in_turn(factory: SamplerFactory) -> FrontierFactory:
    """The generic frontier variant of ``factory``: one sampler per target, the targets taking turns."""

    def build(*, spaces: Mapping[float, ConstraintSpace], seed: int | None, options: SamplerOptions) -> BaseSampler:
        return TargetsInTurn(spaces=spaces, build=lambda space: factory(space=space, seed=seed, options=options))

    return build


def sampler_names() -> tuple[str, ...]:
    """Every registered sampler name, in registration order (``allocator.search.samplers`` imports every sampler
    module, so through the package the registry is complete)."""
    return tuple(_ENTRIES)


def sampler_entry(name: str) -> SamplerEntry:
    """The registered sampler ``name``; an unknown name is one sentence listing the valid ones."""
    entry = _ENTRIES.get(name)
    if entry is None:
        raise InputError(f"Unknown sampler {name!r}; valid names are {', '.join(_ENTRIES)}.")
    return entry


def parse_options(name: str, options: dict[str, Any] | SamplerOptions | None = None) -> SamplerOptions:
    """Validate ``options`` for sampler ``name``; an error is one sentence naming the option."""
    return validate_options(sampler_entry(name).options, name, options)


def validate_options(
    model: type[SamplerOptions], name: str, options: dict[str, Any] | SamplerOptions | None
) -> SamplerOptions:
    """``options`` validated by ``model`` (the options of sampler ``name``), as one-sentence errors."""
    if isinstance(options, model):
        return options
    if options is not None and not isinstance(options, dict):
        raise InputError(f"The options of sampler {name!r} should be a mapping of option names to values.")
    try:
        return model.model_validate(options or {})
    except ValidationError as error:
        first = error.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else name  # options are flat: the first part names the option
        if first["type"] == "extra_forbidden":
            valid = ", ".join(model.model_fields) or "none"
            raise InputError(f"Unknown option `{key}` for sampler {name!r}; valid options are {valid}.") from None
        message = first["msg"].removeprefix("Value error, ")
        raise InputError(f"Option `{key}` of sampler {name!r}: {message}.") from None


def create_sampler(name: str, *, space: ConstraintSpace, seed: int | None = None, **options: Any) -> BaseSampler:
    """The sampler called ``name`` for ``space``, seeded, with its keyword ``options`` validated first."""
    entry = sampler_entry(name)
    return entry.factory(space=space, seed=seed, options=parse_options(name, options))


def create_frontier_sampler(
    name: str,
    *,
    spaces: Mapping[float, ConstraintSpace],
    seed: int | None = None,
    per_target: bool = False,
    **options: Any,
) -> BaseSampler:
    """The sampler called ``name`` for a frontier study of ``spaces`` (one constraint space per target), seeded,
    with its keyword ``options`` validated first: its registered frontier variant (see the module docstring), or
    with ``per_target`` one sampler per target taking turns (:func:`in_turn`) even where the sampler learns
    across targets (a frontier that searches the split: each target chooses its own share)."""
    entry = sampler_entry(name)
    frontier = in_turn(entry.factory) if per_target else entry.frontier
    return frontier(spaces=spaces, seed=seed, options=parse_options(name, options))
