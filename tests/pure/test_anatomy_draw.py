"""anatomy/draw.py: tick values, tensor<->picture round trip, layouts that hold what they are given."""
from __future__ import annotations

import math

import torch

from diffusion_anatomy.anatomy import draw


def test_nice_ticks_are_round_and_cover_the_range():
    ticks = draw.nice_ticks(0.03, 14.6)
    assert ticks[0] <= 0.03 and ticks[-1] >= 14.6 and ticks[1] > 0.03 and ticks[-2] < 14.6
    steps = {round(b - a, 9) for a, b in zip(ticks, ticks[1:])}
    assert len(steps) == 1 and steps.pop() in (1, 2, 2.5, 5)


def test_log_ticks_are_powers_of_ten():
    assert draw.log_ticks(0.0029, 14.6) == [0.01, 0.1, 1.0, 10.0]
    assert draw.log_ticks(0.1, 14.6) == [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0]
    for t in draw.log_ticks(0.001, 100):
        assert math.isclose(math.log10(t), round(math.log10(t)))


def test_image_round_trip_is_exact_on_8_bit_values():
    image = torch.randint(0, 256, (1, 5, 7, 3)).float() / 255
    assert torch.equal(draw.to_image_batch(draw.to_pil(image)), image)


def test_upscale_keeps_pixels_as_squares():
    image = torch.rand(1, 4, 4, 3)
    big = draw.to_image_batch(draw.upscale(draw.to_pil(image), min_side=16))
    assert big.shape == (1, 16, 16, 3)
    assert torch.equal(big[:, ::4, ::4], draw.to_image_batch(draw.to_pil(image)))


def test_grid_places_each_picture_where_asked():
    red = draw.to_pil(torch.tensor([1.0, 0, 0]).expand(10, 10, 3))
    blue = draw.to_pil(torch.tensor([0, 0, 1.0]).expand(10, 10, 3))
    out = draw.to_image_batch(draw.grid([[red, blue]], row_labels=["r"], col_labels=["a", "b"]))[0]
    reds = (out[..., 0] > 0.9) & (out[..., 2] < 0.1)
    blues = (out[..., 2] > 0.9) & (out[..., 0] < 0.1)
    assert reds.sum() == 100 and blues.sum() == 100
    assert reds.nonzero()[:, 1].max() < blues.nonzero()[:, 1].min()  # red column left of the blue one


def test_line_plot_draws_each_series_in_its_colour():
    a, b = draw.Series([1, 2, 3], label="a"), draw.Series([3, 2, 1], label="b")
    out = draw.to_image_batch(draw.line_plot([a, b], draw.Axis("x"), draw.Axis("y", log=True)))[0]
    for colour in draw.PALETTE[:2]:
        match = (out * 255 - torch.tensor(colour)).abs().sum(-1) < 3
        assert match.sum() > 50
