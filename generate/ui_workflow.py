"""Turn an API-format graph into an editor (UI-format) workflow that explains itself.

    .host/venv/bin/python generate/ui_workflow.py workflows/api/*.json   # writes workflows/<Title>.json for each

Starts a ComfyUI with the pack, reads each node's definition (/object_info) to order widget values
and name slots, then opens the graph in ComfyUI's own frontend (headless Chromium,
harness/browser.py) to measure every node's size with the frontend's `computeSize()`, and in the
newest frontend's Vue node renderer (host/install_frontend.sh), which draws nodes taller. It lays
the graph out (room for the taller of the two heights) as one group per stage of Stable Diffusion, left to right, each with a Note that
explains the stage in the words of the source document, and writes the UI JSON the graph editor
and ComfyUI's template browser open. The file name is the workflow's title (what the template
browser shows): `TITLES` below, or the API file's stem in title case. Stages come from the node
types (`STAGES`); an API node may name its own with `"_meta": {"group": ..., "note": ...}`.
Bundled UI workflows are made with it and checked by tests/server/test_workflows.py and
tests/browser/.
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

from stages import STAGES

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def input_specs(info: dict) -> list[tuple[str, list]]:
    order = info.get("input_order") or {s: list(info["input"].get(s, {})) for s in ("required", "optional")}
    specs = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            specs.append((name, info["input"][section][name]))
    return specs


def widget_values(spec, value) -> list:
    """The widgets_values entries of one widget: its value, plus the seed-control mode after it."""
    options = spec[1] if len(spec) > 1 else {}
    values = [options.get("default") if value is None else value]
    if options.get("control_after_generate"):
        values.append("fixed")
    return values


def to_ui(graph: dict, object_info: dict) -> dict:
    depth: dict[str, int] = {}

    def depth_of(nid: str) -> int:
        if nid not in depth:
            ups = [v[0] for v in graph[nid]["inputs"].values() if isinstance(v, list)]
            depth[nid] = 1 + max((depth_of(u) for u in ups), default=-1)
        return depth[nid]

    ids = {nid: i + 1 for i, nid in enumerate(graph)}
    rows: dict[int, int] = {}
    nodes, links = [], []
    out_links: dict[tuple[str, int], list[int]] = {}
    for nid, node in graph.items():
        info = object_info[node["class_type"]]
        inputs, widgets = [], []
        optional = info["input"].get("optional", {})
        for name, spec in input_specs(info):
            value = node["inputs"].get(name)
            if value is None and name in optional and not is_widget(spec):
                continue  # an optional socket left unconnected
            if isinstance(value, list):  # a link
                link_id = len(links) + 1
                src, slot = value
                kind = object_info[graph[src]["class_type"]]["output"][slot]
                links.append([link_id, ids[src], slot, ids[nid], len(inputs), kind])
                out_links.setdefault((src, slot), []).append(link_id)
                entry = {"name": name, "type": spec[0] if not isinstance(spec[0], list) else "COMBO", "link": link_id}
                if is_widget(spec):  # a widget fed by a link keeps a (default) value in widgets_values
                    entry["widget"] = {"name": name}
                    widgets.extend(widget_values(spec, None))
                inputs.append(entry)
            elif is_widget(spec):
                widgets.extend(widget_values(spec, value))
            elif name in info["input"].get("optional", {}):
                continue  # an optional input left unconnected
            else:
                raise ValueError(f"node {nid} ({node['class_type']}): input {name!r} is neither linked nor a widget")
        d = depth_of(nid)
        row = rows.get(d, 0)
        rows[d] = row + 1
        nodes.append({
            "id": ids[nid], "type": node["class_type"], "pos": [60 + 380 * d, 60 + 260 * row], "size": [340, 200],
            "flags": {}, "order": 0, "mode": 0, "inputs": inputs,
            "outputs": [{"name": n, "type": t, "slot_index": i, "links": []}
                        for i, (n, t) in enumerate(zip(info.get("output_name", info["output"]), info["output"]))],
            "properties": {"Node name for S&R": node["class_type"]},
            "widgets_values": widgets,
            **({"title": node["_meta"]["title"]} if node.get("_meta", {}).get("title") else {}),
        })
    by_id = {n["id"]: n for n in nodes}
    for (src, slot), link_ids in out_links.items():
        by_id[ids[src]]["outputs"][slot]["links"] = link_ids
    for i, nid in enumerate(sorted(graph, key=depth_of)):
        by_id[ids[nid]]["order"] = i
    return {"last_node_id": len(nodes), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


# --- stages, notes and layout ---

# the stages, their titles and notes: generate/stages.py
TITLES = {  # API stem -> the title the template browser shows (the UI file's name)
    "text_to_image": "Text to Image",
    "image_to_image": "Image to Image",
    "sampler_comparison": "Sampler Comparison",
    "pack_sampler_in_core_samplercustom": "Pack Sampler in Core SamplerCustom",
    "sigma_plot": "Sigma Plot",
    "anatomy_unet_levels": "Anatomy U-Net Levels",
}
NOTE_COLOUR, NOTE_BG, GROUP_COLOUR = "#432", "#653", "#3f789e"
MIN_WIDTH = 300  # a column is at least this wide: the checkpoint name and prompts stay readable
IMAGE_ROOM = 200  # extra height for nodes that show pictures (SaveImage, PreviewImage)
TITLE_H, GROUP_TITLE_H, PAD, GAP, COLUMN_GAP = 30, 40, 12, 16, 60  # LiteGraph: node title bar 30 px


def title_of(api_path: Path) -> str:
    return TITLES.get(api_path.stem, api_path.stem.replace("_", " ").title())


def slug(title: str) -> str:
    """The API file stem of a UI workflow's title ("Text to Image" -> "text_to_image",
    "Anatomy U-Net Levels" -> "anatomy_unet_levels")."""
    return "_".join(title.lower().replace("-", "").split())


def stage_of(node: dict) -> tuple[str, str]:
    """(group title, note) of an API node: its `_meta.group` / `_meta.note`, else by its class type."""
    meta = node.get("_meta", {})
    if meta.get("group"):
        return meta["group"], meta.get("note", "")
    kind = node["class_type"].removeprefix("DiffusionAnatomy")
    for title, types, note in STAGES:
        if any(kind == t or kind.startswith(t) for t in types):
            return title, note
    return "Other", ""


def note_height(text: str, width: int) -> int:
    """Height a Note needs for its text (its monospace font: about 6.2 px per character, 14 px per
    line, plus margins; measured on the frontend's screenshots)."""
    per_line = max(1, int((width - 30) / 6.2))
    lines = sum(1 + len(par) // per_line for par in text.split("\n"))
    return 40 + 14 * lines


def lay_out(ui: dict, graph: dict, sizes: dict[int, list[float]]) -> dict:
    """One column per stage, in pipeline order; each a group holding a Note and the stage's nodes."""
    api_ids = list(graph)
    stages: dict[str, dict] = {}
    for node in sorted(ui["nodes"], key=lambda n: n["order"]):  # within a stage, upstream nodes first
        title, note = stage_of(graph[api_ids[node["id"] - 1]])
        stages.setdefault(title, {"note": note, "nodes": []})["nodes"].append(node)
    order = [t for t, _, _ in STAGES]
    x, next_id = 0.0, max(n["id"] for n in ui["nodes"]) + 1
    notes, groups = [], []
    for title in sorted(stages, key=lambda t: (order.index(t) if t in order else len(order), t)):
        stage = stages[title]
        # wide enough for the group's title (24 px font: about 13 px per character)
        width = max([MIN_WIDTH, 13 * len(title) - 2 * PAD, *(sizes[n["id"]][0] for n in stage["nodes"])])
        y = GROUP_TITLE_H + PAD
        if stage["note"]:
            h = note_height(stage["note"], width)
            notes.append({"id": next_id, "type": "Note", "pos": [x + PAD, y + TITLE_H], "size": [width, h],
                          "flags": {}, "order": 0, "mode": 0, "inputs": [], "outputs": [], "properties": {},
                          "widgets_values": [stage["note"]], "color": NOTE_COLOUR, "bgcolor": NOTE_BG})
            next_id += 1
            y += TITLE_H + h + GAP
        for node in stage["nodes"]:
            w, h, *vue = sizes[node["id"]]
            room = IMAGE_ROOM if node["type"] in ("SaveImage", "PreviewImage") else 0
            node["pos"], node["size"] = [x + PAD, y + TITLE_H], [width, round(h + room)]
            # the Vue renderer draws a node taller than its size: vue[0], its height there, title included
            drawn = max(TITLE_H + round(h + room), math.ceil(vue[0]) + room if vue else 0)
            y += drawn + GAP
        groups.append({"id": len(groups) + 1, "title": title, "bounding": [x, 0, width + 2 * PAD, y - GAP + PAD],
                       "color": GROUP_COLOUR, "font_size": 24, "flags": {}})
        x += width + 2 * PAD + COLUMN_GAP
    for i, note in enumerate(notes):
        note["order"] = len(ui["nodes"]) + i
    ui["nodes"] += notes
    ui["groups"] = groups
    ui["last_node_id"] = max(n["id"] for n in ui["nodes"])
    # open on the first stages at a zoom where the frontend still draws text (below about 0.6 it
    # draws boxes only), the whole graph when it fits a 1600x900 window; clear of the top bars
    height = max(g["bounding"][3] for g in groups)
    scale = round(max(0.75, min(1.0, 1500 / x, 760 / height)), 2)
    ui["extra"] = {"ds": {"scale": scale, "offset": [round(70 / scale), round(130 / scale)]}}
    return ui


_newest = None  # the ComfyUI serving the newest frontend, started on first use by measure()


def newest_frontend_url() -> str:
    """A ComfyUI serving hostenv.NEWEST_FRONTEND (host/install_frontend.sh), started once, stopped at exit."""
    global _newest
    if _newest is None:
        import atexit

        import hostenv
        from comfy_server import ComfyServer

        root = hostenv.frontend_root()
        if not (root / "index.html").is_file():
            raise SystemExit(f"no frontend {hostenv.NEWEST_FRONTEND} at {root}: run host/install_frontend.sh")
        _newest = ComfyServer.start(Path(tempfile.mkdtemp(prefix="da-ui-newest-")), front_end_root=root)
        atexit.register(_newest.stop)
    return _newest.url


def measure(ui: dict, url: str) -> dict[int, list[float]]:
    """Each node's smallest size that fits its widgets, as the pinned frontend computes it, and a third
    number: the height (title included) the newest frontend draws it with, the taller of its canvas and
    its Vue node renderer (both taller than the pinned canvas: their widgets are). The layout keeps room for both."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "harness"))
    from browser import Browser

    with Browser.start() as page:
        page.open_app(url)
        page.load_workflow(ui)
        sizes = {int(k): v for k, v in page.evaluate(
            "Object.fromEntries(app.graph._nodes.map(n => [n.id, [...n.computeSize()]]))").items()}
        fitted = {**ui, "nodes": [{**n, "size": sizes[n["id"]]} for n in ui["nodes"]]}
        # the newest frontend's canvas draws some widgets (multiline text) taller than the pinned one's
        page.open_app(newest_frontend_url(), settings={"Comfy.VueNodes.Enabled": False})
        page.load_workflow(fitted)
        canvas = {int(k): v for k, v in page.evaluate(
            "Object.fromEntries(app.graph._nodes.map(n => [n.id, n.computeSize()[1] + LiteGraph.NODE_TITLE_HEIGHT]))").items()}
        page.open_app(newest_frontend_url(), settings={"Comfy.VueNodes.Enabled": True})
        page.load_workflow(fitted)
        page.wait_for(f"document.querySelectorAll('[data-node-id]').length >= {len(ui['nodes'])}", 120, "the Vue nodes")
        page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        vue = page.evaluate("""Object.fromEntries(app.graph._nodes.map(n => [n.id,
            document.querySelector(`[data-node-id="${n.id}"]`).getBoundingClientRect().height / app.canvas.ds.scale]))""")
    return {k: [w, h, max(vue[str(k)], canvas[k])] for k, (w, h) in sizes.items()}


def main() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "harness"))
    from comfy_server import ComfyServer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("api", type=Path, nargs="+", help="API-format graphs (workflows/api/*.json)")
    args = ap.parse_args()
    server = ComfyServer.start(Path(tempfile.mkdtemp()))
    try:
        info = server.get("/object_info")
        for api in args.api:
            graph = json.loads(api.read_text())
            ui = to_ui(graph, info)
            ui = lay_out(ui, graph, measure(ui, server.url))
            ui_path = api.resolve().parents[1] / f"{title_of(api)}.json"
            ui_path.write_text(json.dumps(ui, indent=1) + "\n")
            print(f"wrote {ui_path}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
