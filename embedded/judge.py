"""The judge of the embedded model's world: what a 64x64 picture shows, read from its pixels alone.

The world (`data.py`) is one shape of one palette colour on a plain background of another, so a
picture can be read back into the five attributes of its caption (shape, colour, size, position,
background) exactly, and a picture that is not of this world is said to be so instead of guessed:

1. Colours: every pixel is named by its nearest palette colour when it lies within `COLOUR_MAX` of it
   and clearly nearer to it than to the next (`COLOUR_RATIO`), so a shifted colour keeps its name and
   one halfway between two (yellow and orange are ~92 apart) gets none. The background is
   the commonest name (the largest shape covers 13% of the picture), the object's colour the
   commonest other name. A mixture of the two (a soft edge) is not a third colour: pixels are placed
   on the segment from background to object colour, and count as object past its middle (`t > 1/2`,
   where a blurred straight edge crosses its true position).
2. Objects: the object mask's 8-connected components; specks below `SPECK` pixels are noise, two
   components of `MIN_AREA` or more (or a third colour covering that much) are "two objects", none
   is "no object".
3. Shape: each family's template (`data.mask_of`) is fitted to the component by its moments (area
   gives the radius, the centroid the centre; the triangle's centroid lies 0.2 r below its centre)
   and compared by IoU. The best fit names the shape when its IoU is at least `IOU_MIN` and beats the
   runner-up by `IOU_MARGIN`; a disc and a square of equal area overlap with IoU ~0.83, so a
   rounded square or a bow-tie falls between the families and is "unreadable outline".
4. Size: the fitted radius against the two sizes, split at their geometric mean; a radius far
   outside both (under `RADIUS_RANGE[0]` or over `RADIUS_RANGE[1]` px) is undecided.
5. Position: the fitted centre against the five named centres; more than `POSITION_TOL` px from every
   one of them (a true centre is at most 2.83 px off) is undecided ("between positions").

`python embedded/judge.py renders` measures the judge on the generator's own pictures (clean, blurred,
noised); `... folder DIR` and `... sample FILE` judge a folder of PNGs or a sampling run: per-attribute
and all-five accuracy with 95% Wilson intervals.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a script: the repo root as the pack (harness/)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "harness"))
    import diffusion_anatomy  # noqa: F401
    __package__ = "diffusion_anatomy.embedded"

import torch
import torch.nn.functional as F

from .data import COLOURS, POSITIONS, SHAPES, SIZE, SIZES, Caption, mask_of

ATTRIBUTES = ("shape", "colour", "size", "position", "background")
NAMES = list(COLOURS)
PALETTE = torch.tensor([COLOURS[n] for n in NAMES], dtype=torch.float32)  # [8, 3], 0..255

COLOUR_MAX = 90.0  # RGB distance beyond which a pixel is no palette colour (the closest pair is ~92 apart) ...
COLOUR_RATIO = 2 / 3  # ... and it takes the nearest colour's name only when clearly nearer to it than to the next
LINE_TOL = 45.0  # RGB distance from the background-object segment beyond which a pixel is a third colour
SPECK = 8  # components smaller than this many pixels are noise, not objects
MIN_AREA = 20  # a component this large is an object (the smallest true shape, a small triangle, has ~88 px)
IOU_MIN = 0.85  # the best template must overlap the object this well ...
IOU_MARGIN = 0.05  # ... and better than the runner-up by this much
RADIUS_RANGE = (4.0, 20.0)  # fitted radii outside this are neither small (7) nor large (13)
POSITION_TOL = 8.0  # px from the nearest named centre; named centres are 16 px apart in x and y
SIZE_SPLIT = math.sqrt(SIZES["small"] * SIZES["large"])


@dataclass
class Verdict:
    """What one picture shows. An attribute is None when the judge cannot decide it; `reasons` says why.

    `iou` holds each shape family's template fit; `colour_distance` the RGB distance of the object's
    and the background's median pixels from their palette colours; `offset` the fitted centre's distance
    from the named position's centre (px); `radius` the fitted radius (px)."""

    shape: str | None = None
    colour: str | None = None
    size: str | None = None
    position: str | None = None
    background: str | None = None
    reasons: list[str] = field(default_factory=list)
    iou: dict[str, float] = field(default_factory=dict)
    colour_distance: tuple[float, float] | None = None
    radius: float | None = None
    centre: tuple[float, float] | None = None
    offset: float | None = None

    @property
    def reason(self) -> str | None:
        """None when every attribute was decided, else the reasons joined."""
        return "; ".join(self.reasons) if self.reasons else None

    def as_dict(self) -> dict:
        return {a: getattr(self, a) for a in ATTRIBUTES} | {"reason": self.reason}


