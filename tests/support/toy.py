"""A nonlinear toy denoiser and the wrapper object core's samplers expect (for parity tests)."""
from __future__ import annotations

from types import SimpleNamespace

import torch


def toy_denoiser(x, sigma, **extra_args):
    """A smooth nonlinear x0 prediction (Gaussian-data denoiser plus a bounded nonlinear term)."""
    sigma = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return 0.3 + (x - 0.3) * 0.25 / (0.25 + sigma**2) + 0.2 * torch.sin(x) / (1 + sigma)


def core_model(comfy, fn=toy_denoiser):
    """The model object core's samplers expect: callable, with the model_sampling they reach through
    `model.inner_model.model_patcher.get_model_object('model_sampling')` (SDE samplers) and
    `model.inner_model.inner_model.model_sampling` (2S ancestral): SD's discrete EPS sampling."""
    class EpsSampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
        pass

    sampling = EpsSampling()
    model = SimpleNamespace(inner_model=SimpleNamespace(inner_model=SimpleNamespace(model_sampling=sampling),
                                                        model_patcher=SimpleNamespace(get_model_object=lambda name: sampling)))

    class Model:
        inner_model = model.inner_model

        def __call__(self, x, sigma, **extra_args):
            return fn(x, sigma, **extra_args)

    return Model()
