#!/usr/bin/env bash
# Gather, here (registry access), what bench/gpu.sh needs on a GPU machine that has PyTorch with CUDA but
# no registry access, into the git-ignored folder .gpu/ (carried to the device with carry [".gpu"]):
#   .gpu/ComfyUI  the host's ComfyUI 0.3.75 source, less what an in-process benchmark never reads
#                 (tests, the tokenizer data of non-SD text encoders, API nodes, caches)
#   .gpu/whl      wheels of what ComfyUI imports and a CUDA PyTorch image lacks: torchsde, trampoline
#   .gpu/stubs    a stand-in for PyAV (`av`, 39 MiB as a wheel: over the 64 MiB a device call carries with
#                 the repo), which ComfyUI imports at start-up for video types no benchmark touches;
#                 gpu.sh puts it on the path only where `import av` fails there.
# Usage: bash bench/gpu_prepare.sh      (COMFY_SRC=<ComfyUI dir> to take another source; PY=<python with pip>)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
COMFY_SRC="${COMFY_SRC:-${DA_HOST_DIR:-/work/main/.host}/ComfyUI}"
PY="${PY:-$(command -v python3)}"
"$PY" -m pip --version >/dev/null 2>&1 || PY="${DA_HOST_DIR:-/work/main/.host}/venv/bin/python"
WHEELS=(torchsde==0.2.6 trampoline==0.1.2)
[ -f "$COMFY_SRC/main.py" ] || { echo "no ComfyUI at $COMFY_SRC" >&2; exit 1; }

rm -rf .gpu
mkdir -p .gpu/whl .gpu/stubs
# ComfyUI: everything but tests, caches, API nodes and text-encoder tokenizer data (SD1's is comfy/sd1_tokenizer)
tar -C "$COMFY_SRC" -cf - \
    --exclude=.git --exclude=__pycache__ --exclude='*.pyc' --exclude=tests --exclude=tests-unit \
    --exclude=comfy_api_nodes --exclude=custom_nodes --exclude=input --exclude=output --exclude=user --exclude=temp \
    --exclude='comfy/text_encoders/*.json' --exclude='comfy/text_encoders/*.model' \
    --exclude='comfy/text_encoders/*.gz' --exclude='comfy/text_encoders/*.txt' \
    --exclude='comfy/text_encoders/*_tokenizer' \
    . | tar -C .gpu -xf - --one-top-level=ComfyUI 2>/dev/null \
  || { mkdir -p .gpu/ComfyUI && tar -C "$COMFY_SRC" -cf - --exclude=.git --exclude=__pycache__ --exclude=tests \
         --exclude=tests-unit --exclude=comfy_api_nodes --exclude='comfy/text_encoders/*_tokenizer' . | tar -C .gpu/ComfyUI -xf -; }
mkdir -p .gpu/ComfyUI/custom_nodes .gpu/ComfyUI/input .gpu/ComfyUI/output

"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/whl "${WHEELS[@]}"

# PyAV stand-in: any `av` module or attribute ComfyUI names at import is a placeholder class; using one fails.
mkdir -p .gpu/stubs/av
cat > .gpu/stubs/av/__init__.py <<'PY'
"""Stand-in for PyAV on a benchmark machine without it (bench/gpu_prepare.sh): ComfyUI imports av for its
video types at start-up; every name is a placeholder, and no benchmark decodes or encodes video."""
import importlib.abc
import importlib.machinery
import sys
import types


class _Placeholder:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("PyAV is not installed here (a benchmark stand-in)")


def _module(name):
    module = types.ModuleType(name)
    module.__path__ = []
    module.__getattr__ = lambda attr: _Placeholder if not attr.startswith("__") else (_ for _ in ()).throw(AttributeError(attr))
    return module


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name.startswith("av."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _module(spec.name)

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _Finder())
__path__ = []
__version__ = "0.0.0-stub"


def __getattr__(attr):
    if attr.startswith("__"):
        raise AttributeError(attr)
    return _Placeholder
PY

size=$(du -sb .gpu | cut -f1)
repo=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
echo "prepared .gpu: $((size / 1024 / 1024)) MiB ($(ls .gpu/whl | tr '\n' ' ')); repo's tracked files $((repo / 1024 / 1024)) MiB"
if [ "$size" -ge $((60 * 1024 * 1024)) ]; then echo ".gpu is over 60 MiB" >&2; exit 1; fi
if [ $((size + repo)) -ge $((64 * 1024 * 1024)) ]; then echo ".gpu plus the repo is over the 64 MiB a device call carries" >&2; exit 1; fi
git check-ignore -q .gpu || echo "warning: .gpu is not git-ignored; add /.gpu/ to .gitignore" >&2
