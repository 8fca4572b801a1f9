"""A judged sweep on the embedded model: cells (sampler x steps x caption batch x seed), each drawn, decoded, judged.

A cell is the unit of work a runner hands out (in this process, or to a Ray worker: `ray_runner.py`): the
same function `run_cell` computes it wherever it runs, from the cell's key alone, so a cell's numbers do not
depend on where or in which order it ran (its noise comes from its own seeds; torch runs on one thread).
Its rows (one per picture) are appended to `judged.csv` as the cell arrives; a second run of the same
command skips the cells already there (resume). `judged.json` beside it holds what makes a cell's content
(model file digest, schedule, CFG, negative prompt, caption set, batch size): a results file of another
sweep is refused, never appended to.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from ..embedded.data import HELD_OUT, POSITIONS, Caption
from .sweep import LabError, parse_samplers, parse_steps

RESULTS, SPEC = "judged.csv", "judged.json"
CAPTION_SEED = 19  # the order and jitter of the held-out captions; any seed gives held-out captions
SEED_STRIDE = 100_003  # picture seed = seed * SEED_STRIDE + caption index: distinct for every (seed, caption) under 100k captions
IDENTITY = ("model_sha1", "schedule", "cfg", "negative", "captions", "caption_seed", "batch")  # what a cell's content depends on
COLUMNS = ("sampler", "schedule", "steps", "batch", "seed", "caption", "nfe", "seconds", "latent_sha1",
           "shape", "colour", "size", "position", "background", "reason",
           "right_shape", "right_colour", "right_size", "right_position", "right_background", "right_all",
           "sharpness", "features")


def file_sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Spec:
    """A judged sweep: which cells, and what a cell's content depends on (`IDENTITY`)."""
    model: str
    model_sha1: str
    samplers: tuple[str, ...]
    steps: tuple[int, ...]
    seeds: int
    captions: int
    batch: int
    schedule: str = "karras"
    cfg: float = 5.0
    negative: str = ""
    caption_seed: int = CAPTION_SEED

    def identity(self) -> dict:
        return {k: getattr(self, k) for k in IDENTITY}

    def cells(self) -> list[tuple[str, int, int, int]]:
        """(sampler, steps, batch index, seed), sampler-major: every key a runner hands out."""
        batches = math.ceil(self.captions / self.batch)
        return [(s, n, b, seed) for s in self.samplers for n in self.steps for b in range(batches) for seed in range(self.seeds)]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_dict(cls, d: dict) -> "Spec":
        d = dict(d)
        d["samplers"], d["steps"] = tuple(d["samplers"]), tuple(d["steps"])
        return cls(**d)


def make_spec(model: Path, samplers: str | Sequence[str], steps: str | Sequence[int], captions: int, seeds: int, batch: int,
              schedule: str = "karras", cfg: float = 5.0, negative: str = "") -> Spec:
    """A Spec from command-line values; raises LabError naming a bad one."""
    from ..samplers.schedules import SCHEDULES

    ids, counts = parse_samplers(samplers), parse_steps(steps)
    if captions < 1:
        raise LabError(f"captions: {captions} is not allowed; a judged sweep needs at least 1 caption")
    if seeds < 1:
        raise LabError(f"seeds: {seeds} is not allowed; give at least 1")
    if batch < 1:
        raise LabError(f"batch: {batch} is not allowed; give at least 1 picture per cell")
    if schedule not in SCHEDULES:
        raise LabError(f"schedule: unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    if not Path(model).is_file():
        raise LabError(f"checkpoint: no file {model}")
    return Spec(str(model), file_sha1(Path(model)), tuple(ids), tuple(counts), seeds, captions, min(batch, captions), schedule, cfg, negative)


def eval_captions(n: int, seed: int = CAPTION_SEED) -> list[Caption]:
    """n captions the model was not trained on: the held-out attribute sets (`data.HELD_OUT`) in a seeded order,
    repeated as needed, each with its own uniform jitter (as the world draws it)."""
    from ..embedded.data import JITTER

    keys = sorted(HELD_OUT)
    g = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(keys), generator=g) for _ in range(math.ceil(n / len(keys)))])[:n].tolist()
    jitter = ((torch.rand(n, 2, generator=g) * 2 - 1) * JITTER).tolist()
    out = []
    for i, k in enumerate(order):
        shape, colour, size, position, background = keys[k]
        x, y = POSITIONS[position]
        out.append(Caption(shape, colour, size, position, background, (x + jitter[i][0], y + jitter[i][1])))
    return out


# --------------------------------------------------------------------------------------------- one cell

