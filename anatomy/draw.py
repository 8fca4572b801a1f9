"""Drawing primitives for the anatomy views: labels, nearest upscaling, labelled grids, tables, line plots.

Everything draws with Pillow (ComfyUI ships it) and Pillow's own default font, so no font file is
bundled. Pictures are `PIL.Image` in RGB while drawing; `to_image_batch` turns the finished picture
into ComfyUI's IMAGE layout ([B, H, W, 3], floats in 0..1) at the end.

The embedded model draws 64x64 pictures: `upscale` enlarges them with nearest-neighbour (each pixel a
crisp square) so labels drawn beside them stay readable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import torch
from einops import rearrange
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MUTED = (110, 110, 110)
GRIDLINE = (225, 225, 225)
# Colour-blind-safe series colours (Okabe & Ito, "Color Universal Design", 2008).
PALETTE = ((0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233), (240, 228, 66), (0, 0, 0))
FONT_SIZE = 14


# --------------------------------------------------------------------------- fonts and text

@lru_cache(maxsize=16)
def font(size: int = FONT_SIZE) -> ImageFont.ImageFont:
    """Pillow's built-in font at `size` pixels (a scalable font from Pillow 10.1 with FreeType, else the fixed bitmap one)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, AttributeError, OSError):  # older Pillow or no FreeType: the fixed-size bitmap font
        return ImageFont.load_default()


def text_size(text: str, size: int = FONT_SIZE) -> tuple[int, int]:
    """Width and height in pixels of `text` (several lines allowed) in the default font."""
    lines = text.split("\n") or [""]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widths = [probe.textlength(line, font=font(size)) for line in lines]
    return math.ceil(max(widths)), line_height(size) * len(lines)


def line_height(size: int = FONT_SIZE) -> int:
    return round(size * 1.3)


def draw_text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, size: int = FONT_SIZE,
              fill=INK, anchor: str = "la") -> None:
    """Text at `xy`; `anchor` as Pillow's: first letter l/m/r (left/middle/right), second a/m/d (top/middle/bottom).

    Multi-line text is drawn line by line so the anchor works with every Pillow version."""
    lines = text.split("\n")
    h = line_height(size)
    x, y = xy
    if anchor[1] == "m":
        y -= h * len(lines) / 2
    elif anchor[1] == "d":
        y -= h * len(lines)
    for k, line in enumerate(lines):
        draw.text((x, y + k * h + h / 2), line, font=font(size), fill=fill, anchor=anchor[0] + "m")


def text_block(text: str, size: int = FONT_SIZE, pad: int = 4, fill=INK, background=BACKGROUND) -> Image.Image:
    """A picture holding only `text`."""
    w, h = text_size(text, size)
    img = Image.new("RGB", (w + 2 * pad, h + 2 * pad), background)
    draw_text(ImageDraw.Draw(img), (pad, pad), text, size, fill)
    return img


# --------------------------------------------------------------------------- tensors <-> pictures

def to_pil(image: torch.Tensor) -> Image.Image:
    """One ComfyUI image ([H, W, 3] or [1, H, W, 3], 0..1) or a grey map ([H, W], 0..1) as a PIL picture."""
    image = image.detach().float().cpu()
    if image.ndim == 4:
        if image.shape[0] != 1:
            raise ValueError(f"to_pil takes one image, got a batch of {image.shape[0]}")
        image = image[0]
    if image.ndim == 2:
        image = image[..., None].expand(-1, -1, 3)
    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return Image.fromarray(pixels)  # uint8 [H, W, 3] is RGB


def to_image_batch(picture: Image.Image) -> torch.Tensor:
    """A PIL picture as a ComfyUI IMAGE batch of one: [1, H, W, 3], float32 in 0..1."""
    pixels = torch.frombuffer(bytearray(picture.convert("RGB").tobytes()), dtype=torch.uint8)
    return rearrange(pixels, "(b h w c) -> b h w c", b=1, h=picture.height, w=picture.width, c=3).float() / 255.0


