"""Sampler Lab over HTTP: the bundled workflow as shipped, its CSV and figures, bad input, interrupt.

The lab's figures against direct runs and the orders of convergence are tested on the pure engine
(tests/pure/test_lab.py); here the node's path through ComfyUI's sampling is checked end to end.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfy_server import ComfyError
from support.graphs import interrupt_at_progress

pytestmark = pytest.mark.server

WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "api" / "sampler_lab.json"


def lab_graph(**inputs) -> dict:
    graph = json.loads(WORKFLOW.read_text())
    graph["5"]["inputs"].update(inputs)
    return graph


# A short run whose reference is cheap to solve, for "the server keeps serving" checks: the lab's own
# schedules span the model's whole sigma range (14.6 to 0.029: ~1,190 reference steps, ~2,400 guided calls,
# lab/reference.py), this one sigma 1.0 to 0.9 then 0 (about 30 steps, 65 calls), given as a SIGMAS input
# from core's KarrasScheduler. The check is the same: the lab runs and the CSV has the row asked for.
CHEAP_SIGMAS = {"class_type": "KarrasScheduler", "inputs": {"steps": 2, "sigma_max": 1.0, "sigma_min": 0.9, "rho": 7.0}}


def cheap_lab_graph(samplers: str = "euler") -> dict:
    graph = lab_graph(samplers=samplers, steps="2", schedules="", sigmas=["cheap", 0])
    graph["cheap"] = CHEAP_SIGMAS
    return graph


def csv_rows(server, outputs: dict) -> list[dict]:
    (path,) = outputs["5"]["csv"]
    with open(server.work / "output" / path, newline="") as f:
        return list(csv.DictReader(f))


def test_bundled_lab_workflow_runs_as_shipped(server):
    """As shipped, the lab solves the ODE reference over the model's whole sigma range (about 2,400 guided model
    calls: minutes on a busy CPU, hence the long timeout) unless a server of this run solved it (the suite's servers
    share one reference store, tests/conftest.py; test_workflows.py and the browser tests run the same graph). No
    other test depends on it: the later ones bring their own."""
    graph = json.loads(WORKFLOW.read_text())
    outputs = server.run(graph, timeout=1800)
    lab = graph["5"]["inputs"]
    samplers = [s.strip() for s in lab["samplers"].split(",")]
    steps = [int(s) for s in lab["steps"].split(",")]
    rows = csv_rows(server, outputs)
    assert list(rows[0]) == ["sampler", "schedule", "steps", "nfe", "seconds", "error"]
    assert [(r["sampler"], int(r["steps"])) for r in rows] == [(s, n) for s in samplers for n in steps]
    for r in rows:
        if r["sampler"] in ("euler", "dpmpp_2m", "euler_ancestral", "dpmpp_2m_sde"):
            assert int(r["nfe"]) == int(r["steps"]), r
        if r["sampler"] == "heun":
            assert int(r["nfe"]) == 2 * int(r["steps"]) - 1, r  # last step to sigma 0 is a single Euler call
    euler = {int(r["steps"]): float(r["error"]) for r in rows if r["sampler"] == "euler"}
    assert euler[5] > euler[10] > euler[20] > 0  # converging to the reference
    files = {f.name.rsplit("_", 2)[0]: f for f in server.output_files(outputs)}
    grid = np.asarray(Image.open(files["sampler_lab_grid"]).convert("RGB"))
    plot = np.asarray(Image.open(files["sampler_lab_plot"]).convert("RGB"))
    assert grid.shape[0] > 96 * len(samplers) and grid.shape[1] > 96 * len(steps)
    assert plot.shape[1] == 900 and plot.std() > 5
    assert "| Euler (`euler`) | karras | 20 |" in outputs["5"]["text"][0]
    # the embedded model, its VAE and the prompt's text: the judged columns, one row per cell, n = the latent batch (1)
    judged = [l for l in outputs["5"]["text"][0].splitlines() if l.startswith("| Euler | karras |")]
    assert len(judged) == len(steps) and all(" | 1/1 | " in l or " | 0/1 | " in l for l in judged), judged


def expect_lab_error(server, *fragments, **inputs):
    with pytest.raises(ComfyError) as err:
        server.run(lab_graph(**inputs))
    for fragment in fragments:
        assert fragment.lower() in str(err.value).lower(), str(err.value)


@pytest.mark.parametrize("inputs, fragments", [
    ({"samplers": "euler, no_such_sampler"}, ("Sampler Lab", "samplers", "no_such_sampler")),
    ({"samplers": " , "}, ("Sampler Lab", "samplers", "empty")),
    ({"steps": "0"}, ("Sampler Lab", "steps", "0 is not allowed")),
    ({"steps": ""}, ("Sampler Lab", "steps", "empty")),
    ({"schedules": "karras, nope"}, ("Sampler Lab", "schedules", "nope")),
])
def test_bad_input_is_named_and_the_server_keeps_serving(server, inputs, fragments):
    expect_lab_error(server, *fragments, **inputs)
    outputs = server.run(cheap_lab_graph())
    assert [int(r["nfe"]) for r in csv_rows(server, outputs)] == [2]


def test_sampler_and_sigmas_inputs_join_the_sweep(server):
    """Core's KSamplerSelect as a SAMPLER input and a SIGMAS input (a schedule of its own) join the sweep.

    The comparison with the lab's own karras schedule needs the whole-range reference: solved here unless a
    server of this run holds it already (the bundled graph's, same model, prompt, latent, seed and cfg), hence the timeout.
    Core's karras sigmas (float32) and the pack's (float64) agree to 1e-7: one reference serves both schedules."""
    graph = lab_graph(samplers="euler", steps="3", sampler=["s", 0], sampler_name="core euler", sigmas=["sig", 0])
    graph["s"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    graph["sig"] = {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "karras", "steps": 3, "denoise": 1.0}}
    outputs = server.run(graph, timeout=1800)
    rows = csv_rows(server, outputs)
    assert {(r["sampler"], r["schedule"], int(r["nfe"])) for r in rows} == {
        ("euler", "karras", 3), ("euler", "input sigmas", 3), ("core euler", "karras", 3), ("core euler", "input sigmas", 3)}
    errors = {(r["sampler"], r["schedule"]): float(r["error"]) for r in rows}
    assert len([l for l in outputs["5"]["text"][0].splitlines() if l.startswith("- reference (")]) == 1
    # core's Euler and the pack's on the same sigmas (core's karras = the pack's) give the same latent
    assert errors[("core euler", "karras")] == pytest.approx(errors[("euler", "karras")], rel=1e-4)
    assert errors[("euler", "input sigmas")] == pytest.approx(errors[("euler", "karras")], rel=1e-4)


def reference_line(outputs: dict) -> str:
    (line,) = [l for l in outputs["5"]["text"][0].splitlines() if l.startswith("- reference (")]
    return line


def test_reference_is_reused_after_other_graphs_and_never_for_a_patched_model(server):
    """The lab keys its reference cache by what the reference depends on (lab/sweep.py identity), not by the
    objects of one execution: run again after another graph (ComfyUI dropped the loader's output, so the file is
    loaded anew) the same problem reuses its reference; the same model with core's FreeU_V2 on it is solved anew.
    Before, the key was the model object's id, wrong both ways: every reload missed, and a patched clone (which
    shares its base's module and weight patches) took its base's reference. A seed of its own: no earlier test
    solved this problem."""
    graph = cheap_lab_graph()
    graph["5"]["inputs"]["seed"] = 7_170_001
    first = server.run(graph)
    assert "reused" not in reference_line(first)
    server.run({"1": {"class_type": "DiffusionAnatomyExamplePicture", "inputs": {
        "shape": "square", "colour": "green", "size": "large", "position": "bottom right", "background": "white"}},
                "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}})
    graph["5"]["inputs"]["samplers"] = "euler, heun"  # a change, so that ComfyUI runs the lab again
    again = server.run(graph)
    assert "reused" in reference_line(again)
    assert [r for r in csv_rows(server, again) if r["sampler"] == "euler"][0]["error"] == csv_rows(server, first)[0]["error"]
    graph["freeu"] = {"class_type": "FreeU_V2", "inputs": {"model": ["1", 0], "b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2}}
    graph["5"]["inputs"]["model"] = ["freeu", 0]
    patched = server.run(graph)
    assert "reused" not in reference_line(patched)
    assert csv_rows(server, patched)[0]["error"] != csv_rows(server, first)[0]["error"]


def test_interrupt_stops_the_sweep_within_one_step(server):
    graph = lab_graph(samplers="euler", steps="400, 401")
    events, progress, interrupted_at = interrupt_at_progress(server, graph, "5", 3)
    assert events[-1] == "execution_interrupted", events[-5:]
    assert interrupted_at is not None and max(progress) <= interrupted_at + 1, (interrupted_at, progress[-3:])
    assert [int(r["nfe"]) for r in csv_rows(server, server.run(cheap_lab_graph()))] == [2]  # still serving
