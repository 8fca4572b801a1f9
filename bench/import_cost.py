"""What importing the pack adds to a ComfyUI start: wall time and resident memory.

Runs in a fresh interpreter with ComfyUI's own start-up imports done first (torch, comfy.*,
nodes), then imports the pack the way ComfyUI does, and prints the difference. Median of N runs.
Usage: .host/venv/bin/python bench/import_cost.py [N]
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "host"))
import hostenv  # noqa: E402

PROBE = r"""
import json, resource, sys, time, importlib.util
sys.path.insert(0, {comfy!r})
import comfy.options; comfy.options.enable_args_parsing(False)
import comfy.cli_args; comfy.cli_args.args.cpu = True
import comfy.model_management, utils.extra_config, nodes, comfy.samplers
def rss_mb():
    return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20
before_mb, t0 = rss_mb(), time.perf_counter()
spec = importlib.util.spec_from_file_location('comfyui-diffusion-anatomy', {init!r}, submodule_search_locations=[{repo!r}])
module = importlib.util.module_from_spec(spec); sys.modules[spec.name] = module; spec.loader.exec_module(module)
print(json.dumps({{'seconds': time.perf_counter() - t0, 'mb': rss_mb() - before_mb, 'nodes': len(module.NODE_CLASS_MAPPINGS)}}))
"""


def main(runs: int = 5) -> None:
    code = PROBE.format(comfy=str(hostenv.comfyui_dir()), init=str(hostenv.REPO / "__init__.py"), repo=str(hostenv.REPO))
    results = []
    for _ in range(runs):
        out = subprocess.run([hostenv.python(), "-c", code], capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    secs = statistics.median(r["seconds"] for r in results)
    mb = statistics.median(r["mb"] for r in results)
    print(f"importing the pack ({results[0]['nodes']} nodes) after ComfyUI's own imports: "
          f"{secs * 1000:.1f} ms, +{mb:.1f} MB resident (median of {runs})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