@dataclass
class Loaded:
    """The model a worker loads once, and what it reuses between cells."""
    spec: Spec
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    prompts: object
    captions: list[Caption]
    device: torch.device
    contexts: dict = field(default_factory=dict)


def load(spec: Spec, device: str = "cpu", tokenizer_dir: str | None = None) -> Loaded:
    """The model of `spec` on `device`; `tokenizer_dir` holds CLIP's vocab.json and merges.txt (found from the host
    ComfyUI when None: a Ray worker is given the driver's, its environment may lack DA_HOST_DIR)."""
    from ..clip.tokenizer import BPETokenizer
    from ..embedded.train import Prompts, default_tokenizer_dir
    from .torch_backend import load_models

    path = Path(spec.model)
    if file_sha1(path) != spec.model_sha1:
        raise LabError(f"checkpoint: {path} is not the file this sweep was made with (its digest changed)")
    unet, vae, text_encoder, _ = load_models(path)
    dev = torch.device(device)
    return Loaded(spec, unet.to(dev), vae.to(dev), text_encoder, Prompts(BPETokenizer.from_dir(tokenizer_dir or default_tokenizer_dir()), text_encoder),
                  eval_captions(spec.captions, spec.caption_seed), dev)


def _context(model: Loaded, batch: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    if batch not in model.contexts:
        index = list(range(batch * model.spec.batch, min((batch + 1) * model.spec.batch, model.spec.captions)))
        texts = [model.captions[i].text for i in index]
        ctx = model.prompts.encode(model.text_encoder, texts + [model.spec.negative]).to(model.device)
        model.contexts[batch] = (ctx[:-1], ctx[-1:], index)
    return model.contexts[batch]


def _f(x: float) -> str:
    return repr(float(x))  # shortest text that reads back to the same float: rows compare bit for bit


@torch.no_grad()
def run_cell(model: Loaded, key: tuple[str, int, int, int], threads: int = 1) -> list[dict]:
    """The rows (one per picture) of one cell, as plain strings: the same bits wherever it runs."""
    from ..embedded.sample import DiscreteEpsDenoiser, start_latent
    from ..samplers.schedules import calculate_sigmas
    from . import judged
    from .sweep import counted, sampler_fn

    sampler, steps, batch, seed = key
    kept = torch.get_num_threads()
    torch.set_num_threads(threads)  # results of CPU kernels can depend on the thread count
    try:
        context, uncond, index = _context(model, batch)
        denoiser = DiscreteEpsDenoiser(model.unet, context, uncond, model.spec.cfg)
        denoiser.sigmas, denoiser.log_sigmas = denoiser.sigmas.to(model.device), denoiser.log_sigmas.to(model.device)
        sigmas = calculate_sigmas(model.spec.schedule, steps, model_sigmas=denoiser.sigmas.cpu()).to(model.device)
        seeds = [seed * SEED_STRIDE + i for i in index]
        side = model.vae.cfg.downscale
        shape = (model.unet.config.in_channels, 64 // side, 64 // side)
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]).to(model.device)
        counter: dict = {}
        t0 = time.perf_counter()
        latent = counted(sampler_fn(sampler), counter)(denoiser, start_latent(noise, sigmas, denoiser.sigmas), sigmas,
                                                        extra_args={"seed": seeds[0]}, disable=True)
        images = model.vae.decode(model.vae.from_latent(latent)).float().cpu().clamp(-1, 1)
        seconds = time.perf_counter() - t0
        digest = hashlib.sha1(latent.float().cpu().contiguous().numpy().tobytes()).hexdigest()
        captions = [model.captions[i] for i in index]
        from ..embedded.judge import correct, judge

        verdicts = judge(images)
        feats = judged.features(images)
    finally:
        torch.set_num_threads(kept)
    rows = []
    for k, (i, caption, verdict) in enumerate(zip(index, captions, verdicts)):
        right = correct(verdict, caption)
        rows.append({"sampler": sampler, "schedule": model.spec.schedule, "steps": str(steps), "batch": str(batch), "seed": str(seed),
                     "caption": str(i), "nfe": str(counter["calls"]), "seconds": f"{seconds / len(index):.5f}", "latent_sha1": digest,
                     **{a: getattr(verdict, a) or "" for a in judged.ATTRIBUTES}, "reason": verdict.reason or "",
                     **{f"right_{a}": str(int(bool(right[a]))) for a in (*judged.ATTRIBUTES, "all")},
                     "sharpness": _f(judged.sharpness(images[k], caption)), "features": " ".join(_f(v) for v in feats[k].tolist())})
    return rows


# --------------------------------------------------------------------------------------------- the results file