def to_rgb255(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] in [-1, 1] -> [N, H, W, 3] float in 0..255 (clamped, not rounded)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1)


def components(mask: torch.Tensor) -> torch.Tensor:
    """[H, W] int labels of the 8-connected components of a bool mask (0 = background).

    Label propagation: every pixel starts with its own index and takes the largest label among its
    neighbours until nothing changes (at most the longest path through a component)."""
    h, w = mask.shape
    labels = torch.arange(1, h * w + 1, dtype=torch.float32).reshape(1, 1, h, w) * mask
    keep = mask.float()[None, None]
    for _ in range(h * w):
        grown = F.max_pool2d(labels, 3, stride=1, padding=1) * keep
        if torch.equal(grown, labels):
            break
        labels = grown
    return labels[0, 0].long()


def median3(rgb: torch.Tensor) -> torch.Tensor:
    """[H, W, 3] -> each channel's 3x3 median (edges replicated): removes grain and single-pixel specks
    while a straight edge stays where it is."""
    x = F.pad(rgb.permute(2, 0, 1)[None], (1, 1, 1, 1), mode="replicate")
    patches = F.unfold(x, 3).reshape(3, 9, *rgb.shape[:2])
    return patches.median(dim=1).values.permute(1, 2, 0)


def fit(shape: str, region: torch.Tensor) -> tuple[float, tuple[float, float], float]:
    """(radius, centre, IoU) of the family's template fitted to a bool mask by its area and centroid."""
    area = float(region.sum())
    ys, xs = torch.nonzero(region, as_tuple=True)
    mx, my = float(xs.float().mean()) + 0.5, float(ys.float().mean()) + 0.5  # pixel centres
    if shape == "circle":
        r, centre = math.sqrt(area / math.pi), (mx, my)
    elif shape == "square":
        r, centre = math.sqrt(area) / 1.8, (mx, my)  # side 1.8 r
    else:  # triangle: base 2r, height 1.8r, centroid 0.2r below the centre
        r = math.sqrt(area / 1.8)
        centre = (mx, my - 0.2 * r)
    template = mask_of(shape, centre, r)
    inter = float((template & region).sum())
    union = float((template | region).sum())
    return r, centre, inter / union