def grey(values: torch.Tensor, lo: float | None = None, hi: float | None = None) -> Image.Image:
    """A 2-D map as a grey picture, `lo` black and `hi` white (the map's own min and max by default)."""
    values = values.detach().float().cpu()
    lo = float(values.min()) if lo is None else lo
    hi = float(values.max()) if hi is None else hi
    return to_pil((values - lo) / (hi - lo if hi > lo else 1.0))


def upscale(picture: Image.Image, min_side: int = 128, max_factor: int = 16) -> Image.Image:
    """Enlarge by a whole factor with nearest-neighbour until the shorter side reaches `min_side`."""
    factor = max(1, min(max_factor, math.ceil(min_side / max(1, min(picture.size)))))
    if factor == 1:
        return picture
    return picture.resize((picture.width * factor, picture.height * factor), Image.NEAREST)


def fit(picture: Image.Image, side: int) -> Image.Image:
    """Scale so the longer side is `side`: nearest when enlarging (crisp pixels), Lanczos when shrinking."""
    scale = side / max(picture.size)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    return picture.resize(size, Image.NEAREST if scale >= 1 else Image.LANCZOS)


# --------------------------------------------------------------------------- layouts

def caption(picture: Image.Image, text: str, size: int = FONT_SIZE, pad: int = 4) -> Image.Image:
    """`picture` with `text` centred underneath."""
    w, h = text_size(text, size)
    out = Image.new("RGB", (max(picture.width, w + 2 * pad), picture.height + h + 2 * pad), BACKGROUND)
    out.paste(picture, ((out.width - picture.width) // 2, 0))
    draw_text(ImageDraw.Draw(out), (out.width / 2, picture.height + pad), text, size, anchor="ma")
    return out


def grid(cells: Sequence[Sequence[Image.Image | None]], row_labels: Sequence[str] | None = None,
         col_labels: Sequence[str] | None = None, captions: Sequence[Sequence[str]] | None = None,
         title: str | None = None, gap: int = 6, size: int = FONT_SIZE) -> Image.Image:
    """Pictures in rows and columns, with row labels on the left, column labels on top, a caption under
    each cell and a title above everything. A `None` cell stays blank. Cells of one column share a width,
    cells of one row a height (each pasted centred)."""
    rows = len(cells)
    cols = max((len(r) for r in cells), default=0)
    if rows == 0 or cols == 0:
        raise ValueError("grid needs at least one picture")
    cell = [[cells[r][c] if c < len(cells[r]) else None for c in range(cols)] for r in range(rows)]
    cap = [[(captions[r][c] if captions is not None and c < len(captions[r]) else "") for c in range(cols)] for r in range(rows)]
    col_w = [max([p.width for p in (cell[r][c] for r in range(rows)) if p is not None] + [text_size(cap[r][c], size)[0] for r in range(rows)] + [1])
             for c in range(cols)]
    if col_labels is not None:
        col_w = [max(w, text_size(col_labels[c], size)[0]) for c, w in enumerate(col_w)]
    cap_h = [max(text_size(t, size)[1] if t else 0 for t in cap[r]) for r in range(rows)]
    row_h = [max([p.height for p in cell[r] if p is not None] + [1]) for r in range(rows)]
    left = max((text_size(t, size)[0] for t in row_labels), default=0) + gap if row_labels else 0
    top_title = text_size(title, size + 2)[1] + gap if title else 0
    top_cols = max(text_size(t, size)[1] for t in col_labels) + 2 if col_labels else 0
    width = left + sum(col_w) + gap * (cols + 1)
    height = top_title + top_cols + sum(row_h) + sum(cap_h) + gap * (rows + 1)
    out = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(out)
    if title:
        draw_text(draw, (gap, gap / 2), title, size + 2)
    xs = [left + gap + sum(col_w[:c]) + gap * c for c in range(cols)]
    if col_labels:
        for c in range(cols):
            draw_text(draw, (xs[c] + col_w[c] / 2, top_title + gap / 2), col_labels[c], size, anchor="ma")
    y = top_title + top_cols + gap
    for r in range(rows):
        if row_labels:
            draw_text(draw, (gap / 2, y + row_h[r] / 2), row_labels[r], size, anchor="lm")
        for c in range(cols):
            p = cell[r][c]
            if p is not None:
                out.paste(p, (xs[c] + (col_w[c] - p.width) // 2, y + (row_h[r] - p.height) // 2))
            if cap[r][c]:
                draw_text(draw, (xs[c] + col_w[c] / 2, y + row_h[r] + 1), cap[r][c], size, fill=MUTED, anchor="ma")
        y += row_h[r] + cap_h[r] + gap
    return out


def strip(pictures: Sequence[Image.Image], captions: Sequence[str] | None = None, title: str | None = None, **kw) -> Image.Image:
    """One row of pictures with a caption under each."""
    return grid([list(pictures)], captions=[list(captions)] if captions is not None else None, title=title, **kw)


def stack(pictures: Sequence[Image.Image], gap: int = 6, horizontal: bool = False) -> Image.Image:
    """Pictures one below the other (or side by side), left/top aligned, on the background."""
    if horizontal:
        out = Image.new("RGB", (sum(p.width for p in pictures) + gap * (len(pictures) - 1), max(p.height for p in pictures)), BACKGROUND)
        x = 0
        for p in pictures:
            out.paste(p, (x, 0))
            x += p.width + gap
        return out
    out = Image.new("RGB", (max(p.width for p in pictures), sum(p.height for p in pictures) + gap * (len(pictures) - 1)), BACKGROUND)
    y = 0
    for p in pictures:
        out.paste(p, (0, y))
        y += p.height + gap
    return out


def table(header: Sequence[str], rows: Sequence[Sequence[str]], title: str | None = None, size: int = FONT_SIZE,
          pad: int = 5, row_fills: Sequence[tuple | None] | None = None) -> Image.Image:
    """A text table with ruled rows; `row_fills` shades chosen rows (None for the background)."""
    cols = len(header)
    width = [max([text_size(header[c], size)[0]] + [text_size(str(r[c]), size)[0] for r in rows]) + 2 * pad for c in range(cols)]
    h = line_height(size) + 2 * pad
    top = text_size(title, size + 2)[1] + 2 * pad if title else 0
    if title and text_size(title, size + 2)[0] + 2 * pad > sum(width):  # widen the last column so the title fits
        width[-1] += text_size(title, size + 2)[0] + 2 * pad - sum(width)
    out = Image.new("RGB", (sum(width) + 1, top + h * (len(rows) + 1) + 1), BACKGROUND)
    draw = ImageDraw.Draw(out)
    if title:
        draw_text(draw, (pad, pad), title, size + 2)
    xs = [sum(width[:c]) for c in range(cols)]
    draw.rectangle((0, top, out.width - 1, top + h), fill=(235, 240, 248))
    for c in range(cols):
        draw_text(draw, (xs[c] + pad, top + h / 2), header[c], size, anchor="lm")
    for r, row in enumerate(rows):
        y = top + h * (r + 1)
        if row_fills is not None and row_fills[r] is not None:
            draw.rectangle((0, y, out.width - 1, y + h), fill=row_fills[r])
        for c in range(cols):
            draw_text(draw, (xs[c] + pad, y + h / 2), str(row[c]), size, anchor="lm")
        draw.line((0, y, out.width - 1, y), fill=GRIDLINE)
    draw.rectangle((0, top, out.width - 1, out.height - 1), outline=MUTED)
    return out


# --------------------------------------------------------------------------- line plot with real axes

@dataclass
class Series:
    """One line of a plot: y against x, drawn with dots at the points when `markers`."""
    y: Sequence[float]
    x: Sequence[float] | None = None  # 0, 1, 2, ... when None
    label: str = ""
    markers: bool = True
    colour: tuple | None = None
    marker: str = "o"  # o circle, s square, ^ triangle up, v triangle down, D diamond, x cross, + plus (`MARKERS`)

    def points(self) -> list[tuple[float, float]]:
        xs = range(len(self.y)) if self.x is None else self.x
        return [(float(a), float(b)) for a, b in zip(xs, self.y)]


def nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten apart) from at or below lo to at or above hi (Heckbert, "Nice numbers for graph labels", 1990)."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        raise ValueError(f"cannot place ticks on the range {lo}..{hi}")
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, count - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(lo / step + 1e-9) * step  # the first tick at or below lo, the last at or above hi
    ticks = []
    k = 0
    while not ticks or ticks[-1] < hi - step * 1e-9:
        ticks.append(round(first + k * step, 12))
        k += 1
    return ticks


def log_ticks(lo: float, hi: float) -> list[float]:
    """Tick values for a log axis over lo..hi (> 0): the powers of ten, plus 2 and 5 times them over a short range."""
    if lo <= 0:
        raise ValueError(f"a log axis needs positive values, the range starts at {lo}")
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    mults = (1,) if b - a > 3 else (1, 2, 5)
    ticks = [m * 10.0 ** e for e in range(a, b + 1) for m in mults if lo * (1 - 1e-9) <= m * 10.0 ** e <= hi * (1 + 1e-9)]
    return ticks if len(ticks) >= 2 else [lo, hi]


def format_tick(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.0e}"
    return f"{value:.4g}"


@dataclass
class Axis:
    label: str = ""
    log: bool = False
    limits: tuple[float, float] | None = None  # data range drawn; from the series when None
    ticks: Sequence[float] | None = field(default=None)

    def range_of(self, values: list[float]) -> tuple[float, float]:
        if self.limits is not None:
            return self.limits
        vals = [v for v in values if math.isfinite(v) and (v > 0 or not self.log)]
        if not vals:
            raise ValueError(f"axis {self.label!r}: no value to plot" + (" (a log axis drops values <= 0)" if self.log else ""))
        lo, hi = min(vals), max(vals)
        if hi == lo:
            lo, hi = (lo / 2, hi * 2) if self.log else (lo - 0.5, hi + 0.5)
        return lo, hi

    def tick_values(self, lo: float, hi: float) -> list[float]:
        ticks = self.ticks if self.ticks is not None else log_ticks(lo, hi) if self.log else nice_ticks(lo, hi)
        eps = (hi - lo) * 1e-9
        return [t for t in ticks if lo - eps <= t <= hi + eps]

    def scale(self, v: float, lo: float, hi: float) -> float:
        """Position of `v` in 0..1 along the axis."""
        if self.log:
            return (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo))
        return (v - lo) / (hi - lo)


MARKERS = ("o", "s", "^", "v", "D", "x", "+")


def draw_marker(draw: ImageDraw.ImageDraw, x: float, y: float, marker: str, colour, r: float = 3.5) -> None:
    """A point's mark: so that series sharing a colour family stay apart in print and for colour-blind readers."""
    if marker == "s":
        draw.rectangle((x - r, y - r, x + r, y + r), fill=colour)
    elif marker in ("^", "v"):
        s = -1 if marker == "^" else 1
        draw.polygon([(x - r - 1, y - s * r), (x + r + 1, y - s * r), (x, y + s * (r + 1))], fill=colour)
    elif marker == "D":
        draw.polygon([(x, y - r - 1), (x + r + 1, y), (x, y + r + 1), (x - r - 1, y)], fill=colour)
    elif marker == "x":
        draw.line((x - r, y - r, x + r, y + r), fill=colour, width=2)
        draw.line((x - r, y + r, x + r, y - r), fill=colour, width=2)
    elif marker == "+":
        draw.line((x - r - 1, y, x + r + 1, y), fill=colour, width=2)
        draw.line((x, y - r - 1, x, y + r + 1), fill=colour, width=2)
    else:
        draw.ellipse((x - r + 0.5, y - r + 0.5, x + r - 0.5, y + r - 0.5), fill=colour)


def line_plot(series: Sequence[Series], x_axis: Axis | None = None, y_axis: Axis | None = None, title: str | None = None,
              width: int = 640, height: int = 360, size: int = FONT_SIZE) -> Image.Image:
    """A line plot with axes, ticks with their values, axis labels, a legend and several series in colours.

    On a log axis points with values <= 0 cannot be placed: they are left out of their line (a schedule's
    final sigma 0, for instance)."""
    x_axis, y_axis = x_axis or Axis(), y_axis or Axis()
    if not series:
        raise ValueError("line_plot needs at least one series")
    pts = [s.points() for s in series]
    x_lo, x_hi = x_axis.range_of([p[0] for s in pts for p in s])
    y_lo, y_hi = y_axis.range_of([p[1] for s in pts for p in s])
    if not x_axis.log and x_axis.limits is None:  # widen to round tick values so the axis ends on a tick
        t = nice_ticks(x_lo, x_hi)
        x_lo, x_hi = min(x_lo, t[0]), max(x_hi, t[-1])
    if not y_axis.log and y_axis.limits is None:
        t = nice_ticks(y_lo, y_hi)
        y_lo, y_hi = min(y_lo, t[0]), max(y_hi, t[-1])
    x_ticks, y_ticks = x_axis.tick_values(x_lo, x_hi), y_axis.tick_values(y_lo, y_hi)

    lh = line_height(size)
    left = max(text_size(format_tick(v), size)[0] for v in y_ticks) + 10 + (lh + 4 if y_axis.label else 0)
    top = (lh + 8) if title else 8
    bottom = lh + 10 + (lh + 4 if x_axis.label else 0)
    legend = [s for s in series if s.label]
    right = 16 + (max(text_size(s.label, size)[0] for s in legend) + 36 if legend and len(legend) > 1 else 0)
    pw, ph = width - left - right, height - top - bottom
    if pw < 40 or ph < 40:
        raise ValueError(f"plot of {width}x{height} pixels is too small for its labels")
    out = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(out)

    def px(x: float) -> float:
        return left + x_axis.scale(x, x_lo, x_hi) * pw

    def py(y: float) -> float:
        return top + (1 - y_axis.scale(y, y_lo, y_hi)) * ph

    for v in x_ticks:
        draw.line((px(v), top, px(v), top + ph), fill=GRIDLINE)
        draw.line((px(v), top + ph, px(v), top + ph + 4), fill=INK)
        draw_text(draw, (px(v), top + ph + 6), format_tick(v), size, anchor="ma")
    for v in y_ticks:
        draw.line((left, py(v), left + pw, py(v)), fill=GRIDLINE)
        draw.line((left - 4, py(v), left, py(v)), fill=INK)
        draw_text(draw, (left - 6, py(v)), format_tick(v), size, anchor="rm")
    draw.rectangle((left, top, left + pw, top + ph), outline=INK)
    if title:
        draw_text(draw, (left + pw / 2, 4), title, size + 1, anchor="ma")
    if x_axis.label:
        draw_text(draw, (left + pw / 2, height - 4), x_axis.label + (" (log)" if x_axis.log else ""), size, anchor="md")
    if y_axis.label:  # rotated label on the left
        label = text_block(y_axis.label + (" (log)" if y_axis.log else ""), size, pad=0).rotate(90, expand=True)
        out.paste(label, (2, int(top + ph / 2 - label.height / 2)))

    for k, (s, p) in enumerate(zip(series, pts)):
        colour = s.colour or PALETTE[k % len(PALETTE)]
        keep = [(px(a), py(b)) for a, b in p if math.isfinite(a) and math.isfinite(b) and (a > 0 or not x_axis.log) and (b > 0 or not y_axis.log)]
        if len(keep) > 1:
            draw.line(keep, fill=colour, width=2)
        if s.markers:
            for a, b in keep:
                draw_marker(draw, a, b, s.marker, colour)
    if len(legend) > 1:
        x0, y0 = left + pw + 10, top + 4
        for k, s in enumerate(series):
            if not s.label:
                continue
            colour = s.colour or PALETTE[k % len(PALETTE)]
            draw.line((x0, y0 + lh / 2, x0 + 20, y0 + lh / 2), fill=colour, width=3)
            if s.markers and s.marker != "o":
                draw_marker(draw, x0 + 10, y0 + lh / 2, s.marker, colour)
            draw_text(draw, (x0 + 26, y0 + lh / 2), s.label, size, anchor="lm")
            y0 += lh + 2
    elif len(legend) == 1 and not title:
        draw_text(draw, (left + 6, top + 4), legend[0].label, size, fill=legend[0].colour or PALETTE[series.index(legend[0]) % len(PALETTE)])
    return out