def cell_key(row: dict) -> tuple[str, int, int, int]:
    return row["sampler"], int(row["steps"]), int(row["batch"]), int(row["seed"])


def batch_size(spec: Spec, batch: int) -> int:
    return min(spec.batch, spec.captions - batch * spec.batch)


def read_results(out: Path, spec: Spec) -> dict[tuple, list[dict]]:
    """The finished cells of `out` (complete ones: as many rows as the cell has pictures), after checking that the
    file belongs to this sweep; raises LabError naming the difference, touching nothing."""
    results, spec_file = out / RESULTS, out / SPEC
    if not results.exists() and not spec_file.exists():
        return {}
    if not spec_file.exists():
        raise LabError(f"resume: {results} has no {SPEC} beside it: not a results file of a judged sweep; give another --out")
    try:
        theirs = json.loads(spec_file.read_text())
    except json.JSONDecodeError as error:
        raise LabError(f"resume: {spec_file} is not readable JSON ({error}); give another --out") from None
    mine = spec.identity()
    diff = [f"{k} {theirs.get(k)!r} there, {mine[k]!r} here" for k in IDENTITY if theirs.get(k) != mine[k]]
    if diff:
        raise LabError(f"resume: {out} holds another sweep's results ({'; '.join(diff)}); give another --out, nothing was changed")
    if not results.exists():
        return {}
    with open(results, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise LabError(f"resume: {results} has columns {reader.fieldnames}, not a judged sweep's; give another --out")
        rows = list(reader)
    cells: dict[tuple, list[dict]] = {}
    for row in rows:
        cells.setdefault(cell_key(row), []).append(row)
    return {k: v for k, v in cells.items() if len(v) == batch_size(spec, k[2])}


class ResultsFile:
    """Appends each cell's rows as one write, flushed to disk, so a cell is in the file whole or not at all."""

    def __init__(self, out: Path, spec: Spec):
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / RESULTS
        fresh = not self.path.exists()
        spec_file = out / SPEC
        if spec_file.exists():  # same identity (checked by read_results): record the union of cells asked for
            old = Spec.from_dict(json.loads(spec_file.read_text()))
            spec = Spec(**{**asdict(spec), "samplers": tuple(dict.fromkeys((*old.samplers, *spec.samplers))),
                           "steps": tuple(sorted({*old.steps, *spec.steps})), "seeds": max(old.seeds, spec.seeds)})
        spec_file.write_text(spec.to_json())
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if fresh:
            self._write([], header=True)

    def _write(self, rows: list[dict], header: bool = False) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, COLUMNS, lineterminator="\n")
        if header:
            w.writeheader()
        w.writerows(rows)
        os.write(self.fd, buf.getvalue().encode())
        os.fsync(self.fd)

    def append(self, rows: list[dict]) -> None:
        self._write(rows)

    def close(self) -> None:
        os.close(self.fd)


def run_local(spec: Spec, todo: Iterable[tuple], on_rows: Callable[[tuple, list[dict]], None], threads: int = 1) -> None:
    """The default runner: every cell in this process, the model loaded once."""
    todo = list(todo)
    if not todo:
        return
    model = load(spec)
    for key in todo:
        on_rows(key, run_cell(model, key, threads))


def run_sweep(spec: Spec, out: Path, runner: Callable | None = None, log: Callable[[str], None] = print) -> dict:
    """Run the cells of `spec` not yet in `out` with `runner(spec, todo, on_rows)` (in-process by default), appending
    each cell's rows as it arrives. Returns counts: planned, skipped (already there), computed."""
    done = read_results(out, spec)  # raises before anything is written when the file is another sweep's
    plan = spec.cells()
    todo = [k for k in plan if k not in done]
    log(f"judged sweep: {len(plan)} cells, {len(plan) - len(todo)} already in {out / RESULTS}, {len(todo)} to run")
    file = ResultsFile(out, spec)
    written: set = set(done)
    t0 = time.perf_counter()

    def on_rows(key, rows):
        if key in written:  # a retried cell that had arrived already: never twice in the file
            return
        written.add(key)
        file.append(rows)
        log(f"  cell {len(written) - (len(plan) - len(todo))}/{len(todo)}: {key[0]} {key[1]} steps, batch {key[2]}, seed {key[3]} "
            f"({time.perf_counter() - t0:.1f} s)")

    try:
        (runner or run_local)(spec, todo, on_rows)
    finally:
        file.close()
    return {"planned": len(plan), "skipped": len(plan) - len(todo), "computed": len(written) - len(done),
            "seconds": time.perf_counter() - t0}
