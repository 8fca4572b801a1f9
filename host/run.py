"""Start ComfyUI with the pack, queue a bundled API-format workflow, print where the image went."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

import hostenv
from comfy_server import ComfyError, ComfyServer

DEFAULT_WORKFLOW = hostenv.REPO / "workflows" / "api" / "sigma_plot.json"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workflow", type=Path, default=DEFAULT_WORKFLOW, help="API-format graph to queue")
    ap.add_argument("--port", type=int, default=8188, help="loopback port for ComfyUI (default 8188)")
    ap.add_argument("--work", type=Path, default=hostenv.host_dir() / "run", help="folder for output/input/temp/user")
    ap.add_argument("--checkpoints", type=Path, action="append", default=[], help="extra folder of .safetensors checkpoints")
    ap.add_argument("--gpu", action="store_true", help="let ComfyUI use a GPU (default: --cpu)")
    ap.add_argument("--serve", action="store_true", help="keep ComfyUI running after the image is written (Ctrl-C stops it)")
    args = ap.parse_args()

    graph = json.loads(args.workflow.read_text())
    t0 = time.monotonic()
    try:
        server = ComfyServer.start(args.work, port=args.port, checkpoints=args.checkpoints, gpu=args.gpu)
    except RuntimeError as e:
        print(f"[run] {e}", file=sys.stderr)
        return 1
    try:
        print(f"[run] ComfyUI with Diffusion Anatomy is up at {server.url} ({time.monotonic() - t0:.1f} s); queueing {args.workflow.name}")
        outputs = server.run(graph)
        files = server.output_files(outputs)
        for f in files:
            print(f"[run] image written: {f}")
        print(f"[run] done in {time.monotonic() - t0:.1f} s. UI: {server.url}")
        if args.serve:
            print("[run] serving; Ctrl-C stops ComfyUI")
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return 0 if files else 1
    except ComfyError as e:
        print(f"[run] ComfyUI refused or failed the workflow:\n{e}", file=sys.stderr)
        return 1
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
