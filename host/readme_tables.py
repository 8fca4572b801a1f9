"""Regenerate the README's sampler and schedule tables from the registries (the one source of truth).

    .host/venv/bin/python host/readme_tables.py          # rewrite README.md in place
    .host/venv/bin/python host/readme_tables.py --check  # exit 1 if README.md is out of date

tests/pure/test_readme.py runs the check, so the README's lists stay current.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- samplers:start -->", "<!-- samplers:end -->"


def pack():
    """The pack's pure rooms as `diffusion_anatomy`, without running its ComfyUI-facing __init__."""
    if "diffusion_anatomy" not in sys.modules:
        module = types.ModuleType("diffusion_anatomy")
        module.__path__ = [str(REPO)]
        sys.modules["diffusion_anatomy"] = module
    import diffusion_anatomy.samplers as samplers
    import diffusion_anatomy.samplers.schedules as schedules

    return samplers, schedules


def tables() -> str:
    samplers, schedules = pack()
    rows = ["| sampler (node title) | id | order | model calls / step | stochastic | core equivalent | source |",
            "|---|---|---|---|---|---|---|"]
    for info in samplers.REGISTRY.values():
        source = "; ".join(s for s in (info.paper, info.reference) if s).replace("|", "/")
        rows.append(f"| {info.name} | `{info.id}` | {info.order} | {info.calls_per_step} | {'yes' if info.stochastic else 'no'} "
                    f"| {f'`{info.core_id}`' if info.core_id else '-'} | {source} |")
    rows += ["", "| schedule | needs the model's sigma table | what it is |", "|---|---|---|"]
    for name, entry in schedules.SCHEDULES.items():
        rows.append(f"| `{name}` | {'yes' if entry.needs_model_sigmas else 'no'} | {entry.description} |")
    return "\n".join([START, *rows, END])


def updated(readme: str) -> str:
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return head + tables() + tail


def main() -> int:
    path = REPO / "README.md"
    text = path.read_text()
    new = updated(text)
    if "--check" in sys.argv:
        if new != text:
            print("README.md's sampler tables are out of date: run host/readme_tables.py")
            return 1
        return 0
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
