"""The sweep: run samplers x schedules x step counts on one model, count model calls, time, measure error.

Error (what DPM-Solver++ arXiv:2211.01095 and UniPC arXiv:2302.04867 report): the relative RMS
distance of a run's final latent from a converged solution of the same problem,
||x - x_ref|| / ||x_ref||. Against what (`Against`):

- deterministic samplers: the probability-flow ODE solved to convergence (`reference.py`), one per
  (model, conditioning, latent, seed, schedule's sigma range), cached so that adding a sampler or a
  step count to a sweep does not recompute it;
- stochastic samplers whose noise is a Brownian path fixed by the seed (the DPM++ SDE family, Brownian
  by default): their own run at `OWN_REFERENCE_FACTOR` x the largest step count, on the same path (the
  tree spans the same sigma range for every step count of a schedule): they converge to their SDE's
  solution, not to the ODE's;
- stochastic samplers that draw independent noise per step (ancestral, LCM, ...): they converge to no
  pathwise limit (each step count draws other noise), so the table reports their distance to the ODE
  reference and marks it; it does not fall to 0 with more steps.

NFE = model calls counted by wrapping the model function the sampler is given (one call = one guided
denoiser evaluation, cond and uncond batched together as ComfyUI does).
"""
from __future__ import annotations

import enum
import hashlib
import math
import os
import time
import weakref
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Protocol, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..samplers.registry import REGISTRY, SamplerInfo
from ..samplers.runner import run_sampler
from ..samplers.schedules import SCHEDULES
from .reference import MAX_LOG_STEP, reference_calls, sample_reference

OWN_REFERENCE_FACTOR = 8  # a pathwise-stochastic sampler's reference: its own run at 8x the sweep's largest step count
Fn = Callable  # a k-diffusion sampler function: fn(model, x, sigmas, extra_args=None, callback=None, disable=None)


class LabError(ValueError):
    """Bad sweep input; the message names the input and the value."""


class Against:
    ODE = "ODE reference"
    OWN = "own high-step run, same Brownian path"
    ODE_NO_LIMIT = "distance to ODE reference (per-step noise: no pathwise limit)"


def against(info: SamplerInfo) -> str:
    """What a sampler's pictures are measured against, from its registry entry (`brownian_path`)."""
    if not info.stochastic:
        return Against.ODE
    return Against.OWN if info.brownian_path else Against.ODE_NO_LIMIT


# ----------------------------------------------------------------------------------------------- inputs

@dataclass(frozen=True)
class Schedule:
    """A schedule by name (its sigmas made per step count), or a given sigma list (its own step count)."""
    name: str
    sigmas: torch.Tensor | None = field(default=None, compare=False)

    @property
    def fixed_steps(self) -> int | None:
        return None if self.sigmas is None else len(self.sigmas) - 1


def parse_samplers(text: str | Sequence[str]) -> list[str]:
    """'all', or a comma list of registry ids (or the document's names); raises LabError naming what is wrong."""
    items = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    if not items:
        raise LabError(f"samplers: the list is empty ({text!r}); give 'all' or ids such as 'euler, heun'")
    if [s.lower() for s in items] == ["all"]:
        return list(REGISTRY)
    by_name = {info.name.lower(): info.id for info in REGISTRY.values()}
    out = []
    for s in items:
        sid = s if s in REGISTRY else by_name.get(s.lower())
        if sid is None:
            raise LabError(f"samplers: unknown sampler {s!r}; known: {', '.join(REGISTRY)}")
        if sid not in out:
            out.append(sid)
    return out


def parse_steps(text: str | Sequence[int]) -> list[int]:
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text)
    items = [s for s in items if s != ""]
    if not items:
        raise LabError(f"steps: the list is empty ({text!r}); give step counts such as '5, 10, 20, 40'")
    out = []
    for s in items:
        try:
            n = int(s)
        except (TypeError, ValueError):
            raise LabError(f"steps: {s!r} is not a whole number") from None
        if n < 1:
            raise LabError(f"steps: {n} is not allowed; every step count must be at least 1")
        if n not in out:
            out.append(n)
    return sorted(out)


