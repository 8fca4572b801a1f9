"""Reading a picture of the embedded model against its prompt: which colour is the background, where
the named shape colour is. Shared by the pure prompt-control tests and the server tests.

Every pixel is named by its nearest palette colour (`embedded.data.COLOURS`, at least ~90 apart in
RGB, so a pixel within ~45 of a palette colour gets that name). A picture `obeys` a caption when
- background: the named background colour is the commonest name and covers at least half the
  pixels (a true picture: 83% or more, the largest shape covers 17%);
- shape: the pixels named with the shape's colour cover at least a third of the shape's true area
  and at least 80% of them lie in the named region (the quadrant, or the central 32x32 box, that
  holds the true shape whatever its jitter; `tests/pure/test_embedded.py` checks that on the data).
`agreement` is continuous: the share of pixels whose name equals the name of the same pixel in the
caption's own rendering (the data generator's picture, jitter 0); 1 for a perfect picture.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from diffusion_anatomy.embedded import data as ed
from diffusion_anatomy.embedded.sample import to_rgb  # noqa: F401  (the tests' way from a decoded image to PNG pixels)

REGIONS = {  # (x range, y range) of each named position, pixels
    "top left": ((0, 32), (0, 32)),
    "top right": ((32, 64), (0, 32)),
    "bottom left": ((0, 32), (32, 64)),
    "bottom right": ((32, 64), (32, 64)),
    "centre": ((16, 48), (16, 48)),
}
NAMES = list(ed.COLOURS)
PALETTE = torch.tensor([ed.COLOURS[n] for n in NAMES], dtype=torch.float32)


def caption(parts: tuple[str, str, str, str, str]) -> ed.Caption:
    """A Caption at its position's exact centre from (shape, colour, size, position, background)."""
    shape, colour, size, position, background = parts
    return ed.Caption(shape, colour, size, position, background, ed.POSITIONS[position])


def names(rgb: torch.Tensor) -> torch.Tensor:
    """[H, W] palette indices of an [H, W, 3] RGB image in 0..255 (a PNG's pixels)."""
    h, w, _ = rgb.shape
    return torch.cdist(rgb.float().reshape(-1, 3), PALETTE).argmin(dim=1).reshape(h, w)


@dataclass
class Reading:
    background: str  # the commonest colour name
    background_share: float  # share of pixels named with the caption's background
    shape_area: float  # pixels named with the caption's shape colour, over the true shape's area
    in_region: float  # share of those inside the named region
    agreement: float  # share of pixels named as in the caption's own rendering

    def background_ok(self, cap: ed.Caption) -> bool:
        return self.background == cap.background and self.background_share >= 0.5

    @property
    def shape_ok(self) -> bool:
        return self.shape_area >= 1 / 3 and self.in_region >= 0.8

    def obeys(self, cap: ed.Caption) -> bool:
        return self.background_ok(cap) and self.shape_ok


def read(rgb: torch.Tensor, cap: ed.Caption) -> Reading:
    """Read an [H, W, 3] 0..255 picture against its caption."""
    label = names(rgb)
    counts = torch.bincount(label.flatten(), minlength=len(NAMES))
    commonest = NAMES[int(counts.argmax())]
    total = label.numel()
    shape = label == NAMES.index(cap.colour)
    (x0, x1), (y0, y1) = REGIONS[cap.position]
    n_shape = int(shape.sum())
    inside = int(shape[y0:y1, x0:x1].sum())
    truth = names(to_rgb(ed.render(cap)))
    area = float(ed.shape_mask(cap).sum())
    return Reading(commonest, float(counts[NAMES.index(cap.background)]) / total, n_shape / area,
                   inside / n_shape if n_shape else 0.0, float((label == truth).float().mean()))


def parse(text: str) -> ed.Caption:
    """The Caption of a prompt written as the data set writes them ("a large red circle at the top
    left on a blue background"), at its position's exact centre; ValueError for any other prompt."""
    for cap in (caption((sh, c, sz, pos, bg)) for sh in ed.SHAPES for c in ed.COLOURS for sz in ed.SIZES
                for pos in ed.POSITIONS for bg in ed.COLOURS if bg != c):
        if cap.text == text.strip():
            return cap
    raise ValueError(f"not a caption of the embedded model's data: {text!r}")
