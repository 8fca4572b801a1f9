"""A judged sweep's results (judged.csv) as numbers per sampler and step count, ranks, a table and plots.

Per (sampler, steps): the pictures' adherence (all five and per attribute, Wilson intervals), mean
sharpness (95% interval: 1.96 standard errors), the Fréchet distance to the true renders of the same
captions (bootstrap error; only with `judged.MIN_PICTURES` pictures or more), NFE and seconds per picture.

Ranks at equal model calls: at a budget of B calls each sampler is taken at its largest step count that
fits (NFE <= B), and ranked by its interval (`judged.ranks`: overlapping intervals tie). At 40 calls every
sampler of the registry fits (the largest first step count, PNDM's 5 steps, costs 14).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..anatomy import draw
from . import judged
from .judged_sweep import RESULTS, SPEC, Spec, eval_captions

BUDGETS = (10, 40)


@dataclass
class Group:
    sampler: str
    steps: int
    nfe: float
    pictures: int
    adherence: dict  # "all" and each attribute -> judged.Share
    sharpness: tuple[float, float, float]  # mean, lo, hi (NaN pictures left out)
    frechet: judged.Distance | None
    seconds: float  # per picture


def read(run: Path) -> tuple[Spec, list[dict]]:
    import json

    spec = Spec.from_dict(json.loads((run / SPEC).read_text()))
    with open(run / RESULTS, newline="") as f:
        return spec, list(csv.DictReader(f))


def groups(spec: Spec, rows: list[dict], bootstrap: int = judged.BOOTSTRAP) -> dict[tuple[str, int], Group]:
    captions = eval_captions(spec.captions, spec.caption_seed)
    render_features: dict[int, torch.Tensor] = {}
    by: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        by.setdefault((r["sampler"], int(r["steps"])), []).append(r)
    out = {}
    for (sampler, steps), rs in by.items():
        flags = [{a: r[f"right_{a}"] == "1" for a in ("all", *judged.ATTRIBUTES)} for r in rs]
        sharp = torch.tensor([float(r["sharpness"]) for r in rs if r["sharpness"] != "nan"], dtype=torch.float64)
        if len(sharp) > 1:
            half = 1.959964 * float(sharp.std()) / math.sqrt(len(sharp))
            sharpness = (float(sharp.mean()), float(sharp.mean()) - half, float(sharp.mean()) + half)
        else:
            sharpness = (math.nan, math.nan, math.nan)
        distance = None
        if len(rs) >= judged.MIN_PICTURES:
            feats = torch.tensor([[float(v) for v in r["features"].split()] for r in rs])
            for r in rs:
                i = int(r["caption"])
                if i not in render_features:
                    render_features[i] = judged.features(judged.render(captions[i])[None])[0]
            refs = torch.stack([render_features[int(r["caption"])] for r in rs])
            distance = judged.frechet_bootstrap(feats, refs, resamples=bootstrap)
        cells = {(r["batch"], r["seed"]): int(r["nfe"]) for r in rs}
        out[(sampler, steps)] = Group(sampler, steps, sum(cells.values()) / len(cells), len(rs), judged.adherence(flags), sharpness,
                                      distance, sum(float(r["seconds"]) for r in rs) / len(rs))
    return out


def at_budget(table: dict[tuple[str, int], Group], budget: float) -> dict[str, Group]:
    """Each sampler at its largest step count whose NFE fits in `budget` model calls."""
    best: dict[str, Group] = {}
    for g in table.values():
        if g.nfe <= budget and (g.sampler not in best or g.steps > best[g.sampler].steps):
            best[g.sampler] = g
    return best


def adherence_ranks(table, budget: float) -> dict[str, int]:
    fit = at_budget(table, budget)
    return judged.ranks({s: (g.adherence["all"].lo, g.adherence["all"].hi) for s, g in fit.items()})


def frechet_ranks(table, budget: float) -> dict[str, int]:
    fit = {s: g for s, g in at_budget(table, budget).items() if g.frechet is not None}
    return judged.ranks({s: (g.frechet.lo, g.frechet.hi) for s, g in fit.items()}, higher_is_better=False)


# --------------------------------------------------------------------------------------------- plots

def family(info) -> str:
    """A sampler's family for the plots' facets, from its registry facts (how it steps and what noise it draws)."""
    from .sweep import Against, against

    kind = against(info)
    if kind == Against.ODE_NO_LIMIT:
        return "new noise every step (ancestral, LCM, ...)"
    if kind == Against.OWN:
        return "SDE on a Brownian path"
    if isinstance(info.calls_per_step, int) and info.calls_per_step > 1 or info.id == "heunpp2":
        return "ODE, several calls per step (Heun, DPM2)"
    if info.order == 1:
        return "ODE, first order (Euler, DDIM)"
    return "ODE, multistep and high order"


FAMILIES = ("ODE, first order (Euler, DDIM)", "ODE, several calls per step (Heun, DPM2)", "ODE, multistep and high order",
            "SDE on a Brownian path", "new noise every step (ancestral, LCM, ...)")


def facet_plot(table: dict[tuple[str, int], Group], value, y_label: str, title: str, log_y: bool = False,
               limits: tuple[float, float] | None = None) -> Image.Image:
    """One panel per family, one series per sampler (its own colour and marker within the panel), y against NFE."""
    from ..samplers.registry import REGISTRY

    panels = []
    for fam in FAMILIES:
        series = []
        members = [sid for sid, info in REGISTRY.items() if family(info) == fam]
        for k, sid in enumerate(members):
            pts = sorted((g.nfe, value(g)) for g in table.values() if g.sampler == sid)
            pts = [(x, y) for x, y in pts if y is not None and math.isfinite(y) and (y > 0 or not log_y)]
            if pts:
                series.append(draw.Series(y=[y for _, y in pts], x=[x for x, _ in pts], label=REGISTRY[sid].name,
                                          colour=draw.PALETTE[k % len(draw.PALETTE)], marker=draw.MARKERS[k % len(draw.MARKERS)]))
        if series:
            name = fam if len(series) > 1 else f"{fam}: {series[0].label}"  # one series shows no legend
            panels.append(draw.line_plot(series, draw.Axis("model calls (NFE)", log=True), draw.Axis(y_label, log=log_y, limits=limits),
                                         title=name, width=640, height=max(300, 80 + len(series) * (draw.line_height() + 2))))
    if not panels:
        raise ValueError(f"nothing to plot for {title!r}")
    rows = [draw.stack(panels[i:i + 2], horizontal=True) for i in range(0, len(panels), 2)]
    return draw.stack([draw.text_block(title, draw.FONT_SIZE + 2), *rows])


SUMMARY = "summary.json"  # the groups of a run, computed once (the Fréchet bootstraps take minutes), keyed by judged.csv's digest


def summary(run: Path, write: bool = False) -> tuple[Spec, dict[tuple[str, int], Group], int]:
    """(spec, groups, rows) of a run: from `summary.json` when it matches judged.csv's digest, else computed (and, with
    `write`, stored there)."""
    import json
    from dataclasses import asdict

    from .judged_sweep import file_sha1

    digest = file_sha1(run / RESULTS)
    path = run / SUMMARY
    if path.exists():
        data = json.loads(path.read_text())
        if data["judged_csv_sha1"] == digest:
            spec = Spec.from_dict(json.loads((run / SPEC).read_text()))
            table = {}
            for g in data["groups"]:
                g["adherence"] = {k: judged.Share(**v) for k, v in g["adherence"].items()}
                g["frechet"] = judged.Distance(**g["frechet"]) if g["frechet"] else None
                g["sharpness"] = tuple(g["sharpness"])
                table[(g["sampler"], g["steps"])] = Group(**g)
            return spec, table, data["rows"]
    spec, rows = read(run)
    table = groups(spec, rows)
    if write:
        path.write_text(json.dumps({"judged_csv_sha1": digest, "rows": len(rows), "groups": [asdict(g) for g in table.values()]}, indent=0))
    return spec, table, len(rows)