def judge_one(rgb: torch.Tensor) -> Verdict:
    """The verdict on one [H, W, 3] picture in 0..255 (see the module docstring for the rules)."""
    v = Verdict()
    pixels = median3(rgb).reshape(-1, 3)
    dist = torch.cdist(pixels, PALETTE)  # [HW, 8]
    two = dist.topk(2, dim=1, largest=False)
    nearest_d, nearest = two.values[:, 0], two.indices[:, 0]
    named = (nearest_d <= COLOUR_MAX) & (nearest_d <= COLOUR_RATIO * two.values[:, 1])
    counts = torch.bincount(nearest[named], minlength=len(NAMES))
    bg = int(counts.argmax())
    if counts[bg] < pixels.shape[0] / 2:
        v.reasons.append("no background: no palette colour covers half the picture")
        return v
    v.background = NAMES[bg]
    others = counts.clone()
    others[bg] = 0
    fg = int(others.argmax())
    if others[fg] < MIN_AREA:
        v.reasons.append("no object")
        return v
    bg_rgb = pixels[named & (nearest == bg)].median(dim=0).values
    fg_rgb = pixels[named & (nearest == fg)].median(dim=0).values
    # the object: pixels past the middle of the background->object segment and near that segment
    d = fg_rgb - bg_rgb
    t = ((pixels - bg_rgb) @ d) / (d @ d)
    off_line = (pixels - bg_rgb - t[:, None] * d).norm(dim=1)
    on_line = off_line <= LINE_TOL
    mask = (on_line & (t > 0.5)).reshape(SIZE, SIZE)
    third = ~on_line & named & (nearest != bg) & (nearest != fg)
    if int(third.sum()) >= MIN_AREA:
        v.reasons.append(f"two objects: {NAMES[fg]} and {int(third.sum())} px of other colours")
        return v
    labels = components(mask)
    ids, areas = torch.unique(labels[labels > 0], return_counts=True)
    objects = [(int(a), int(i)) for i, a in zip(ids, areas) if a >= MIN_AREA]
    if not objects:
        v.reasons.append("no object")
        return v
    if len(objects) > 1:
        v.reasons.append(f"two objects: {len(objects)} separate {NAMES[fg]} regions")
        return v
    region = labels == objects[0][1]
    v.colour = NAMES[fg]
    v.colour_distance = (float((fg_rgb - PALETTE[fg]).norm()), float((bg_rgb - PALETTE[bg]).norm()))

    fits = {s: fit(s, region) for s in SHAPES}
    v.iou = {s: round(f[2], 4) for s, f in fits.items()}
    ranked = sorted(SHAPES, key=lambda s: -fits[s][2])
    best, second = ranked[0], ranked[1]
    if fits[best][2] >= IOU_MIN and fits[best][2] - fits[second][2] >= IOU_MARGIN:
        v.shape = best
    else:
        v.reasons.append(f"unreadable outline: best fit {best} IoU {fits[best][2]:.2f}, {second} {fits[second][2]:.2f}")
    # size and place from the named shape's fit, or from the bounding box when the outline is unreadable
    if v.shape is not None:
        r, centre, _ = fits[v.shape]
    else:
        ys, xs = torch.nonzero(region, as_tuple=True)
        r = (max(int(xs.max() - xs.min()), int(ys.max() - ys.min())) + 1) / 2
        centre = ((float(xs.min()) + float(xs.max()) + 1) / 2, (float(ys.min()) + float(ys.max()) + 1) / 2)
    v.radius, v.centre = r, centre
    if RADIUS_RANGE[0] <= r <= RADIUS_RANGE[1]:
        v.size = "small" if r < SIZE_SPLIT else "large"
    else:
        v.reasons.append(f"size: radius {r:.1f} px is neither small nor large")
    offsets = {p: math.dist(centre, c) for p, c in POSITIONS.items()}
    place = min(offsets, key=offsets.get)
    v.offset = offsets[place]
    if v.offset <= POSITION_TOL:
        v.position = place
    else:
        v.reasons.append(f"between positions: {v.offset:.1f} px from {place}")
    return v


def judge(images: torch.Tensor) -> list[Verdict]:
    """Verdicts on [N, 3, 64, 64] pictures in [-1, 1] (as the VAE decodes and `data.render` draws)."""
    return [judge_one(rgb) for rgb in to_rgb255(images)]


def judge_rgb(rgb: torch.Tensor) -> list[Verdict]:
    """Verdicts on [N, 64, 64, 3] pictures in 0..255 (a PNG's pixels)."""
    return [judge_one(x.float()) for x in rgb]


def correct(verdict: Verdict, caption: Caption) -> dict[str, bool]:
    """Per attribute, whether the picture shows what the caption says; "all" when all five do."""
    right = {a: getattr(verdict, a) == getattr(caption, a) for a in ATTRIBUTES}
    return right | {"all": all(right.values())}


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion k/n (Wilson 1927): honest near 0 and 1, unlike k/n +- 2 se."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class Accuracy:
    """Counts of right pictures per attribute (and "all") over n pictures."""

    n: int
    right: dict[str, int]
    undecided: int  # pictures with at least one undecided attribute

    def rate(self, attribute: str) -> float:
        return self.right[attribute] / self.n if self.n else 0.0

    def interval(self, attribute: str) -> tuple[float, float]:
        return wilson(self.right[attribute], self.n)

    def table(self) -> str:
        rows = [f"{'attribute':<11} {'right':>9} {'rate':>7}  95% interval"]
        for a in (*ATTRIBUTES, "all"):
            lo, hi = self.interval(a)
            rows.append(f"{a:<11} {self.right[a]:>4}/{self.n:<4} {self.rate(a):>7.3f}  [{lo:.3f}, {hi:.3f}]")
        rows.append(f"undecided in at least one attribute: {self.undecided}/{self.n}")
        return "\n".join(rows)


