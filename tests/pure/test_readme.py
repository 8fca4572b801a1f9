"""The README's sampler and schedule tables are the registries' current contents."""
from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_readme_tables_are_current():
    spec = importlib.util.spec_from_file_location("readme_tables", REPO / "generate" / "readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (REPO / "README.md").read_text()
    assert module.updated(text) == text, "run generate/readme_tables.py to regenerate README.md's tables"


def test_samplers_measured_covers_every_registered_sampler():
    """The recorded lab run (lab/readme_run/lab.csv) has every registered sampler at 5/10/20/40 karras steps,
    and the README's "Samplers, measured" table one row per sampler (29: the document's 28 and PLMS): a new sampler needs a new run."""
    spec = importlib.util.spec_from_file_location("readme_tables", REPO / "generate" / "readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    samplers, _ = module.pack()
    rows = module.read_lab_run()
    assert sorted((r["sampler"], r["steps"]) for r in rows) == sorted((s, n) for s in samplers.REGISTRY for n in module.LAB_STEPS)
    assert {r["schedule"] for r in rows} == {"karras"}
    section = module.lab_section().splitlines()
    table = [line for line in section if line.startswith("| ") and not line.startswith("| sampler |")]
    assert len(table) == len(samplers.REGISTRY) == 29
    assert [line.split(" | ")[0][2:] for line in table] == [info.name for info in samplers.REGISTRY.values()]
