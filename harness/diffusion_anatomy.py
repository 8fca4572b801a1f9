"""The pack as the package `diffusion_anatomy`, outside ComfyUI: tests, benchmarks, generators, scripts.

The repository root is the pack; ComfyUI imports it as a package named after its folder and runs its
`__init__.py`, which registers the nodes (and so imports ComfyUI). From a checkout, put this folder on
`sys.path` and `import diffusion_anatomy` (or `from diffusion_anatomy.samplers import REGISTRY`): this
module stands in for the package, its `__path__` the repository root, so every room imports as
`diffusion_anatomy.<room>` with torch alone and the root `__init__.py` never runs. The nodes import too
(`diffusion_anatomy.nodes`) where ComfyUI is importable. Standard library only, no side effect but this.
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
__path__ = [str(ROOT)]  # a module with __path__ is a package: submodules are found in the repository root
