"""The judged metrics of the sampler lab (lab/judged.py) on the world's own renders, blurred and noised.

Renders are the exact pictures of their captions, so each metric has a known value there: adherence 1,
sharpness 1, Fréchet distance 0 against other renders of the same captions (new jitter) within its
sampling error. Degrading them must move each metric the way its definition says.
"""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from diffusion_anatomy.embedded.data import JITTER, POSITIONS, Caption, sample_captions
from diffusion_anatomy.embedded.judge import degrade
from diffusion_anatomy.lab import judged
from diffusion_anatomy.lab.judged_sweep import eval_captions


def rejittered(captions, seed):
    """The same attributes, each centre drawn again (another render of the same caption)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for c in captions:
        x, y = POSITIONS[c.position]
        j = ((torch.rand(2, generator=g) * 2 - 1) * JITTER).tolist()
        out.append(Caption(c.shape, c.colour, c.size, c.position, c.background, (x + j[0], y + j[1])))
    return out


@pytest.fixture(scope="module")
def world():
    captions = sample_captions(200, torch.Generator().manual_seed(123))
    other = rejittered(captions, 5)
    return captions, judged.renders(captions), judged.renders(other)


def test_adherence_of_renders_is_one():
    captions = eval_captions(40)
    flags = judged.right_flags(judged.renders(captions), captions)
    shares = judged.adherence(flags)
    assert all(s.k == s.n == 40 for s in shares.values()), shares
    assert shares["all"].hi == 1.0 and 0.9 < shares["all"].lo < 1.0  # Wilson: 40 of 40 still allows ~9% misses
    wrong = [replace(c, shape="square" if c.shape != "square" else "circle") for c in captions[:5]]
    assert judged.adherence(judged.right_flags(judged.renders(captions[:5]), wrong))["shape"].k == 0


def test_sharpness_is_one_on_renders_and_falls_with_blur(world):
    captions, pictures, _ = world
    few = slice(0, 30)
    on_renders = [judged.sharpness(p, c) for p, c in zip(pictures[few], captions[few])]
    assert all(abs(v - 1) < 1e-5 for v in on_renders), on_renders
    means = []
    for blur in (0.3, 0.5, 1.0, 1.5, 2.0, 3.0):
        values = [judged.sharpness(p, c) for p, c in zip(degrade(pictures[few], blur=blur), captions[few])]
        assert all(math.isfinite(v) for v in values)
        means.append(sum(values) / len(values))
        if len(means) > 1:  # every picture, not only the mean, is less sharp than at the smaller blur
            assert max(values) < 1.0
    assert all(a > b for a, b in zip(means, means[1:])), means
    assert means[-1] < 0.2  # a 3-px blur spreads the unit step over ~7 pairs


def test_sharpness_tolerates_the_jitter_and_says_when_there_is_no_object(world):
    """Measured at the named position's centre (a prompt says no jitter) a render drawn up to 2 px off still reads
    within 5% of 1 (pixel rounding changes the outline's pair count by a few of its ~100)."""
    captions, pictures, _ = world
    named = [judged.sharpness(p, c, centre=POSITIONS[c.position]) for p, c in zip(pictures[:30], captions[:30])]
    assert all(0.95 < v <= 1 + 1e-5 for v in named), named
    blank = torch.full((3, 64, 64), 0.2)
    assert math.isnan(judged.sharpness(blank, captions[0]))


def test_frechet_of_renders_against_renders_is_zero_within_its_error(world):
    _, pictures, other = world
    d = judged.frechet_bootstrap(judged.features(other), judged.features(pictures), resamples=50)
    assert d.n == 200 and d.error > 0
    assert abs(d.value) < 3 * d.error, d  # 3 standard errors: a false alarm in about 1 run of 400
    assert judged.frechet(judged.features(pictures), judged.features(pictures)) == pytest.approx(0, abs=1e-9)


def test_frechet_grows_with_blur_and_noise(world):
    _, pictures, other = world
    ref = judged.features(pictures)
    g = torch.Generator().manual_seed(9)
    base = judged.frechet_bootstrap(judged.features(other), ref, resamples=25)  # 25 resamples: the error to ~15%, enough here
    for kind, levels in (("blur", (0.5, 1.0, 2.0)), ("noise", (0.05, 0.1, 0.2))):
        last = base
        for level in levels:
            d = judged.frechet_bootstrap(judged.features(degrade(other, **{kind: level}, generator=g)), ref, resamples=25)
            assert d.value - last.value > 2 * math.hypot(d.error, last.error), (kind, level, d, last)
            last = d


def test_frechet_needs_enough_pictures(world):
    _, pictures, _ = world
    f = judged.features(pictures)
    with pytest.raises(ValueError, match="at least 128"):
        judged.frechet_bootstrap(f[:50], f[:50])


def test_ranks_tie_overlapping_intervals_and_rank_everyone():
    intervals = {"a": (0.8, 0.9), "b": (0.75, 0.85), "c": (0.5, 0.6), "d": (0.1, 0.7)}
    assert judged.ranks(intervals) == {"a": 1, "b": 1, "c": 3, "d": 3}
    # lower is better (a distance): the same intervals mirrored
    assert judged.ranks(intervals, higher_is_better=False) == {"a": 3, "b": 3, "c": 1, "d": 1}


def test_the_nodes_judged_columns_and_why_they_are_absent():
    """The Sampler Lab node's columns (lab/judged.py `judged_columns`), on renders given as ComfyUI IMAGEs."""
    captions = eval_captions(1)
    caption = captions[0]
    image = ((judged.renders(captions) + 1) / 2).permute(0, 2, 3, 1)  # [1, 64, 64, 3] in 0..1
    rows, why = judged.judged_columns([image, image.repeat(3, 1, 1, 1)], caption.text)
    assert why == "" and [r["adherence"]["all"].n for r in rows] == [1, 3] and all(r["adherence"]["all"].k == r["adherence"]["all"].n for r in rows)
    assert all(0.95 < r["sharpness"] <= 1 + 1e-5 for r in rows)
    big = torch.zeros(1, 512, 512, 3)
    assert judged.judged_columns([big], caption.text)[1].startswith("the pictures are 512x512")
    assert "not a prompt of the embedded world" in judged.judged_columns([image], "a photo of a cat")[1]
