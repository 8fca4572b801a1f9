"""Run a registered sampler: fill in its options, and catch a model that returns NaN or inf.

`run_sampler` is what the node layer wraps into a ComfyUI KSAMPLER. It adds two things to a bare
sampler call:

- options: the registry entry's defaults, then the caller's options, then the entry's
  `fixed_options` (the pinned variant, e.g. solver_type="heun"), so every sampler is called the
  same way whatever it takes;
- a clear error when the model's output stops being finite: `NonFiniteError` names the sampler
  (its document name), the step and the sigma. Checking costs no host-device sync per step: each
  model call only records whether its output is all finite, as a device tensor; the step index
  is counted on the host from the callbacks; all flags are read once, at the end (or every
  `check_every` steps where the caller asks for earlier failure).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from .registry import REGISTRY, SamplerInfo, check_options


class NonFiniteError(FloatingPointError):
    """The model (or the sampler) produced NaN or inf while sampling."""

    def __init__(self, message: str, sampler: str, step: int | None = None, sigma: float | None = None):
        super().__init__(message)
        self.sampler, self.step, self.sigma = sampler, step, sigma


def finite_probe(t: torch.Tensor) -> torch.Tensor:
    """A 0-d device tensor that is finite exactly when every element of t is. Not read here: no host sync.

    NaN and inf propagate through a sum (unless a finite sum overflows: accumulating in at least
    float32 that takes values beyond ~1e33 in a latent, a broken model anyway). One read of t, 5x
    cheaper than isfinite(t).all(), which writes a bool tensor first; isfinite is applied once, to
    all probes together, when they are read.
    """
    return t.sum(dtype=torch.promote_types(t.dtype, torch.float32))


class _FiniteWatch:
    """Wraps the model and the callback; records per model call (device flag, sigma, step index).

    Steps are counted by callbacks: a model call made before callback i is attributed to step i.
    Samplers that evaluate twice per step (Heun, DPM-2, ...) make their second call after the
    callback, so it is reported under step i+1 — whose start sigma it is evaluated at; the sigma
    in the message is always the exact one the model was given.
    """

    def __init__(self, info: SamplerInfo, model: Callable, callback: Callable | None, n_steps: int, check_every: int | None,
                 suspects: str = ""):
        self.info, self.model, self.user_callback, self.suspects = info, model, callback, suspects
        self.n_steps, self.check_every = n_steps, check_every
        self.steps_done = 0
        self.flags: list[torch.Tensor] = []
        self.sigmas: list[torch.Tensor] = []
        self.steps: list[int] = []
        self.checked = 0  # flags[:checked] are known to be finite

    def __call__(self, x, sigma, **kwargs):
        denoised = self.model(x, sigma, **kwargs)
        self.flags.append(finite_probe(denoised))
        self.sigmas.append(sigma)
        self.steps.append(min(self.steps_done, max(self.n_steps - 1, 0)))
        return denoised

    def callback(self, payload: dict) -> None:
        self.steps_done += 1
        if self.user_callback is not None:
            self.user_callback(payload)
        if self.check_every and self.steps_done % self.check_every == 0:
            self.check()

    def __getattr__(self, name: str) -> Any:
        # Samplers that read attributes of the model they are given (core-style wrappers) still see them.
        return getattr(self.__dict__["model"], name)

    def check(self, result: torch.Tensor | None = None) -> None:
        """Read the flags not yet read (one host sync); raise on the first non-finite model output.

        `result`, the sampler's output, is checked in the same sync: non-finite there with every
        model output finite means the sampler itself broke.
        """
        pending = self.flags[self.checked :] + ([finite_probe(result)] if result is not None else [])
        finite = torch.stack(pending).isfinite() if pending else None
        if finite is None or bool(finite.all()):
            self.checked = len(self.flags)
            return
        bad = self.checked + int((~finite).nonzero()[0, 0])
        who = f"sampler {self.info.name!r} ({self.info.id})"
        if bad == len(self.flags):
            raise NonFiniteError(f"{who} produced a non-finite result although every model output was finite{self.suspects}", self.info.name)
        sigma, step = float(torch.as_tensor(self.sigmas[bad]).reshape(-1)[0]), self.steps[bad]
        raise NonFiniteError(
            f"{who}: the model returned NaN/inf at step {step} of {self.n_steps} (model call {bad}, sigma={sigma:.6g}){self.suspects}",
            sampler=self.info.name,
            step=step,
            sigma=sigma,
        )


def resolve(info_or_id: SamplerInfo | str) -> SamplerInfo:
    if isinstance(info_or_id, SamplerInfo):
        return info_or_id
    try:
        return REGISTRY[info_or_id]
    except KeyError:
        raise KeyError(f"unknown sampler {info_or_id!r}; registered: {', '.join(sorted(REGISTRY))}") from None


def sampler_kwargs(info: SamplerInfo, options: dict) -> dict:
    """Defaults < caller's options < the entry's pinned options; a caller may not contradict a pin."""
    for name, value in options.items():
        if name in info.fixed_options and value != info.fixed_options[name]:
            raise ValueError(f"sampler {info.name!r} pins {name}={info.fixed_options[name]!r}; got {value!r}")
    check_options(info, options)
    return {**info.defaults(), **options, **info.fixed_options}


def changed_options(info: SamplerInfo, kwargs: dict) -> str:
    """The options away from their defaults, named in a non-finite error: the likely cause when a sampler
    diverges with extreme settings (e.g. s_noise=100), where no domain rule can say so beforehand."""
    changed = [f"{o.name}={kwargs[o.name]!r}" for o in info.options
               if o.name in kwargs and o.name not in info.fixed_options and kwargs[o.name] != o.default]
    return f"; options away from their defaults: {', '.join(changed)}" if changed else "; all options at their defaults"


def run_sampler(
    info_or_id: SamplerInfo | str,
    model: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Callable | None = None,
    disable: bool | None = None,
    check_every: int | None = None,
    **options,
) -> torch.Tensor:
    """Call a registered sampler with its defaults and pinned options; raise `NonFiniteError` on NaN/inf.

    `check_every=k` reads the finiteness flags every k steps (one sync each) to stop early; the
    default None reads them once, after the last step. Options not in the registry entry (such as
    `noise_sampler`) pass through to the sampler function unchanged.
    """
    info = resolve(info_or_id)
    kwargs = sampler_kwargs(info, options)
    watch = _FiniteWatch(info, model, callback, n_steps=max(len(sigmas) - 1, 0), check_every=check_every,
                         suspects=changed_options(info, kwargs))
    try:
        out = info.fn(watch, x, sigmas, extra_args=extra_args, callback=watch.callback, disable=disable, **kwargs)
    except NonFiniteError:
        raise
    except Exception as error:  # a sampler may fail *because* of NaN (e.g. in a solve): report that cause
        try:
            watch.check()
        except NonFiniteError as nonfinite:
            raise nonfinite from error
        raise
    watch.check(result=out)
    return out
