"""The sampler lab on the command line, in-process, no server: error per model call and per second.

    python bench/sampler_lab.py --samplers euler,heun --steps 5,10,20 --schedule karras --out DIR
        [--samplers all] [--prompt "..."] [--negative ""] [--cfg 5] [--seed 0] [--verify-reference]
        [--checkpoint FILE]

writes DIR/lab.csv (columns sampler, schedule, steps, nfe, seconds, error), DIR/grid.png,
DIR/error_vs_nfe.png and DIR/lab.md, and prints the Markdown. The embedded model by default
(pure torch, as embedded/sample.py draws); `--checkpoint FILE` for another file the pack's loader
builds without ComfyUI: an SD1.x eps checkpoint (LDM layout; `--size`, default 512) or a pack-made one
with its configs in the metadata. `--schedule` takes a comma list. `--verify-reference` also solves the reference with every step
halved and reports the change (3x its cost). Same engine as the Sampler Lab node (`lab/`).

Judged sweep (embedded model): what each sampler draws, judged (`lab/judged.py`):

    python bench/sampler_lab.py --judged --captions 200 --seeds 1 --batch 20 --samplers all --steps 5,10,20,40 --out DIR
        [--ray [ADDRESS]] [--workers N]

runs cells (sampler x steps x caption batch x seed) and appends their rows to DIR/judged.csv as they
finish (DIR/judged.json says which sweep they belong to); the same command again skips the cells already
there. `--ray` spreads the cells over a Ray cluster (ADDRESS HOST:PORT, or a new local one without it;
`pip install -r lab/requirements-ray.txt`), one worker per CPU or GPU, each loading the model once.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "harness"))  # diffusion_anatomy: the repo root as the pack, without ComfyUI

import torch  # noqa: E402

from diffusion_anatomy.lab import report  # noqa: E402
from diffusion_anatomy.lab.sweep import LabError, parse_samplers, parse_schedules, parse_steps, sweep  # noqa: E402
from diffusion_anatomy.lab.torch_backend import embedded_backend  # noqa: E402

DEFAULT_PROMPT = "a large red circle at the top left on a blue background"


def run(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samplers", default="euler,heun,dpmpp_2m", help="'all' or a comma list of sampler ids")
    ap.add_argument("--steps", default="5,10,20,40", help="comma list of step counts")
    ap.add_argument("--schedule", default="karras", help="comma list of schedule names")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--checkpoint", type=Path, default=None, help="an SD1.x eps checkpoint or a pack-made one (default: the embedded model)")
    ap.add_argument("--size", type=int, default=None, help="picture side in pixels (default: the model's, 64 embedded, 512 SD1.x)")
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("--negative", default="")
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verify-reference", action="store_true")
    ap.add_argument("--judged", action="store_true", help="a judged sweep on the embedded model's held-out captions (judged.csv)")
    ap.add_argument("--captions", type=int, default=20, help="judged: held-out captions")
    ap.add_argument("--seeds", type=int, default=1, help="judged: seeds per caption")
    ap.add_argument("--batch", type=int, default=10, help="judged: pictures per cell")
    ap.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                    help="judged: run the cells on Ray (a cluster's HOST:PORT, or a new local one without ADDRESS)")
    ap.add_argument("--workers", type=int, default=None, help="judged, --ray: actors to start (default: the cluster's GPUs or CPUs)")
    args = ap.parse_args(argv)
    if args.judged or args.ray is not None:
        return run_judged(ap, args)
    try:
        samplers, steps, schedules = parse_samplers(args.samplers), parse_steps(args.steps), parse_schedules(args.schedule)
    except LabError as error:
        ap.error(str(error))
    try:
        backend = embedded_backend(args.prompt, args.negative, args.cfg, args.seed, path=args.checkpoint, size=args.size)
    except LabError as error:
        ap.error(str(error))
    t0 = time.perf_counter()
    result = sweep(backend, samplers, schedules, steps, verify_reference=args.verify_reference)
    t_decode = time.perf_counter()
    pictures = backend.pictures([c.latent for c in result.cells])
    t_draw = time.perf_counter()
    title = f"Sampler Lab: cfg {args.cfg:g}, seed {args.seed}"
    grid = report.grid_image(result, list(pictures), title)
    plot = report.plot_image(result, f"error against model calls ({', '.join(s.name for s in schedules)})")
    drawing = time.perf_counter() - t_draw
    decoding = t_draw - t_decode
    args.out.mkdir(parents=True, exist_ok=True)
    grid.save(args.out / "grid.png")
    plot.save(args.out / "error_vs_nfe.png")
    (args.out / "lab.csv").write_text(report.csv_text(result.cells))
    runs = max(result.seconds_cells, 1e-9)
    md = report.markdown(result) + (f"- drawing the grid and the plot: {drawing:.2f} s ({100 * drawing / runs:.1f}% of the runs); "
                                    f"decoding the {len(result.cells)} pictures with the VAE (one batch): {decoding:.2f} s "
                                    f"({100 * decoding / runs:.1f}% of the runs)\n")
    (args.out / "lab.md").write_text(md)
    print(md)
    print(f"wrote {args.out}/lab.csv, grid.png, error_vs_nfe.png, lab.md ({time.perf_counter() - t0:.1f} s)")
    return {"result": result, "drawing": drawing, "decoding": decoding, "backend": backend}


def run_judged(ap, args) -> dict:
    from diffusion_anatomy.embedded import WEIGHTS
    from diffusion_anatomy.lab import judged_sweep

    if len(args.schedule.split(",")) != 1:
        ap.error("--judged runs one schedule")
    try:
        spec = judged_sweep.make_spec(args.checkpoint or WEIGHTS, args.samplers, args.steps, args.captions, args.seeds, args.batch,
                                      args.schedule.strip(), args.cfg, args.negative)
        runner = None
        if args.ray is not None:
            from diffusion_anatomy.lab.ray_runner import check_reachable, run_on_ray

            if args.ray:
                check_reachable(args.ray)  # before anything is read or written
            runner = run_on_ray(args.ray or None, args.workers, threads=THREADS, pid_file=args.out / "ray_workers.txt")
        else:
            runner = lambda spec, todo, on_rows: judged_sweep.run_local(spec, todo, on_rows, THREADS)  # noqa: E731
        counts = judged_sweep.run_sweep(spec, args.out, runner, log=lambda line: print(line, flush=True))
    except LabError as error:
        print(f"sampler_lab: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"judged sweep: {counts['computed']} cells computed, {counts['skipped']} already there, {counts['seconds']:.1f} s; "
          f"rows in {args.out / judged_sweep.RESULTS}", flush=True)
    return counts


THREADS = int(__import__("os").environ.get("LAB_THREADS", "1"))  # an 8x8 latent gains nothing from more threads; they contend

if __name__ == "__main__":
    torch.set_grad_enabled(False)
    torch.set_num_threads(THREADS)
    run()
