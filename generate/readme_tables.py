"""Regenerate the README's generated sections: the sampler and schedule tables from the registries (the one
source of truth), and "Samplers, measured" from the sampler lab's recorded run beside the source document's ratings.

    .host/venv/bin/python generate/readme_tables.py          # rewrite README.md in place
    .host/venv/bin/python generate/readme_tables.py --check  # exit 1 if README.md is out of date
    .host/venv/bin/python generate/readme_tables.py --lab    # first re-run the lab (all samplers, karras, 5/10/20/40 steps;
                                                         # minutes on a CPU) into lab/readme_run/, then rewrite
    .host/venv/bin/python generate/readme_tables.py --judged # first run the judged sweep into lab/judged_run/ (resumes;
                                                         # `bench/sampler_lab.py --judged ... --ray` spreads it), then rewrite

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
JUDGED_START, JUDGED_END = "<!-- judged:start -->", "<!-- judged:end -->"
JUDGED_RUN = REPO / "lab" / "judged_run"  # bench/sampler_lab.py --judged's output: judged.csv, judged.json; the plots drawn here
JUDGED_COMMAND = "bench/sampler_lab.py --judged --samplers all --steps 5,10,20,40 --captions 168 --seeds 1 --batch 24 --out lab/judged_run"
CARD_START, CARD_END = "<!-- card:start -->", "<!-- card:end -->"
CARD = REPO / "embedded" / "card.json"  # embedded/card.py's counts for the shipped file


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
    if JUDGED_START in readme and (JUDGED_RUN / "judged.csv").exists():
        readme = replace_section(readme, JUDGED_START, JUDGED_END, judged_section())
    if CARD_START in readme and CARD.exists():
        readme = replace_section(readme, CARD_START, CARD_END, card_section())
    return readme


# ------------------------------------------------------------------------------------- the embedded model's card

def card_section(path: Path = CARD) -> str:
    """The model card's measured table from embedded/card.json (embedded/card.py): rates with 95% Wilson intervals."""
    import json

    samplers, _ = pack()
    from diffusion_anatomy.embedded.card import SAMPLERS, TARGETS, meets_targets, rate
    from diffusion_anatomy.embedded.judge import ATTRIBUTES, wilson

    card = json.loads(path.read_text())

    def cell(entry: dict, attribute: str) -> str:
        lo, hi = wilson(entry["right"][attribute], entry["n"])
        return f"{100 * rate(entry, attribute):.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"

    rows = [f"Measured by `python embedded/card.py embedded/{card['file']} --n {card['n']} --seed {card['seed']} "
            f"--out embedded/card.json` ({card['n']} held-out caption-seed pairs per row, {card['steps']} steps, "
            f"CFG {card['cfg']:g}, {card['schedule']} schedule; 95% Wilson intervals; {card['seconds'] / 60:.0f} min on this CPU):",
            "", "| pictures | all five | " + " | ".join(ATTRIBUTES) + " |", "|---|---|" + "---|" * len(ATTRIBUTES)]
    rt = card["roundtrip"]
    rows.append("| VAE round trip of true renders | " + " | ".join(cell(rt, a) for a in ("all", *ATTRIBUTES)) + " |")
    for sid in sorted(card["samplers"], key=lambda s: SAMPLERS.index(s) if s in SAMPLERS else len(SAMPLERS)):
        entry = card["samplers"][sid]
        rows.append(f"| {samplers.REGISTRY[sid].name}, text to image | " + " | ".join(cell(entry, a) for a in ("all", *ATTRIBUTES)) + " |")
    sw = card["swap"]
    lo, hi = wilson(sw["swapped"], sw["n"])
    short = meets_targets(card)
    rows += ["", f"Round trip: PSNR {rt['psnr_mean']:.2f} dB mean ({rt['psnr_min']:.2f} lowest); the brightest pixel of the mean "
             f"|decoded - render| is {rt['brightest_mean_error']:.1f}/255 (no fixed-position pattern). Colour words swapped "
             f"between shape and background swap in the picture in {sw['swapped']} of {sw['n']} pairs "
             f"({100 * sw['swapped'] / sw['n']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]). "
             + ("It meets every target of issue 20 (Euler at least "
                f"{TARGETS['all']:.0%} in all five and {TARGETS['attribute']:.0%} per attribute, the other samplers within "
                f"{TARGETS['sampler_gap'] * 100:.0f} points, colour swap at least {TARGETS['swap']:.0%}, round trip at least "
                f"{TARGETS['psnr']:.0f} dB and {TARGETS['roundtrip_all']:.0%})." if not short else
                "Short of issue 20's targets: " + "; ".join(short) + ".")]
    return "\n".join([CARD_START, *rows, CARD_END])


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


