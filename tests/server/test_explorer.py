"""The Anatomy Explorer's run store over HTTP on the real server: the bundled workflows record runs whose files
the pack's routes serve (and what they serve is what the run did), only the newest `keep_runs` runs stay, an
interrupted run stays readable and is marked partial, and bad names, links and bad inputs are refused while
the server keeps serving."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfy_server import ComfyError

pytestmark = pytest.mark.server

API = Path(__file__).resolve().parents[2] / "workflows" / "api"
ROUTE = "/diffusion_anatomy/explorer"
CAPTURE = "DiffusionAnatomyExplorerCapture"


def load(name: str) -> dict:
    return json.loads((API / f"{name}.json").read_text())


def nodes_of(graph: dict, class_type: str) -> list[dict]:
    return [n for n in graph.values() if n["class_type"] == class_type]


def fetch(server, path: str) -> tuple[int, bytes, dict]:
    try:
        with urllib.request.urlopen(server.url + path, timeout=60) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def runs(server) -> list[dict]:
    status, body, _ = fetch(server, f"{ROUTE}/runs")
    assert status == 200
    return json.loads(body)["runs"]


def store_root(server) -> Path:
    (root,) = [p for p in Path(server.work).rglob("diffusion_anatomy/runs") if p.is_dir()]
    return root


def f16(data: bytes, shape) -> np.ndarray:
    return np.frombuffer(data, dtype="<f2").astype(np.float32).reshape(shape)


@pytest.fixture(scope="module")
def recorded(server):
    """The bundled Anatomy Explorer workflow run once, as shipped: (its run's index, the saved picture)."""
    before = {r["id"] for r in runs(server)}
    outputs = server.run(load("anatomy_explorer"))
    (new,) = [r for r in runs(server) if r["id"] not in before]
    status, body, _ = fetch(server, f"{ROUTE}/runs/{new['id']}/index.json")
    assert status == 200
    (picture,) = server.output_files(outputs)
    return json.loads(body), np.asarray(Image.open(picture).convert("RGB"))


def test_the_run_is_served_and_holds_what_the_run_did(server, recorded):
    index, picture = recorded
    run = index["id"]
    assert index["status"] == "complete" and index["recorded_steps"] == index["steps"] == 20
    assert index["sampler"] == "dpmpp_2m" and index["seed"] == 42 and index["cfg"] == 5.0
    assert index["model"].endswith("tiny_shapes_sd1.safetensors")
    texts = [t["text"] for t in index["tokens"]["items"]]
    assert texts == ["<BOS>", *index["prompt"].split(), "<EOS>"] and index["tokens"]["padding"] == 77 - 2 - 12
    # every file of the index is served, with the size it has on disk
    total = 0
    for name in index["files"].values():
        status, body, headers = fetch(server, f"{ROUTE}/runs/{run}/{name}")
        assert status == 200, name
        total += len(body)
    assert total == index["bytes"]
    # the x0 atlas's last tile is the saved picture (the VAE decode of the last x0 is the picture the workflow
    # saves: DPM++ 2M's last step lands on its x0; tiles are at most 128 px, the picture is 64 px: the same pixels)
    _, body, _ = fetch(server, f"{ROUTE}/runs/{run}/x0.png")
    atlas = np.asarray(Image.open(__import__("io").BytesIO(body)).convert("RGB"))
    th, tw = index["pictures"]["tile"]
    last = 19
    tile = atlas[(last // 16) * th:(last // 16 + 1) * th, (last % 16) * tw:(last % 16 + 1) * tw]
    assert tile.shape == picture.shape
    assert np.abs(tile.astype(int) - picture.astype(int)).max() <= 1
    # the latents: uncond + cfg (cond - uncond) is the guided x0 at every step (float16 storage: 1e-2 of the range)
    _, body, _ = fetch(server, f"{ROUTE}/runs/{run}/latents.f16")
    lat = f16(body, index["latents"]["shape"])
    x0, cond, uncond = lat[:, 1], lat[:, 2], lat[:, 3]
    assert np.abs(uncond + 5.0 * (cond - uncond) - x0).max() <= 1e-2 * np.abs(x0).max()
    # the word maps: [steps, 3 levels, 14 tokens, 8, 8]; each layer's attention is a distribution over the 77
    # tokens, so BOS + words + EOS hold at most all of it at each place: the 7 layers of a step sum to at most 7
    # (more would mean calls of another step, or the unconditional half, counted in; the rest is on the padding)
    _, body, _ = fetch(server, f"{ROUTE}/runs/{run}/attention.f16")
    att = f16(body, index["attention"]["shape"])
    assert att.shape == (20, 3, 14, 8, 8)
    per_position = att.sum(axis=(1, 2))  # [steps, 8, 8]: summed over the layers of a step (7 here)
    assert (per_position <= 7 * 1.001).all() and (per_position > 0).all()
    # the U-Net levels at every step (levels_every 1), 8 levels of the tiny U-Net
    assert [s["i"] for s in index["unet"]["steps"]] == list(range(20)) and len(index["unet"]["names"]) == 8


def test_data_per_run_is_small(recorded):
    index, _ = recorded
    print(f"embedded model, 64x64, 20 steps: {index['bytes']} bytes per run")
    assert index["bytes"] < 1_000_000


def test_bad_names_and_links_are_refused_and_the_server_keeps_serving(server, recorded):
    index, _ = recorded
    run = index["id"]
    root = store_root(server)
    secret = root.parent / "secret.json"
    secret.write_text('{"secret": true}')
    (root / run / "link.json").symlink_to(secret)
    linked_run = "20000101-000000-000-abcd"
    (root / linked_run).symlink_to(root / run, target_is_directory=True)
    bad = [f"{run}/..%2Fsecret.json", f"{run}/%2E%2E", f"..%2F{run}/index.json", f"{run}/link.json", f"{linked_run}/index.json",
           f"{run}/%2Fetc%2Fpasswd", f"{run}/index.py", "nope/index.json", f"{run}/missing.png"]
    for path in bad:
        status, body, _ = fetch(server, f"{ROUTE}/runs/{path}")
        assert status in (400, 404), (path, status)
        assert b"\"secret\": true" not in body  # the error may echo the name asked for, never the file
    status, body, _ = fetch(server, f"{ROUTE}/runs/{run}/link.json")
    assert json.loads(body)["error"].startswith(f"run {run} has no file")
    # the links are not listed as runs, and the store still answers
    assert linked_run not in [r["id"] for r in runs(server)]
    (root / linked_run).unlink()
    (root / run / "link.json").unlink()
    assert fetch(server, f"{ROUTE}/runs/{run}/index.json")[0] == 200
    # the routes only read: no method writes or deletes
    for method in ("POST", "DELETE", "PUT"):
        req = urllib.request.Request(f"{server.url}{ROUTE}/runs/{run}/index.json", data=b"{}", method=method)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=30)
        assert err.value.code in (404, 405)
    assert (root / run / "index.json").is_file()


def test_only_the_newest_runs_are_kept(server, recorded):
    graph = load("anatomy_explorer")
    for n in nodes_of(graph, CAPTURE):
        n["inputs"].update(keep_runs=2, levels_every=0, pictures="latent_preview")
    for n in nodes_of(graph, "DiffusionAnatomyScheduler"):
        n["inputs"]["steps"] = 3
    ids = []
    for seed in (1, 2, 3):
        for n in nodes_of(graph, "DiffusionAnatomyUNetDenoise"):
            n["inputs"]["seed"] = seed
        server.run(graph)
        ids.append(runs(server)[0]["id"])
    listed = [r["id"] for r in runs(server)]
    assert listed == [ids[2], ids[1]]
    assert sorted(p.name for p in store_root(server).iterdir() if p.is_dir()) == sorted(listed)
    status, body, _ = fetch(server, f"{ROUTE}/runs/{ids[0]}/index.json")
    assert status == 404 and "not in the store" in json.loads(body)["error"]


def test_an_interrupted_run_is_kept_and_marked_partial(server):
    from support.graphs import interrupt_at_progress

    graph = load("anatomy_explorer")
    for n in nodes_of(graph, "DiffusionAnatomyScheduler"):
        n["inputs"]["steps"] = 400  # long enough to be interrupted on the way
    (denoise,) = [k for k, n in graph.items() if n["class_type"] == "DiffusionAnatomyUNetDenoise"]
    events, progress, at = interrupt_at_progress(server, graph, denoise, 5)
    assert "execution_interrupted" in events, events[-5:]
    run = runs(server)[0]
    assert run["status"] == "partial" and "interrupted" in run["message"]
    status, body, _ = fetch(server, f"{ROUTE}/runs/{run['id']}/index.json")
    index = json.loads(body)
    assert 5 <= index["recorded_steps"] < 400 and index["steps"] == 400
    for name in index["files"].values():
        assert fetch(server, f"{ROUTE}/runs/{run['id']}/{name}")[0] == 200
    # the server keeps serving: the next run completes
    for n in nodes_of(graph, "DiffusionAnatomyScheduler"):
        n["inputs"]["steps"] = 2
    server.run(graph)
    assert runs(server)[0]["status"] == "complete"


def test_bad_input_is_named_and_a_long_prompt_and_a_batch_record(server):
    graph = load("anatomy_explorer")
    (text,) = nodes_of(graph, "PrimitiveStringMultiline")
    text["inputs"]["value"] = " "
    with pytest.raises(ComfyError) as err:
        server.run(graph)
    assert "text: the prompt is empty" in str(err.value)

    graph = load("anatomy_explorer")
    (cap,) = nodes_of(graph, CAPTURE)
    del cap["inputs"]["vae"]
    with pytest.raises(ComfyError) as err:
        server.run(graph)
    assert "pictures = vae needs the `vae` input" in str(err.value)

    # a prompt of two 77-token chunks, and a batch of 2: recorded, the first picture, words from both chunks
    graph = load("anatomy_explorer")
    (text,) = nodes_of(graph, "PrimitiveStringMultiline")
    long = " ".join(["a large red circle at the top left on a blue background"] * 8)  # 96 words
    text["inputs"]["value"] = long
    for n in nodes_of(graph, "DiffusionAnatomyEmptyLatent"):
        n["inputs"]["batch_size"] = 2
    for n in nodes_of(graph, "DiffusionAnatomyScheduler"):
        n["inputs"]["steps"] = 3
    server.run(graph)
    run = runs(server)[0]
    _, body, _ = fetch(server, f"{ROUTE}/runs/{run['id']}/index.json")
    index = json.loads(body)
    assert index["size"]["batch"] == 2 and index["size"]["picture"] == 0
    assert len(index["tokens"]["chunks"]) == 2
    items = index["tokens"]["items"]
    assert len([t for t in items if t["kind"] == "word"]) == 96 and len(items[0]["positions"]) == 2  # a BOS per chunk
    assert index["attention"]["shape"][2] == 98
    assert fetch(server, "/object_info/DiffusionAnatomyExplorerCapture")[0] == 200