def accuracy(verdicts: list[Verdict], captions: list[Caption]) -> Accuracy:
    marks = [correct(v, c) for v, c in zip(verdicts, captions, strict=True)]
    right = {a: sum(m[a] for m in marks) for a in (*ATTRIBUTES, "all")}
    return Accuracy(len(marks), right, sum(v.reason is not None for v in verdicts))


# --- reading captions back from text (prompts in a folder's PNGs or a manifest) ---

def parse_caption(text: str) -> Caption | None:
    """The Caption a prompt of this world names (centre at the position's centre), or None."""
    words = text.strip().lower().rstrip(".")
    for size in SIZES:
        for colour in COLOURS:
            for shape in SHAPES:
                head = f"a {size} {colour} {shape} "
                if not words.startswith(head):
                    continue
                rest = words[len(head):]
                for position in POSITIONS:
                    where = "in the centre" if position == "centre" else f"at the {position}"
                    if rest.startswith(where + " on a ") and rest.endswith(" background"):
                        background = rest[len(where + " on a "):-len(" background")]
                        if background in COLOURS:
                            return Caption(shape, colour, size, position, background, POSITIONS[position])
    return None


def caption_of_png(path: Path) -> Caption | None:
    """A PNG's caption: its "caption" text chunk, or the prompt text of the ComfyUI graph it carries."""
    from PIL import Image  # noqa: PLC0415  (the command line only; ComfyUI's venv has PIL)

    info = Image.open(path).info
    if "caption" in info:
        return parse_caption(info["caption"])
    if "prompt" in info:
        for node in json.loads(info["prompt"]).values():
            for value in node.get("inputs", {}).values():
                if isinstance(value, str) and (cap := parse_caption(value)) is not None:
                    return cap
    return None


def _load_folder(folder: Path) -> tuple[torch.Tensor, list[Caption]]:
    from PIL import Image  # noqa: PLC0415

    manifest = folder / "captions.json"
    texts = json.loads(manifest.read_text()) if manifest.is_file() else {}
    images, captions = [], []
    for path in sorted(folder.glob("*.png")):
        cap = parse_caption(texts[path.name]) if path.name in texts else caption_of_png(path)
        if cap is None:
            print(f"skipped {path.name}: no caption of this world (captions.json, a 'caption' chunk or a ComfyUI prompt)")
            continue
        rgb = torch.tensor(list(Image.open(path).convert("RGB").resize((SIZE, SIZE)).getdata()), dtype=torch.float32)
        images.append(rgb.reshape(SIZE, SIZE, 3))
        captions.append(cap)
    return (torch.stack(images) if images else torch.zeros(0, SIZE, SIZE, 3)), captions