def parse_schedules(text: str | Sequence[str]) -> list[Schedule]:
    items = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    if not items:
        raise LabError(f"schedules: the list is empty ({text!r}); give names such as 'karras, normal'")
    for s in items:
        if s not in SCHEDULES:
            raise LabError(f"schedules: unknown schedule {s!r}; known: {', '.join(SCHEDULES)}")
    return [Schedule(s) for s in dict.fromkeys(items)]


# ----------------------------------------------------------------------------------------------- backends

class Backend(Protocol):
    """What a sweep needs from a model: its schedules, a way to run a sampler function, and pictures.

    `run(fn, sigmas, callback)` starts from the backend's latent and seed noise (scaled as ComfyUI does),
    calls `fn(model, x, sigmas, extra_args=..., callback=..., disable=...)` with the guided denoiser and
    returns the final latent. `key` identifies (model, conditioning, latent, seed) for the reference cache."""

    model_sigmas: torch.Tensor | None

    def sigmas(self, schedule: str, steps: int) -> torch.Tensor: ...

    def run(self, fn: Fn, sigmas: torch.Tensor, callback: Callable | None = None) -> torch.Tensor: ...

    def key(self) -> tuple: ...


def fingerprint(*tensors: torch.Tensor) -> str:
    """A digest of tensors' values (for cache keys: conditioning, latents)."""
    h = hashlib.sha1()
    for t in tensors:
        t = t.detach().float().cpu().contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


SAMPLED_VALUES = 64  # values read from each weight tensor for a model's identity (identity(sample=...))


class Same:
    """Stands in a cache key for an object that has no value to compare (a patch function, a ControlNet): equal only
    to a Same of the very object while that object lives. A weak reference where the object allows one, so that a
    key keeps nothing alive and a freed object's address, reused by a new object, never matches it."""

    __slots__ = ("oid", "ref")

    def __init__(self, obj):
        self.oid = id(obj)
        try:
            self.ref = weakref.ref(obj)
        except TypeError:  # no weak references to it: hold it (such objects are small: no tensors or modules here)
            self.ref = lambda obj=obj: obj

    def __hash__(self) -> int:
        return self.oid

    def __eq__(self, other) -> bool:
        return isinstance(other, Same) and self.oid == other.oid and self.ref() is not None and self.ref() is other.ref()


