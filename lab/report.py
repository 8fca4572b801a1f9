"""The sweep's results as rows (CSV, Markdown), a labelled grid of its pictures and an error-vs-NFE plot.

Drawing uses `anatomy/draw.py` (Pillow, its default font). The grid: a title, sampler rows (sampler +
schedule when a sweep has several schedules), step-count columns, each cell captioned with its NFE
and seconds. The plot: error against NFE on log-log axes, one line per sampler (x schedule), a legend.
"""
from __future__ import annotations

import csv
import io
import math
from typing import Sequence

import torch
from PIL import Image

from ..anatomy import draw
from .sweep import Against, Cell, SweepResult

CSV_COLUMNS = ("sampler", "schedule", "steps", "nfe", "seconds", "error")
MARK = {Against.ODE: "", Against.OWN: "own", Against.ODE_NO_LIMIT: "no limit"}
CELL_SIDE = 96  # pixels of each grid picture (the embedded model's 64x64 enlarged by nearest neighbour)


def csv_text(cells: Sequence[Cell]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for c in cells:
        w.writerow([c.sampler, c.schedule, c.steps, c.nfe, f"{c.seconds:.4f}", f"{c.error:.6g}"])
    return out.getvalue()


def error_at_nfe(cells: Sequence[Cell], nfe: float) -> float | None:
    """One sampler's error at `nfe` model calls, interpolated linearly in log-log between its runs (no extrapolation)."""
    pts = sorted((c.nfe, c.error) for c in cells if c.nfe > 0 and c.error > 0 and math.isfinite(c.error))
    for (n0, e0), (n1, e1) in zip(pts, pts[1:]):
        if n0 <= nfe <= n1:
            if n1 == n0:
                return min(e0, e1)
            f = math.log(nfe / n0) / math.log(n1 / n0)
            return math.exp(math.log(e0) + f * math.log(e1 / e0))
    return next((e for n, e in pts if n == nfe), None)


def ranks_at_nfe(result: SweepResult, nfe: float) -> dict[tuple[str, str], int]:
    """Rank (1 = smallest error) of each (sampler, schedule) by its error at `nfe` model calls, among those that reach it."""
    errors = {}
    for key in dict.fromkeys((c.sampler, c.schedule) for c in result.cells):
        e = error_at_nfe([c for c in result.cells if (c.sampler, c.schedule) == key], nfe)
        if e is not None:
            errors[key] = e
    return {key: k + 1 for k, key in enumerate(sorted(errors, key=errors.get))}


def summary_lines(result: SweepResult) -> list[str]:
    lines = []
    for key, ref in result.references.items():
        check = f"halving its steps changes it by {ref.halving_change:.2e} (relative RMS)" if ref.halving_change is not None else "not verified in this run"
        where = "an earlier run (kept in the reference store)" if ref.stored else "an earlier run of this process"
        cost = (f"solved by {where} for the same model, conditioning, latent, seed and cfg "
                f"({ref.calls} model calls, {ref.seconds:.1f} s then), reused" if key in result.reused
                else f"{ref.calls} model calls, {ref.seconds:.1f} s")
        lines.append(f"- reference ({ref.how}): {cost}; {check}")
    lines.append(f"- time: runs {result.seconds_cells:.2f} s, references {result.seconds_references:.2f} s, "
                 f"everything else (bookkeeping) {100 * result.overhead:.1f}% of the runs")
    return lines


def markdown(result: SweepResult) -> str:
    """The cells as a Markdown table, with how each was measured, then the references and the timing."""
    rows = ["| sampler | schedule | steps | NFE | seconds | error | against |", "|---|---|---|---|---|---|---|"]
    for c in result.cells:
        rows.append(f"| {c.name} (`{c.sampler}`) | {c.schedule} | {c.steps} | {c.nfe} | {c.seconds:.3f} | {c.error:.3g} | {c.against} |")
    return "\n".join(["error = relative RMS distance of the final latent from the reference; NFE = model calls counted.", "",
                      *rows, "", *summary_lines(result)]) + "\n"


def row_label(cell: Cell, several_schedules: bool) -> str:
    mark = f" [{MARK[cell.against]}]" if MARK.get(cell.against) else ""
    return f"{cell.name}{mark}" + (f" / {cell.schedule}" if several_schedules else "")


def grid_image(result: SweepResult, pictures: Sequence[torch.Tensor], title: str) -> Image.Image:
    """Sampler (x schedule) rows, step-count columns; `pictures` one [H, W, 3] in 0..1 per cell, in cell order."""
    several = len(result.schedules) > 1
    rows = list(dict.fromkeys((c.sampler, c.schedule) for c in result.cells))
    cols = sorted({c.steps for c in result.cells})
    cells = [[None] * len(cols) for _ in rows]
    captions = [[""] * len(cols) for _ in rows]
    labels = [""] * len(rows)
    for k, c in enumerate(result.cells):
        r, col = rows.index((c.sampler, c.schedule)), cols.index(c.steps)
        cells[r][col] = draw.fit(draw.to_pil(pictures[k]), CELL_SIDE)
        captions[r][col] = f"NFE {c.nfe}, {c.seconds:.2f}s"
        labels[r] = row_label(c, several)
    return draw.grid(cells, row_labels=labels, col_labels=[f"{n} steps" for n in cols], captions=captions, title=title)


def plot_image(result: SweepResult, title: str = "error against model calls") -> Image.Image:
    """Error vs NFE, log-log, one line per sampler (x schedule); a legend."""
    several = len(result.schedules) > 1
    series = []
    for key in dict.fromkeys((c.sampler, c.schedule) for c in result.cells):
        pts = sorted((c.nfe, c.error) for c in result.cells if (c.sampler, c.schedule) == key and c.nfe > 0 and c.error > 0)
        first = next(c for c in result.cells if (c.sampler, c.schedule) == key)
        if pts:
            series.append(draw.Series(y=[e for _, e in pts], x=[n for n, _ in pts], label=row_label(first, several)))
    if not series:
        raise ValueError("nothing to plot: no cell has a positive error and model calls")
    height = max(360, 60 + len(series) * (draw.line_height() + 2))
    return draw.line_plot(series, draw.Axis("model calls (NFE)", log=True), draw.Axis("relative RMS error", log=True),
                          title=title, width=900, height=height)
