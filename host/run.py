"""Start ComfyUI with the pack, queue a bundled API-format workflow, print where the image went.

By default it queues workflows/api/text_to_image.json, which draws with the pack's embedded model
(embedded/tiny_shapes_sd1.safetensors: 64x64 coloured shapes, a few seconds on a CPU). Name
another checkpoint with --checkpoint FILE (any SD1.x/SD2.x/SDXL single-file .safetensors), and
then usually --size 512 (or 1024 for SDXL) and a --prompt of your own.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "harness"))  # hostenv, comfy_server
import hostenv  # noqa: E402
from comfy_server import ComfyError, ComfyServer  # noqa: E402

DEFAULT_WORKFLOW = hostenv.REPO / "workflows" / "api" / "text_to_image.json"


def customise(graph: dict, ckpt_name: str | None, steps: int | None, size: int | None, prompt: str | None) -> dict:
    for node in graph.values():
        inputs = node["inputs"]
        if ckpt_name is not None and "ckpt_name" in inputs:
            inputs["ckpt_name"] = ckpt_name
        if steps is not None and "steps" in inputs:
            inputs["steps"] = steps
        if size is not None:
            for key in ("width", "height"):
                if key in inputs:
                    inputs[key] = size
        if prompt is not None and node.get("_meta", {}).get("title") == "Positive prompt":
            inputs["text"] = prompt
    return graph


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workflow", type=Path, default=DEFAULT_WORKFLOW, help="API-format graph to queue (default: text_to_image)")
    ap.add_argument("--checkpoint", type=Path, help="a .safetensors checkpoint to use (default: the workflow's, the pack's embedded model)")
    ap.add_argument("--prompt", help="replace the positive prompt")
    ap.add_argument("--steps", type=int, help="sampling steps (default: the workflow's)")
    ap.add_argument("--size", type=int, help="image width and height in pixels (default: the workflow's, 64 for the embedded model)")
    ap.add_argument("--port", type=int, default=8188, help="loopback port for ComfyUI (default 8188)")
    ap.add_argument("--work", type=Path, default=hostenv.host_dir() / "run", help="folder for output/input/temp/user")
    ap.add_argument("--gpu", action="store_true", help="let ComfyUI use a GPU (default: --cpu)")
    ap.add_argument("--serve", action="store_true", help="keep ComfyUI running after the image is written (Ctrl-C stops it)")
    args = ap.parse_args()

    checkpoint = None
    if args.checkpoint is not None:
        checkpoint = args.checkpoint.resolve()
        if not checkpoint.is_file():
            print(f"[run] no such checkpoint file: {checkpoint}", file=sys.stderr)
            return 1
    graph = customise(json.loads(args.workflow.read_text()), checkpoint and checkpoint.name, args.steps, args.size, args.prompt)

    t0 = time.monotonic()
    try:
        server = ComfyServer.start(args.work, port=args.port, checkpoints=[checkpoint.parent] if checkpoint else [], gpu=args.gpu)
    except RuntimeError as e:
        print(f"[run] {e}", file=sys.stderr)
        return 1
    try:
        print(f"[run] ComfyUI with Diffusion Anatomy is up at {server.url} ({time.monotonic() - t0:.1f} s); queueing {args.workflow.name}")
        files = server.output_files(server.run(graph))
        for f in files:
            print(f"[run] image written: {f}")
        print(f"[run] done in {time.monotonic() - t0:.1f} s. UI: {server.url}" + ("" if args.serve else " (use --serve to keep it running)"))
        if args.serve:
            print("[run] serving; Ctrl-C stops ComfyUI")
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            try:
                while server.process.poll() is None:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        return 0 if files else 1
    except ComfyError as e:
        print(f"[run] ComfyUI refused or failed the workflow:\n{e}", file=sys.stderr)
        return 1
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