def identity(obj, sample: int | None = None):
    """A hashable description of `obj` for the reference cache: containers by their items, tensors by shape, dtype
    and a digest of their values (all of them, or `sample` values evenly spaced: a model's weights, where reading all
    of an SD checkpoint would cost seconds; two trainings of a network differ in nearly every value), plain values as
    they are, anything else by identity (Same). Two equal descriptions mean the same computation; an object met
    again after it was rebuilt (a patch function made anew when its node ran again) only misses the cache."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if sample is not None and t.numel() > sample:
            t = t.reshape(-1)[torch.linspace(0, t.numel() - 1, sample, device=t.device).long()]
        try:
            return ("tensor", tuple(obj.shape), str(obj.dtype), fingerprint(t))
        except (RuntimeError, TypeError):  # a tensor subclass whose values cannot be read as floats here
            return ("tensor", tuple(obj.shape), str(obj.dtype), Same(obj))
    if isinstance(obj, dict):
        return ("dict", tuple((identity(k), identity(v, sample)) for k, v in obj.items()))
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, tuple(identity(v, sample) for v in obj))
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    if isinstance(obj, enum.Enum):
        return (type(obj).__name__, obj.name)
    return Same(obj)


class CountingModel:
    """The model function given to a sampler, counting its calls; `on_call` runs before each (interrupt checks)."""

    def __init__(self, model: Callable, on_call: Callable[[], None] | None = None):
        self.model, self.on_call, self.calls = model, on_call, 0

    def __call__(self, x, sigma, **kwargs):
        if self.on_call is not None:
            self.on_call()
        self.calls += 1
        return self.model(x, sigma, **kwargs)

    def __getattr__(self, name):  # samplers that read attributes of the model (core-style wrappers) still see them
        return getattr(self.__dict__["model"], name)


def counted(fn: Fn, counter: dict, on_call: Callable[[], None] | None = None) -> Fn:
    """`fn` with its model wrapped in a CountingModel; the count lands in counter['calls']."""

    def wrapped(model, x, sigmas, *args, **kwargs):
        counting = CountingModel(model, on_call)
        try:
            return fn(counting, x, sigmas, *args, **kwargs)
        finally:
            counter["calls"] = counting.calls

    return wrapped


def sampler_fn(sampler_id: str) -> Fn:
    return partial(run_sampler, sampler_id)


# ----------------------------------------------------------------------------------------------- results

@dataclass
class Cell:
    sampler: str
    schedule: str
    steps: int
    nfe: int
    seconds: float
    error: float = math.nan
    against: str = Against.ODE
    latent: torch.Tensor | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return REGISTRY[self.sampler].name if self.sampler in REGISTRY else self.sampler


@dataclass
class Reference:
    """A converged solution and how it was made and checked."""
    latent: torch.Tensor
    how: str
    calls: int
    seconds: float
    halving_change: float | None = None  # relative RMS change when every step is halved
    stored: bool = False  # read from the reference store (solved by an earlier run or another server)


@dataclass
class SweepResult:
    cells: list[Cell]
    references: dict[tuple, Reference]
    seconds_total: float
    seconds_references: float
    samplers: list[str]
    schedules: list[Schedule]
    steps: list[int]
    reused: set[tuple] = field(default_factory=set)  # references taken from the cache, solved by an earlier sweep

    @property
    def seconds_cells(self) -> float:
        return sum(c.seconds for c in self.cells)

    @property
    def overhead(self) -> float:
        """Time spent neither in the runs nor in the references (bookkeeping, drawing), relative to the runs."""
        return (self.seconds_total - self.seconds_cells - self.seconds_references) / max(self.seconds_cells, 1e-9)


# ----------------------------------------------------------------------------------------------- the reference cache

REFERENCE_CACHE: dict[tuple, Reference] = {}
CACHE_LIMIT = 64
# The store: references also kept as files in a folder (the Sampler Lab node's: under ComfyUI's user directory), so a
# restarted server, or another one sharing the folder, finds what an earlier one solved (on SD1.5 a whole-range
# reference is ~2,400 guided calls). Files are named by a digest of the key and hold the key itself.
STORE_LIMIT = 64


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


def portable(key) -> bool:
    """Whether `key` means the same in another process: no object known only by identity (Same) in it."""
    if isinstance(key, Same):
        return False
    return all(portable(k) for k in key) if isinstance(key, tuple) else True


def store_path(store: Path, key: tuple) -> Path:
    return store / f"{hashlib.sha256(repr(key).encode()).hexdigest()[:40]}.safetensors"


def load_stored(store: Path | None, key: tuple) -> Reference | None:
    """The store's reference for `key`, if it holds one (a file that cannot be read counts as none)."""
    if store is None or not portable(key):
        return None
    path = store_path(store, key)
    try:
        with safe_open(str(path), "pt") as f:
            meta, latent = f.metadata(), f.get_tensor("latent")
        if meta.get("key") != repr(key):  # a name collision of the digest's prefix: not ours
            return None
        change = meta.get("halving_change")
        return Reference(latent, meta["how"], int(meta["calls"]), float(meta["seconds"]),
                         float(change) if change else None, stored=True)
    except (OSError, KeyError, ValueError, SafetensorError):
        return None


def store_reference(store: Path | None, key: tuple, ref: Reference) -> None:
    """Write `ref` to the store (atomically: a reader sees the old file or the new one), then keep the newest
    STORE_LIMIT files. Keys holding objects known only by identity are not written: they mean nothing elsewhere."""
    if store is None or not portable(key):
        return
    store.mkdir(parents=True, exist_ok=True)
    path = store_path(store, key)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    meta = {"key": repr(key), "how": ref.how, "calls": str(ref.calls), "seconds": f"{ref.seconds:.6g}",
            "halving_change": "" if ref.halving_change is None else repr(ref.halving_change)}
    save_file({"latent": ref.latent.detach().cpu().contiguous()}, str(tmp), metadata=meta)
    os.replace(tmp, path)
    files = sorted(store.glob("*.safetensors"), key=lambda f: f.stat().st_mtime)
    for old in files[:max(0, len(files) - STORE_LIMIT)]:
        old.unlink(missing_ok=True)


