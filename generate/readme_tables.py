"""Regenerate the README's generated sections: the sampler and schedule tables from the registries (the one
source of truth), and "Samplers, measured" from the sampler lab's recorded run beside the source document's ratings.

    .host/venv/bin/python generate/readme_tables.py          # rewrite README.md in place
    .host/venv/bin/python generate/readme_tables.py --check  # exit 1 if README.md is out of date
    .host/venv/bin/python generate/readme_tables.py --lab    # first re-run the lab (all samplers, karras, 5/10/20/40 steps;
                                                         # minutes on a CPU) into lab/readme_run/, then rewrite

tests/pure/test_readme.py runs the check, so the README's lists stay current, and checks that the
recorded run covers every registered sampler.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- samplers:start -->", "<!-- samplers:end -->"
LAB_START, LAB_END = "<!-- lab:start -->", "<!-- lab:end -->"
LAB_RUN = REPO / "lab" / "readme_run"  # bench/sampler_lab.py's output for the README: lab.csv, lab.md, error_vs_nfe.png, grid.png
LAB_COMMAND = ("bench/sampler_lab.py --samplers all --steps 5,10,20,40 --schedule karras --verify-reference "
               "--out lab/readme_run")


def pack():
    """The pack's registries (samplers, schedules), imported as `diffusion_anatomy` without ComfyUI."""
    if str(REPO / "harness") not in sys.path:
        sys.path.insert(0, str(REPO / "harness"))  # harness/diffusion_anatomy.py: the repo root as the package
    import diffusion_anatomy.samplers as samplers
    import diffusion_anatomy.samplers.schedules as schedules

    return samplers, schedules


def tables() -> str:
    samplers, schedules = pack()
    rows = ["| sampler (node title) | id | order | model calls / step | stochastic | core equivalent | source |",
            "|---|---|---|---|---|---|---|"]
    for info in samplers.REGISTRY.values():
        source = "; ".join(s for s in (info.paper, info.reference) if s).replace("|", "/")
        rows.append(f"| {info.name} | `{info.id}` | {info.order} | {info.calls_per_step} | {'yes' if info.stochastic else 'no'} "
                    f"| {f'`{info.core_id}`' if info.core_id else '-'} | {source} |")
    rows += ["", "| schedule | needs the model's sigma table | what it is |", "|---|---|---|"]
    for name, entry in schedules.SCHEDULES.items():
        rows.append(f"| `{name}` | {'yes' if entry.needs_model_sigmas else 'no'} | {entry.description} |")
    return "\n".join([START, *rows, END])


def replace_section(text: str, start: str, end: str, body: str) -> str:
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return head + body + tail


def updated(readme: str) -> str:
    readme = replace_section(readme, START, END, tables())
    if LAB_START in readme:
        readme = replace_section(readme, LAB_START, LAB_END, lab_section())
    return readme


# ---------------------------------------------------------------------------------------- "Samplers, measured"

# The document's comparison table (section 3 of /work/shared/seed/*.md, translated): speed, sharpness and
# realism, by hand, for the seven entries it rates. Its row "DPM-Solver++" is given to DPM++ 2M (the
# document's own DPM-Solver++ entry in its sampler list); its row "Karras" is a schedule, not a sampler.
DOC_RATINGS = {
    "euler": ("very fast", 5, 4),
    "euler_ancestral": ("fast", 5, 5),
    "ddim": ("very fast", 4, 5),
    "dpmpp_2m": ("very fast", 5, 5),
    "plms": ("medium", 5, 4),
    "lms": ("medium", 4, 5),
}
LAB_STEPS = (5, 10, 20, 40)