def judged_verdict(description: str, rating, r10, r40, n: int, sharp40: float | None) -> str:
    """The rule, stated in the README: a claim of quality, accuracy, detail or sharpness agrees when the sampler's
    adherence rank at 40 calls is in the top half of the n ranks; "few steps" agrees when its rank at 10 calls is
    in the top third; "sharp" also needs its mean sharpness at 40 calls at least 0.9 of the render's."""
    if r40 is None:
        return "no claim checked: it fits no budget of 40 calls (see its NFE)"
    text = description.lower()
    out = []
    top_third, top_half = math.ceil(n / 3), math.ceil(n / 2)
    if "few steps" in text or (rating and rating[0] == "very fast"):
        out.append(f"agrees: few steps suffice (rank {r10} at 10 calls)" if r10 is not None and r10 <= top_third else
                   f"disagrees: few steps do not suffice (rank {r10 if r10 is not None else '-'} at 10 calls)")
    if any(w in text for w in ("quality", "accura", "precise", "improves", "detail", "realistic")):
        out.append(f"agrees on quality (rank {r40} of {n} at 40 calls)" if r40 <= top_half else
                   f"disagrees: it claims quality, but ranks {r40} of {n} at 40 calls")
    if ("sharp" in text or (rating and rating[1] >= 5)) and sharp40 is not None and math.isfinite(sharp40):
        out.append(f"agrees on sharpness ({sharp40:.2f} of the render's)" if sharp40 >= 0.9 else
                   f"disagrees on sharpness: {sharp40:.2f} of the render's")
    return "; ".join(out) if out else "no claim the measurement can check"


def judged_plots(run: Path = JUDGED_RUN) -> None:
    """adherence_vs_nfe.png and frechet_vs_nfe.png of the run, and its summary.json (the groups, computed once)."""
    pack()
    import diffusion_anatomy.lab.judged_report as report

    _, table, _ = report.summary(run, write=True)
    report.facet_plot(table, lambda g: g.adherence["all"].value, "right in all five", "adherence against model calls",
                      limits=(0.0, 1.0)).save(run / "adherence_vs_nfe.png")
    if any(g.frechet is not None for g in table.values()):
        report.facet_plot(table, lambda g: g.frechet.value if g.frechet else None, "Fréchet distance", "Fréchet distance against model calls",
                          log_y=True).save(run / "frechet_vs_nfe.png")


