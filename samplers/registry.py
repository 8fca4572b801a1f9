"""The one registry of samplers.

Every sampler function registers itself here with its metadata; nodes, docs, tests and benchmarks
read `REGISTRY` and keep no list of their own.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Option:
    """One tunable argument of a sampler, shown as a widget on its node."""

    name: str
    default: float | int | bool | str
    min: float | None = None
    max: float | None = None
    step: float | None = None
    choices: tuple[str, ...] | None = None
    tooltip: str = ""
    # added after the sampler's node shipped: an optional input, so graphs saved before it still validate
    # (a graph without it runs with the default)
    added_later: bool = False


@dataclass(frozen=True)
class SamplerInfo:
    id: str  # our id; equal to ComfyUI core's id where core has the sampler
    name: str  # the source document's name, e.g. "DPM++ 2M SDE"
    fn: Callable
    order: int  # convergence order of the deterministic part (1 for ancestral Euler, ...)
    calls_per_step: int | str  # model evaluations per step; a string where it varies ("adaptive")
    stochastic: bool
    discard_penultimate_sigma: bool = False
    options: tuple[Option, ...] = ()
    core_id: str | None = None  # ComfyUI core sampler with the same maths, for parity tests
    reference: str = ""  # implementation read for the algorithm (repo/file::function)
    paper: str = ""  # arXiv id and algorithm/equation
    description: str = ""  # what the source document says of it (translated)
    fixed_options: dict = field(default_factory=dict)  # options this entry pins, e.g. solver_type
    # its default noise is one Brownian path fixed by the seed, so runs at growing step counts converge to one
    # picture: the Sampler Lab measures it against its own high-step run (other stochastic samplers draw fresh
    # noise per step and have no such limit)
    brownian_path: bool = False
    # takes `model_sigmas`, the model's discrete sigma table (ascending, index = timestep), which the nodes
    # read from ComfyUI's model_sampling at sampling time (PNDM's half timestep)
    uses_model_sigmas: bool = False
    # where the maths has a domain narrower than the widgets' ranges: options -> problems (empty: fine)
    domain: Callable[[dict], list[str]] | None = None

    def defaults(self) -> dict:
        return {o.name: o.default for o in self.options}


class OptionError(ValueError):
    """A sampler option outside its range or its domain; the message names the option, value and range."""


def option_problems(info: SamplerInfo, options: dict) -> list[str]:
    """What is wrong with `options` for this sampler: unknown names, non-finite or out-of-range
    numbers, unknown choices, then the entry's own `domain` (checked on the full option set)."""
    known = {o.name: o for o in info.options}
    problems = []
    for name, value in options.items():
        option = known.get(name)
        if option is None:
            continue  # pass-through arguments such as noise_sampler
        if option.choices is not None:
            if value not in option.choices:
                problems.append(f"{name}={value!r} is not one of {', '.join(option.choices)}")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if value != value or value in (float("inf"), float("-inf")):
                problems.append(f"{name}={value} is not a finite number")
            elif (option.min is not None and value < option.min) or (option.max is not None and value > option.max):
                problems.append(f"{name}={value} is outside its range [{option.min}, {option.max}]")
    if not problems and info.domain is not None:
        problems += info.domain({**info.defaults(), **options, **info.fixed_options})
    return problems


def check_options(info: SamplerInfo, options: dict) -> None:
    """Raise `OptionError` naming every bad option of `options`, before anything runs."""
    problems = option_problems(info, options)
    if problems:
        raise OptionError(f"sampler {info.name!r} ({info.id}): " + "; ".join(problems))


REGISTRY: dict[str, SamplerInfo] = {}


def register(**meta) -> Callable[[Callable], Callable]:
    """Decorator: `@register(id="euler", name="Euler", order=1, ...)` above a sampler function.

    Several entries may share one function (e.g. DPM++ 2M SDE midpoint/heun, the GPU variants),
    distinguished by `fixed_options`; stack the decorator for those.
    """

    def wrap(fn: Callable) -> Callable:
        info = SamplerInfo(fn=fn, **meta)
        if info.brownian_path and not info.stochastic:
            raise ValueError(f"sampler {info.id!r}: brownian_path needs a stochastic sampler")
        if info.id in REGISTRY:
            raise ValueError(f"sampler id {info.id!r} registered twice")
        REGISTRY[info.id] = info
        return fn

    return wrap
