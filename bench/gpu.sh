#!/usr/bin/env bash
# Every GPU benchmark of the pack in one prepared run, under 8 minutes on an H200 (each step has its own
# time limit; a failing step is reported and the next one runs). Needs PyTorch with CUDA on the machine and
# .gpu/ from bench/gpu_prepare.sh (ComfyUI source, wheels, a PyAV stand-in): no registry access.
#
#   device call:  run(command="bash bench/gpu.sh", carry=[".gpu"], timeout_s=600)
#   here:         bash bench/gpu.sh --dry    (the same set-up, CPU, tiny settings: checks the script runs)
#
# Output: the console, and $OUT/gpu_bench.log + $OUT/*.json where $OUT is set (the device tool's folder).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DRY=0; [ "${1:-}" = "--dry" ] && DRY=1
OUTDIR="${OUT:-$PWD/.cache/gpu_bench}"; mkdir -p "$OUTDIR"
PY="${PY:-python3}"; [ "$DRY" = 1 ] && PY="${PY_DRY:-${DA_HOST_DIR:-/work/main/.host}/venv/bin/python}"
LOG="$OUTDIR/gpu_bench.log"; : > "$LOG"
say() { echo "$*" | tee -a "$LOG"; }

[ -f .gpu/ComfyUI/main.py ] || { say "no .gpu/ComfyUI: run bash bench/gpu_prepare.sh first (and carry .gpu)"; exit 2; }
SITE=/tmp/da_gpu_site; rm -rf "$SITE"; mkdir -p "$SITE"
if ! "$PY" -c "import torchsde" 2>/dev/null || [ "$DRY" = 1 ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .gpu/whl/*.whl || say "wheel install failed"
fi
export PYTHONPATH="$SITE"
if ! "$PY" -c "import av" 2>/dev/null || [ "$DRY" = 1 ]; then
    export PYTHONPATH="$PWD/.gpu/stubs:$SITE"  # the dry run uses the stand-in too, to prove ComfyUI imports with it
fi
export COMFYUI_PATH="$PWD/.gpu/ComfyUI" PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
"$PY" - <<'PYCHECK' 2>&1 | tee -a "$LOG"
import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
PYCHECK
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG"

step() {  # step NAME SECONDS command...
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    say "=== $name (limit ${limit}s): $*"
    timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | grep -v -e "torchaudio missing" -e "UserWarning" | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    say "=== $name: exit $rc after $((SECONDS - start)) s"
}

if [ "$DRY" = 1 ]; then
    CKPT="no"; FIX=(--cpu)
    step noise 120 "$PY" bench/noise.py --device cpu --size 32 --rounds 3
    step node_path_free 600 "$PY" bench/node_path.py "${FIX[@]}" --free-model --rounds 1 --steps 3 --samplers euler,dpmpp_2m_sde --json "$OUTDIR/node_path_free.json"
    step samplers 300 "$PY" bench/samplers.py --device cpu --steps 5 --repeats 3 --only euler,dpmpp_2m_sde
    step unet 900 "$PY" bench/unet.py --skip-cuda --rounds 5 --per-round 1 --json "$OUTDIR/unet.json"
    say "dry run done in $SECONDS s"
    exit 0
fi

# The random SD1.5 checkpoint of node_path.py (2 GB, CPU work): made in the background while the GPU works.
"$PY" - >"$OUTDIR/checkpoint.log" 2>&1 <<'PYCKPT' &
import sys, types, os
sys.path[:0] = ["tests", "harness", os.environ["COMFYUI_PATH"]]  # harness/: diffusion_anatomy, hostenv
import comfy.options; comfy.options.enable_args_parsing(False)
from support.checkpoints import sd15_random_checkpoint
print(sd15_random_checkpoint(types.SimpleNamespace(dir=__import__("pathlib").Path(os.environ["COMFYUI_PATH"]))))
PYCKPT
CKPT_PID=$!

step unet 210 "$PY" bench/unet.py --skip-cpu --sdxl --compile --profile --json "$OUTDIR/unet.json"
step noise 30 "$PY" bench/noise.py --device cuda --size 128
wait "$CKPT_PID"; say "checkpoint: $(tail -1 "$OUTDIR/checkpoint.log")"
step node_path 130 "$PY" bench/node_path.py --rounds 3 --json "$OUTDIR/node_path.json"
step node_path_free 60 "$PY" bench/node_path.py --free-model --rounds 3 --json "$OUTDIR/node_path_free.json"
step node_path_fast_noise 40 "$PY" bench/node_path.py --free-model --rounds 3 --samplers dpmpp_2m_sde --noise-type brownian-fast --json "$OUTDIR/node_path_fast_noise.json"
say "all GPU benchmarks done in $SECONDS s"