def judged_section(run: Path = JUDGED_RUN) -> str:
    samplers, _ = pack()
    import diffusion_anatomy.lab.judged_report as report

    spec, table, n_rows = report.summary(run)
    r10, r40 = report.adherence_ranks(table, 10), report.adherence_ranks(table, 40)
    # every sampler at its largest run: an adaptive sampler (DPM-Adaptive) picks its own steps and may fit no smaller budget
    most = 10 * math.ceil(max(g.nfe for g in table.values()) / 10)
    r_most = report.adherence_ranks(table, most)
    f40 = report.frechet_ranks(table, 40)
    has_fd = any(g.frechet is not None for g in table.values())
    per = n_rows // max(1, len(table))
    n = len(r40)
    out = [JUDGED_START,
           f"{spec.captions} held-out captions x {spec.seeds} seed(s) = {per} pictures per sampler and step count, CFG {spec.cfg:g}, "
           f"{spec.schedule}; `{JUDGED_COMMAND.replace('lab/judged_run', 'DIR')}` makes such a run (this one: `lab/judged_run/judged.json`).",
           "",
           f"| sampler | NFE at 5 / 10 / 20 / 40 steps | right in all five, % | sharpness | Fréchet distance | rank at 10 / 40 / {most} calls "
           "| Fréchet rank at 40 calls | document: speed, sharpness, realism | document says | measurement vs document |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for sid, info in samplers.REGISTRY.items():
        g = {n_: table.get((sid, n_)) for n_ in LAB_STEPS}
        cell = lambda f: " / ".join(f(x) if x is not None else "-" for x in g.values())  # noqa: E731
        nfe = cell(lambda x: f"{x.nfe:.4g}")
        adh = cell(lambda x: f"{100 * x.adherence['all'].value:.0f}")
        sharp = cell(lambda x: f"{x.sharpness[0]:.2f}")
        fd = cell(lambda x: f"{x.frechet.value:.2g}" if x.frechet else "-")
        rating = DOC_RATINGS.get(sid)
        stars = f"{rating[0]}, {'★' * rating[1]}, {'★' * rating[2]}" if rating else "not rated"
        at40 = report.at_budget(table, 40).get(sid)
        out.append(f"| {info.name} | {nfe} | {adh} | {sharp} | {fd} | {r10.get(sid, '-')} / {r40.get(sid, '-')} / {r_most.get(sid, '-')} | {f40.get(sid, '-')} "
                   f"| {stars} | {info.description} | {judged_verdict(info.description, rating, r10.get(sid), r40.get(sid), n, at40.sharpness[0] if at40 else None)} |")
    out += ["", f"Adherence = share of pictures the judge (`embedded/judge.py`) reads right in all five attributes; sharpness = edge "
            "steepness of the outline over its own step height (1 = as crisp as the render); Fréchet distance = between the pictures and "
            "the true renders of their captions in 64 fixed features (colour and edge energy on a 4x4 grid), extrapolated to infinitely "
            f"many pictures, needing {128} or more per row (`lab/judged.py` says why). Ranks: at a budget of 10, 40 or {most} model calls, each "
            "sampler at its largest step count that fits, by the 95% Wilson interval of its adherence; samplers whose intervals overlap "
            f"share a rank, so a rank says how many samplers are surely better. {n} samplers ranked at 40 calls, all {len(r_most)} at "
            f"{most} (each at its largest run: a sampler that picks its own steps, as DPM-Adaptive does, may fit no smaller budget). Verdict rule: "
            "a claim of quality agrees when the rank at 40 calls is in the top half; \"few steps\" (or \"very fast\") when the rank "
            "at 10 calls is in the top third; sharpness when the mean at 40 calls is at least 0.9.",
            "", "![adherence against model calls](lab/judged_run/adherence_vs_nfe.png)",
            "", "![Fréchet distance against model calls](lab/judged_run/frechet_vs_nfe.png)" if has_fd else
            f"No Fréchet distances: this run has {per} pictures per row, fewer than the 128 they need.", JUDGED_END]
    return "\n".join(out)


def main() -> int:
    if "--judged" in sys.argv:
        import subprocess

        subprocess.run([sys.executable, str(REPO / JUDGED_COMMAND.split()[0]), *JUDGED_COMMAND.split()[1:]], cwd=REPO, check=True)
    if "--lab" in sys.argv:
        import subprocess

        subprocess.run([sys.executable, str(REPO / LAB_COMMAND.split()[0]), *LAB_COMMAND.split()[1:]], cwd=REPO, check=True)
    if "--check" not in sys.argv and (JUDGED_RUN / "judged.csv").exists():
        judged_plots()
    stale = []
    for path, update in ((REPO / "README.md", updated), (REPO / "embedded" / "README.md", updated_card)):
        text = path.read_text()
        new = update(text)
        if new != text:
            stale.append(path.relative_to(REPO))
            if "--check" not in sys.argv:
                path.write_text(new)
    if "--check" in sys.argv and stale:
        print(f"{', '.join(map(str, stale))}: generated sections out of date: run generate/readme_tables.py")
        return 1
    return 0


def updated_card(text: str) -> str:
    """embedded/README.md: only its copy of the model card."""
    return replace_section(text, CARD_START, CARD_END, card_section()) if CARD_START in text and CARD.exists() else text


if __name__ == "__main__":
    sys.exit(main())