def cached(key: tuple, verify: bool, store: Path | None = None) -> Reference | None:
    """The cache's reference for `key`, else the store's, if it has one that is good enough (verified when
    verification is asked)."""
    ref = REFERENCE_CACHE.get(key)
    if ref is None and (ref := load_stored(store, key)) is not None:
        remember(key, ref)
    return ref if ref is not None and (ref.halving_change is not None or not verify) else None


def remember(key: tuple, ref: Reference, store: Path | None = None) -> None:
    """Keep `ref` for `key`, the oldest entry dropped beyond CACHE_LIMIT; and in the store when one is given."""
    REFERENCE_CACHE.pop(key, None)
    if len(REFERENCE_CACHE) >= CACHE_LIMIT:
        REFERENCE_CACHE.pop(next(iter(REFERENCE_CACHE)))
    REFERENCE_CACHE[key] = ref
    store_reference(store, key, ref)


def ode_reference(backend: Backend, sigmas: torch.Tensor, verify: bool, progress: Callable | None = None,
                  store: Path | None = None) -> tuple[tuple, Reference]:
    """The probability-flow ODE's solution over this schedule's sigma range, from the cache or solved once."""
    positive = [float(s) for s in sigmas if s > 0]
    # the range to 6 significant digits: the same schedule computed in float32 (core's) or float64 (the pack's)
    # shares one reference; a start 1e-6 apart changes the solution by about that, below the reference's own accuracy
    key = (*backend.key(), "ode", float(f"{positive[0]:.6g}"), float(f"{positive[-1]:.6g}"), float(sigmas[-1]) == 0.0)
    if (ref := cached(key, verify, store)) is not None:
        return key, ref
    span = torch.tensor([positive[0], positive[-1]] + ([0.0] if float(sigmas[-1]) == 0 else []), dtype=sigmas.dtype)
    if len(positive) == 1:
        span = sigmas
    runs = [False, True] if verify else [False]
    out, calls, t0 = {}, 0, time.perf_counter()
    for halve in runs:
        counter: dict = {}
        fn = counted(partial(sample_reference, model_sigmas=backend.model_sigmas, halve=halve), counter)
        out[halve] = backend.run(fn, span, progress)
        calls += counter["calls"]
    seconds = time.perf_counter() - t0
    how = (f"Heun from jump to jump of the model's timestep ({len(backend.model_sigmas) if backend.model_sigmas is not None else 0}-entry sigma table), "
           f"at most {MAX_LOG_STEP} in log sigma per step, sigma {positive[0]:.4g} to {positive[-1]:.4g}, then x = D(x, sigma_last)")
    ref = Reference(out[False], how, calls, seconds, relative_error(out[False], out[True]) if verify else None)
    remember(key, ref, store)
    return key, ref


