"""Every node of the pack has a help page (web/docs/<node id>.md, which ComfyUI's frontend shows for a
custom node), and each page is what generate/node_docs.py makes of the node's definition as the real
server gives it now: a changed tooltip or a new node without its page fails here."""
from __future__ import annotations

import copy

import node_docs
import pytest

pytestmark = pytest.mark.server


def test_every_node_has_its_help_page_and_every_page_is_current(server):
    info = server.get("/object_info")
    nodes = node_docs.pack_nodes(info)
    assert len(nodes) >= 60  # 29 samplers, 13 schedules, the views, loaders, ...
    missing = [n for n in nodes if not (node_docs.DOCS / f"{n}.md").is_file()]
    assert missing == [], f"nodes without a help page: {missing}; run generate/node_docs.py"
    assert node_docs.differences(info) == [], "web/docs/ is stale: run generate/node_docs.py"
    # the views' pages show what they draw
    for view in node_docs.view_pictures():
        assert f"](images/{node_docs.view_pictures()[view]}.png)" in (node_docs.DOCS / f"{view}.md").read_text(), view


def test_a_changed_or_new_node_is_reported(server):
    """The check above can fail: a changed tooltip makes a page stale, a node without a page is missing."""
    info = copy.deepcopy(server.get("/object_info"))
    tokens = info["DiffusionAnatomyTokens"]
    tokens["input"]["required"]["text"][1]["tooltip"] = "changed"
    info["DiffusionAnatomyNoSuchNode"] = {**tokens, "name": "DiffusionAnatomyNoSuchNode"}
    assert node_docs.differences(info) == ["web/docs/DiffusionAnatomyTokens.md: stale",
                                           "web/docs/DiffusionAnatomyNoSuchNode.md: missing"]
