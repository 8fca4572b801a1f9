"""Procedural captioned images: one coloured shape on a plain background, 64x64 RGB.

"a small red circle at the top left on a blue background": shape (circle, square, triangle), eight
colours, two sizes, five positions, a background colour different from the shape's. Every image is
drawn from its `Caption` alone (`render`), so the attributes are the ground truth of the pixels and
tests can check them (`shape_mask`). Random choices come from a `torch.Generator`: the same seed
gives the same batch on every machine.

The drawing is plain torch on a grid of pixel centres (hard edges, no anti-aliasing): the mask of a
shape is a set of inequalities in (x, y), so the region a caption names is exact.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

SIZE = 64  # image side, pixels

# Distinct RGB values (0..255), far apart so that every colour word is unambiguous in pixels.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 225, 40),
    "orange": (245, 135, 20),
    "purple": (140, 40, 180),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle")
SIZES: dict[str, float] = {"small": 7.0, "large": 13.0}  # "radius": half the shape's extent, pixels
# Centre of each named position; a quadrant's centre is 16 px from two edges, so a large shape
# (radius 13) plus the jitter stays inside its quadrant.
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (16.0, 16.0),
    "top right": (48.0, 16.0),
    "bottom left": (16.0, 48.0),
    "bottom right": (48.0, 48.0),
    "centre": (32.0, 32.0),
}
JITTER = 2.0  # the centre moves by up to this many pixels in x and y, uniformly


@dataclass(frozen=True)
class Caption:
    """The attributes of one image; `text` is its prompt, `centre`/`radius` its exact layout (pixels)."""

    shape: str
    colour: str
    size: str
    position: str
    background: str
    centre: tuple[float, float]  # (x, y) of the shape's centre, x to the right, y down

    @property
    def radius(self) -> float:
        return SIZES[self.size]

    @property
    def text(self) -> str:
        where = "in the centre" if self.position == "centre" else f"at the {self.position}"
        return f"a {self.size} {self.colour} {self.shape} {where} on a {self.background} background"


def _grid() -> tuple[torch.Tensor, torch.Tensor]:
    """x, y of the pixel centres, [SIZE, SIZE] each (row = y)."""
    c = torch.arange(SIZE, dtype=torch.float32) + 0.5
    return c[None, :].expand(SIZE, SIZE), c[:, None].expand(SIZE, SIZE)


def shape_mask(caption: Caption) -> torch.Tensor:
    """[SIZE, SIZE] bool: the pixels the shape covers (see `mask_of`)."""
    return mask_of(caption.shape, caption.centre, caption.radius)


def mask_of(shape: str, centre: tuple[float, float], radius: float) -> torch.Tensor:
    """[SIZE, SIZE] bool: the pixels whose centres a shape of this family, centre and "radius" covers.

    circle: disc of the radius; square: axis-aligned, half side 0.9 * radius (similar area to the
    disc's); triangle: pointing up, apex `radius` above the centre, base 0.8 * radius below it,
    half base width = radius. Any real centre and radius (the judge fits them to pictures)."""
    x, y = _grid()
    cx, cy = centre
    r = radius
    if shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= r**2
    if shape == "square":
        return ((x - cx).abs() <= 0.9 * r) & ((y - cy).abs() <= 0.9 * r)
    if shape == "triangle":
        top, bottom = cy - r, cy + 0.8 * r
        half_width = r * (y - top) / (bottom - top)  # grows linearly from 0 at the apex to r at the base
        return (y >= top) & (y <= bottom) & ((x - cx).abs() <= half_width)
    raise ValueError(f"unknown shape {shape!r}")


def render(caption: Caption) -> torch.Tensor:
    """[3, SIZE, SIZE] float32 image in [-1, 1]."""
    background = torch.tensor(COLOURS[caption.background], dtype=torch.float32)
    colour = torch.tensor(COLOURS[caption.colour], dtype=torch.float32)
    mask = shape_mask(caption)
    pixels = torch.where(mask[None], colour[:, None, None], background[:, None, None])
    return pixels / 127.5 - 1.0


def sample_captions(n: int, generator: torch.Generator) -> list[Caption]:
    """n random captions: each attribute uniform, the background uniform over the other seven colours."""
    names = list(COLOURS)
    shape = torch.randint(len(SHAPES), (n,), generator=generator).tolist()
    colour = torch.randint(len(names), (n,), generator=generator).tolist()
    # an offset of 1..7 around the colour wheel: uniform over the colours that differ from the shape's
    offset = torch.randint(1, len(names), (n,), generator=generator).tolist()
    size = torch.randint(len(SIZES), (n,), generator=generator).tolist()
    position = torch.randint(len(POSITIONS), (n,), generator=generator).tolist()
    jitter = ((torch.rand(n, 2, generator=generator) * 2 - 1) * JITTER).tolist()
    sizes, positions = list(SIZES), list(POSITIONS)
    out = []
    for i in range(n):
        px, py = POSITIONS[positions[position[i]]]
        out.append(Caption(
            shape=SHAPES[shape[i]],
            colour=names[colour[i]],
            size=sizes[size[i]],
            position=positions[position[i]],
            background=names[(colour[i] + offset[i]) % len(names)],
            centre=(px + jitter[i][0], py + jitter[i][1]),
        ))
    return out


def all_captions(jitter: tuple[float, float] = (0.0, 0.0)) -> list[Caption]:
    """Every caption of the world (3 x 8 x 7 x 2 x 5 = 1680), each centre moved by `jitter` px."""
    return [Caption(shape, colour, size, position, background, (x + jitter[0], y + jitter[1]))
            for shape in SHAPES for colour in COLOURS for size in SIZES for position, (x, y) in POSITIONS.items()
            for background in COLOURS if background != colour]


def _key(c: Caption) -> tuple[str, str, str, str, str]:
    return c.shape, c.colour, c.size, c.position, c.background


# One caption in ten, fixed by a seeded permutation, never trained on: what the model is judged on
# (models trained before the split, such as the first shipped one, saw every caption).
HELD_OUT: frozenset[tuple[str, str, str, str, str]] = frozenset(
    _key(all_captions()[i]) for i in torch.randperm(1680, generator=torch.Generator().manual_seed(20))[:168].tolist())


def is_held_out(caption: Caption) -> bool:
    return _key(caption) in HELD_OUT


def training_captions(n: int, generator: torch.Generator) -> list[Caption]:
    """n random captions as `sample_captions` draws them, redrawing any held-out one."""
    out = [c for c in sample_captions(n, generator) if not is_held_out(c)]
    while len(out) < n:
        out += [c for c in sample_captions(n - len(out), generator) if not is_held_out(c)]
    return out


def eval_captions(n: int, generator: torch.Generator, held_out_only: bool = True) -> list[Caption]:
    """n captions drawn uniformly from the held-out set (or from all captions), each with a fresh jitter."""
    pool = sorted(HELD_OUT) if held_out_only else [_key(c) for c in all_captions()]
    pick = torch.randint(len(pool), (n,), generator=generator).tolist()
    jitter = ((torch.rand(n, 2, generator=generator) * 2 - 1) * JITTER).tolist()
    out = []
    for j, (dx, dy) in zip(pick, jitter):
        shape, colour, size, position, background = pool[j]
        x, y = POSITIONS[position]
        out.append(Caption(shape, colour, size, position, background, (x + dx, y + dy)))
    return out


def sample_batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, list[str], list[Caption]]:
    """(images [n, 3, 64, 64] in [-1, 1], prompts, attributes), reproducible from the generator's state."""
    captions = sample_captions(n, generator)
    images = torch.stack([render(c) for c in captions])
    return images, [c.text for c in captions], captions
