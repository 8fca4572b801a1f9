"""Turn an API-format graph into an editor (UI-format) workflow, using a live server's /object_info.

    .host/venv/bin/python host/ui_workflow.py workflows/api/*.json   # writes workflows/NAME.json for each

Starts a ComfyUI with the pack (or uses --url), reads each node's definition to order widget values
and name slots, lays the nodes out left to right by depth, and writes the UI JSON that the graph
editor opens. Bundled UI workflows are made with it and checked by tests/server/test_workflows.py.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

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


def main() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from comfy_server import ComfyServer

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("api", type=Path, nargs="+", help="API-format graphs (workflows/api/*.json)")
    args = ap.parse_args()
    server = ComfyServer.start(Path(tempfile.mkdtemp()))
    try:
        info = server.get("/object_info")
    finally:
        server.stop()
    for api in args.api:
        ui_path = api.resolve().parents[1] / api.name
        ui_path.write_text(json.dumps(to_ui(json.loads(api.read_text()), info), indent=1) + "\n")
        print(f"wrote {ui_path}")


if __name__ == "__main__":
    main()
