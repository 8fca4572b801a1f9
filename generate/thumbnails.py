"""Template-browser thumbnails rendered from each bundled workflow's real output.

    .host/venv/bin/python generate/thumbnails.py            # every workflows/api/*.json
    .host/venv/bin/python generate/thumbnails.py NAME ...   # only these API stems

Starts ComfyUI with the pack, queues each API graph exactly as bundled (they draw with the pack's
embedded model: seconds each on a CPU), and writes `workflows/<Title>.jpg` beside the UI workflow
`workflows/<Title>.json`. ComfyUI's frontend (1.32.9) shows a custom pack's template with the
thumbnail `/api/workflow_templates/<pack folder>/<name>.jpg`, the name being the JSON's stem, so the
file must be a JPEG of that stem. The card is square: the pictures of the SaveImage nodes (in the
graph's order) are tiled on a grid and scaled up without smoothing, so the 64x64 pixels stay sharp.
tests/server/test_workflows.py composes the same thumbnail from its own run and compares.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).resolve().parents[1] / "harness")]  # generate/, harness/
import hostenv  # noqa: E402
from ui_workflow import title_of  # noqa: E402

WORKFLOWS = hostenv.REPO / "workflows"
SIDE = 384  # thumbnail side, pixels (the card shows about 220)
BACKGROUND = (24, 24, 24)
JPEG_QUALITY = 92


def compose(pictures: list[Image.Image], side: int = SIDE) -> Image.Image:
    """The pictures tiled on a near-square grid, each scaled to its cell (aspect kept, no smoothing
    when enlarging), centred on a dark square."""
    cols = math.ceil(math.sqrt(len(pictures)))
    rows = math.ceil(len(pictures) / cols)
    cell = side // max(cols, rows)
    out = Image.new("RGB", (side, side), BACKGROUND)
    top, left = (side - rows * cell) // 2, (side - cols * cell) // 2
    for i, pic in enumerate(pictures):
        pic = pic.convert("RGB")
        scale = min(cell / pic.width, cell / pic.height)
        size = (max(1, round(pic.width * scale)), max(1, round(pic.height * scale)))
        pic = pic.resize(size, Image.NEAREST if scale >= 1 else Image.LANCZOS)
        r, c = divmod(i, cols)
        out.paste(pic, (left + c * cell + (cell - size[0]) // 2, top + r * cell + (cell - size[1]) // 2))
    return out


def saved_pictures(server, graph: dict, outputs: dict) -> list[Image.Image]:
    """The pictures of the graph's SaveImage nodes, in the graph's node order."""
    files = []
    for nid, node in graph.items():
        if node["class_type"] == "SaveImage":
            files += server.output_files({nid: outputs[nid]})
    return [Image.open(f) for f in files]


def thumbnail_path(api_path: Path) -> Path:
    return WORKFLOWS / f"{title_of(api_path)}.jpg"


def main() -> None:
    from comfy_server import ComfyServer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="API workflow stems (default: all of workflows/api/)")
    args = ap.parse_args()
    paths = [WORKFLOWS / "api" / f"{n}.json" for n in args.names] or sorted((WORKFLOWS / "api").glob("*.json"))
    server = ComfyServer.start(Path(tempfile.mkdtemp()))
    try:
        for path in paths:
            graph = json.loads(path.read_text())
            pictures = saved_pictures(server, graph, server.run(graph, timeout=1800))  # the Sampler Lab solves its reference: minutes on a busy CPU
            out = thumbnail_path(path)
            compose(pictures).save(out, "JPEG", quality=JPEG_QUALITY)
            print(f"wrote {out} ({len(pictures)} picture(s))")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