def degrade(images: torch.Tensor, blur: float = 0.0, noise: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """[N, 3, H, W] in [-1, 1] blurred by a Gaussian of std `blur` px, plus Gaussian noise of std `noise`
    (in [-1, 1] units, i.e. noise * 127.5 in 0..255), clamped: the soft edges and grain of sampled pictures."""
    out = images
    if blur > 0:
        half = max(1, math.ceil(3 * blur))
        x = torch.arange(-half, half + 1, dtype=torch.float32)
        k = torch.exp(-0.5 * (x / blur) ** 2)
        k = k / k.sum()
        c = images.shape[1]
        out = F.pad(out, (half, half, half, half), mode="replicate")
        out = F.conv2d(out, k.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        out = F.conv2d(out, k.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    if noise > 0:
        out = out + noise * torch.randn(out.shape, generator=generator)
    return out.clamp(-1, 1)


def roundtrip(vae, renders: torch.Tensor, batch: int = 100) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """True renders [N, 3, 64, 64] through a VAE (posterior mean, decode), in batches: (decoded, clamped to [-1, 1];
    PSNR per picture in dB on the [0, 1] scale; the mean |decoded - render| per pixel [H, W] in 0..255, brightest
    channel, where a fixed-position pattern of the decoder shows)."""
    with torch.no_grad():
        decoded = torch.cat([vae.decode(vae.posterior(x).mean) for x in renders.split(batch)]).clamp(-1, 1)
    mse = ((decoded - renders) / 2).square().flatten(1).mean(1)
    psnr = 10 * torch.log10(1 / mse.clamp_min(1e-10))
    pattern = ((decoded - renders).abs() * 127.5).mean(0).amax(0)
    return decoded, psnr, pattern


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Judge pictures of the embedded model's world: per-attribute accuracy with 95% intervals.")
    sub = ap.add_subparsers(dest="what", required=True)
    r = sub.add_parser("renders", help="the generator's own renders, optionally blurred (std px) and noised (std, [-1,1] units)")
    r.add_argument("--n", type=int, default=1680)
    r.add_argument("--blur", type=float, default=0.0)
    r.add_argument("--noise", type=float, default=0.0)
    r.add_argument("--seed", type=int, default=0)
    f = sub.add_parser("folder", help="PNGs with captions (captions.json {file: prompt}, a 'caption' chunk, or ComfyUI's prompt)")
    f.add_argument("dir", type=Path)
    s = sub.add_parser("sample", help="draw held-out captions with a model file and judge them")
    s.add_argument("file", type=Path)
    s.add_argument("--n", type=int, default=200)
    s.add_argument("--sampler", default="euler")
    s.add_argument("--schedule", default="karras")
    s.add_argument("--steps", type=int, default=20)
    s.add_argument("--cfg", type=float, default=5.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch", type=int, default=50)
    t = sub.add_parser("roundtrip", help="held-out renders through a model file's VAE (encode mean, decode): PSNR and verdicts")
    t.add_argument("file", type=Path)
    t.add_argument("--n", type=int, default=400)
    t.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from .data import eval_captions, render  # noqa: PLC0415

    if args.what == "renders":
        g = torch.Generator().manual_seed(args.seed)
        captions = eval_captions(args.n, g, held_out_only=False)
        images = degrade(torch.stack([render(c) for c in captions]), args.blur, args.noise, g)
        verdicts = judge(images)
    elif args.what == "folder":
        rgb, captions = _load_folder(args.dir)
        verdicts = judge_rgb(rgb)
    elif args.what == "roundtrip":
        from .sample import load  # noqa: PLC0415

        vae = load(args.file).vae
        captions = eval_captions(args.n, torch.Generator().manual_seed(args.seed))
        decoded, psnr, pattern = roundtrip(vae, torch.stack([render(c) for c in captions]))
        print(f"PSNR mean {psnr.mean():.2f} dB (median {psnr.median():.2f}, min {psnr.min():.2f}); "
              f"mean |decoded - render| brightest pixel {pattern.max():.1f}/255 at {divmod(int(pattern.argmax()), SIZE)}")
        verdicts = judge(decoded)
    else:
        from .sample import judged_sample  # noqa: PLC0415

        verdicts, captions = judged_sample(args.file, args.n, sampler=args.sampler, schedule=args.schedule,
                                           steps=args.steps, cfg=args.cfg, seed=args.seed, batch=args.batch)
    acc = accuracy(verdicts, captions)
    print(acc.table())
    reasons: dict[str, int] = {}
    for v in verdicts:
        for why in v.reasons:
            key = why.split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
    if reasons:
        print("reasons: " + ", ".join(f"{k} {n}" for k, n in sorted(reasons.items(), key=lambda kv: -kv[1])))


if __name__ == "__main__":
    main()
