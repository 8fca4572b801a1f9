"""What importing the pack adds to a ComfyUI start: wall time and resident memory.

Runs in a fresh interpreter with ComfyUI's own start-up imports done first (torch, comfy.*,
nodes), then imports the pack the way ComfyUI does, and prints the difference. Median of N runs,
twice: "cold" with an empty bytecode cache (the first start after install: Python compiles the
pack) and "warm" with the cache written by a first run (every later start). The caches live in a
temporary PYTHONPYCACHEPREFIX, so the repository is not touched.
Usage: .host/venv/bin/python bench/import_cost.py [N]
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "harness"))
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


def measure(code: str, cache: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = cache
    out = subprocess.run([hostenv.python(), "-c", code], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(runs: int = 5) -> None:
    code = PROBE.format(comfy=str(hostenv.comfyui_dir()), init=str(hostenv.REPO / "__init__.py"), repo=str(hostenv.REPO))
    with tempfile.TemporaryDirectory() as warm_cache:
        measure(code, warm_cache)  # writes the bytecode cache
        results = {"cold": [], "warm": []}
        for _ in range(runs):
            with tempfile.TemporaryDirectory() as cold_cache:
                results["cold"].append(measure(code, cold_cache))
            results["warm"].append(measure(code, warm_cache))
    for kind, rs in results.items():
        secs = statistics.median(r["seconds"] for r in rs)
        mb = statistics.median(r["mb"] for r in rs)
        print(f"importing the pack ({rs[0]['nodes']} nodes) after ComfyUI's own imports, {kind} bytecode cache: "
              f"{secs * 1000:.1f} ms, +{mb:.1f} MB resident (median of {runs})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