def read_lab_run(run: Path = LAB_RUN) -> list[dict]:
    import csv

    with open(run / "lab.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["steps"], r["nfe"] = int(r["steps"]), int(r["nfe"])
        r["seconds"], r["error"] = float(r["seconds"]), float(r["error"])
    return rows


def verdict(info, against: str, desc: str, rating, r10, r40, n: int) -> str:
    """Plain statements where the document's words make a claim the measurement can check."""
    import diffusion_anatomy.lab.sweep as sweep

    if against == sweep.Against.ODE_NO_LIMIT:
        return "cannot be ranked for accuracy: its noise is new at every step, so it converges to no fixed picture"
    out = []
    text = desc.lower()
    top_third, top_half = math.ceil(n / 3), math.ceil(n / 2)
    if "few steps" in text and r10 is not None:
        out.append(f"agrees: few steps suffice (rank {r10} of {n} at 10 calls)" if r10 <= top_third else
                   f"disagrees: it says few steps suffice, but at 10 model calls it ranks {r10} of {n}")
    if "more steps" in text and r40 is not None:
        out.append(f"disagrees: it says it needs more steps, but at 40 calls it ranks {r40} of {n}" if r40 <= top_third else
                   f"agrees: it needs more steps (rank {r40} of {n} at 40 calls)")
    if any(w in text for w in ("quality", "accura", "precise", "improves")) and r40 is not None:
        out.append(f"agrees on accuracy (rank {r40} of {n} at 40 calls)" if r40 <= top_half else
                   f"disagrees: it claims quality or accuracy, but at 40 model calls it ranks {r40} of {n}")
    fast = (rating and rating[0] in ("fast", "very fast")) or text.startswith("fast")
    if fast and isinstance(info.calls_per_step, int) and info.calls_per_step > 1:
        out.append(f"disagrees on speed: {info.calls_per_step} model calls per step")
    elif fast:
        out.append("agrees on speed: one model call per step" if info.calls_per_step == 1 else f"speed: {info.calls_per_step} calls per step")
    return "; ".join(out) if out else "no claim the measurement can check"


def lab_section(run: Path = LAB_RUN) -> str:
    samplers, _ = pack()
    import diffusion_anatomy.lab.report as report
    import diffusion_anatomy.lab.sweep as sweep

    rows = read_lab_run(run)
    cells = [sweep.Cell(r["sampler"], r["schedule"], r["steps"], r["nfe"], r["seconds"], r["error"]) for r in rows]
    ranked = [c for c in cells if sweep.against(samplers.REGISTRY[c.sampler]) != sweep.Against.ODE_NO_LIMIT]
    rank_result = sweep.SweepResult(ranked, {}, 0.0, 0.0, [], [], [])
    r10, r40 = report.ranks_at_nfe(rank_result, 10), report.ranks_at_nfe(rank_result, 40)
    n10, n40 = len(r10), len(r40)
    n = len({c.sampler for c in ranked})
    out = [LAB_START,
           "| sampler | NFE at 5 / 10 / 20 / 40 steps | error at 5 / 10 / 20 / 40 steps | seconds at 40 steps | rank at 10 / 40 calls "
           "| measured against | document: speed, sharpness, realism | document says | measurement vs document |",
           "|---|---|---|---|---|---|---|---|---|"]
    for sid, info in samplers.REGISTRY.items():
        mine = {c.steps: c for c in cells if c.sampler == sid}
        against = sweep.against(info)
        nfe = " / ".join(str(mine[s].nfe) if s in mine else "-" for s in LAB_STEPS)
        err = " / ".join(f"{mine[s].error:.2g}" if s in mine else "-" for s in LAB_STEPS)
        secs = f"{mine[40].seconds:.2f}" if 40 in mine else "-"
        a, b = r10.get((sid, "karras")), r40.get((sid, "karras"))
        rank = f"{a or '-'} / {b or '-'}" if against != sweep.Against.ODE_NO_LIMIT else "not ranked"
        rating = DOC_RATINGS.get(sid)
        stars = f"{rating[0]}, {'★' * rating[1]}, {'★' * rating[2]}" if rating else "not rated"
        out.append(f"| {info.name} | {nfe} | {err} | {secs} | {rank} | {against} | {stars} | {info.description} "
                   f"| {verdict(info, against, info.description, rating, a, b, n)} |")
    notes = [l for l in (run / "lab.md").read_text().splitlines() if l.startswith("- ")]
    out += ["", f"Ranks: by error at equal model calls (interpolated log-log between a sampler's runs, never extrapolated), "
            f"among the {n} samplers with a limit to converge to ({n10} reach 10 calls, {n40} reach 40). The run's own notes:", "", *notes,
            "", "![error against model calls](lab/readme_run/error_vs_nfe.png)", LAB_END]
    return "\n".join(out)


def main() -> int:
    if "--lab" in sys.argv:
        import subprocess

        subprocess.run([sys.executable, str(REPO / LAB_COMMAND.split()[0]), *LAB_COMMAND.split()[1:]], cwd=REPO, check=True)
    path = REPO / "README.md"
    text = path.read_text()
    new = updated(text)
    if "--check" in sys.argv:
        if new != text:
            print("README.md's sampler tables are out of date: run generate/readme_tables.py")
            return 1
        return 0
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
