"""The README's sampler and schedule tables are the registries' current contents."""
from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_readme_tables_are_current():
    spec = importlib.util.spec_from_file_location("readme_tables", REPO / "host" / "readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (REPO / "README.md").read_text()
    assert module.updated(text) == text, "run host/readme_tables.py to regenerate README.md's tables"