def own_reference(backend: Backend, sampler_id: str, schedule: Schedule, steps: int, verify: bool,
                  progress: Callable | None = None, store: Path | None = None) -> tuple[tuple, Reference]:
    """A pathwise-stochastic sampler's own run at `steps` (and at steps/2 to state the change), cached likewise."""
    key = (*backend.key(), "own", sampler_id, schedule.name, steps)
    if (ref := cached(key, verify, store)) is not None:
        return key, ref
    t0, calls, out = time.perf_counter(), 0, {}
    for n in ([steps, steps // 2] if verify else [steps]):
        counter: dict = {}
        out[n] = backend.run(counted(sampler_fn(sampler_id), counter), backend.sigmas(schedule.name, n), progress)
        calls += counter["calls"]
    ref = Reference(out[steps], f"{REGISTRY[sampler_id].name} at {steps} steps ({schedule.name}), same seed",
                    calls, time.perf_counter() - t0, relative_error(out[steps // 2], out[steps]) if verify else None)
    remember(key, ref, store)
    return key, ref


# ----------------------------------------------------------------------------------------------- the sweep

def plan(samplers: Sequence[str], schedules: Sequence[Schedule], steps: Sequence[int]) -> list[tuple[str, Schedule, int]]:
    """The cells in order: sampler-major, then schedule, then step count (a given sigma list: its own count)."""
    out = []
    for sid in samplers:
        for sch in schedules:
            for n in ([sch.fixed_steps] if sch.fixed_steps is not None else steps):
                out.append((sid, sch, n))
    return out


def sweep(backend: Backend, samplers: Sequence[str], schedules: Sequence[Schedule], steps: Sequence[int],
          verify_reference: bool = False, on_cell: Callable[[Cell, int, int], None] | None = None,
          on_step: Callable[[], None] | None = None, on_call: Callable[[], None] | None = None,
          sampler_fns: dict[str, Fn] | None = None, store: Path | None = None) -> SweepResult:
    """Run every cell, then measure each against its reference.

    `on_cell(cell, k, n)` after each run (previews), `on_step()` after each sampler step and each
    reference step (progress), `on_call()` before each model call (interrupt). `sampler_fns` adds samplers
    that are not in the registry (ComfyUI SAMPLER inputs) by name. `store`: a folder where references are also
    kept and looked for (see STORE_LIMIT)."""
    extra = dict(sampler_fns or {})
    for sid in samplers:
        if sid not in REGISTRY and sid not in extra:
            raise LabError(f"samplers: unknown sampler {sid!r}; known: {', '.join([*REGISTRY, *extra])}")
    if not samplers:
        raise LabError("samplers: the list is empty")
    if not schedules:
        raise LabError("schedules: the list is empty")
    if not steps and any(s.fixed_steps is None for s in schedules):
        raise LabError("steps: the list is empty")
    t_start = time.perf_counter()
    step_cb = (lambda _payload: on_step()) if on_step is not None else None
    cells: list[Cell] = []
    todo = plan(samplers, schedules, steps)
    for k, (sid, sch, n) in enumerate(todo):
        sigmas = sch.sigmas if sch.sigmas is not None else backend.sigmas(sch.name, n)
        counter: dict = {}
        fn = counted(extra.get(sid) or sampler_fn(sid), counter, on_call)
        t0 = time.perf_counter()
        latent = backend.run(fn, sigmas, step_cb)
        cell = Cell(sid, sch.name, n, counter["calls"], time.perf_counter() - t0,
                    against=against(REGISTRY[sid]) if sid in REGISTRY else Against.ODE, latent=latent)
        cells.append(cell)
        if on_cell is not None:
            on_cell(cell, k, len(todo))
    t_refs = time.perf_counter()
    references: dict[tuple, Reference] = {}
    before = dict(REFERENCE_CACHE)  # what earlier sweeps solved
    biggest = max(steps) if steps else 1
    for cell, (sid, sch, n) in zip(cells, todo):
        if cell.against == Against.OWN:
            key, ref = own_reference(backend, sid, sch, OWN_REFERENCE_FACTOR * max(biggest, n), verify_reference, step_cb, store)
        else:
            sigmas = sch.sigmas if sch.sigmas is not None else backend.sigmas(sch.name, n)
            key, ref = ode_reference(backend, sigmas, verify_reference, step_cb, store)
        references[key] = ref
        cell.error = relative_error(cell.latent, ref.latent)
    t_end = time.perf_counter()
    return SweepResult(cells, references, t_end - t_start, t_end - t_refs, list(samplers), list(schedules), list(steps),
                       reused={key for key, ref in references.items() if before.get(key) is ref or ref.stored})


def expected_progress(backend: Backend, samplers, schedules, steps, verify_reference: bool = False) -> int:
    """Progress units of a sweep (sampler steps + reference grid steps), for a progress bar's total."""
    total = sum(n for _, _, n in plan(samplers, schedules, steps))
    for sch in schedules:
        s = sch.sigmas if sch.sigmas is not None else backend.sigmas(sch.name, max(steps) if steps else 1)
        pos = [float(v) for v in s if v > 0]
        total += (reference_calls(pos[0], pos[-1], backend.model_sigmas) // 2) * (3 if verify_reference else 1)
    return total
