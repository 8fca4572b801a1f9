"""The README's generated sections are current: sampler and schedule tables (the registries), the model card
(embedded/card.json, also in embedded/README.md), the lab's recorded runs."""
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
    card = (REPO / "embedded" / "README.md").read_text()
    assert module.CARD_START in text and module.CARD_START in card  # the model card, in both READMEs, from embedded/card.json
    assert module.updated_card(card) == card, "run generate/readme_tables.py to regenerate embedded/README.md's card"


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


def test_judged_table_is_in_step_with_its_committed_run():
    """The README's judged table comes from lab/judged_run/ (its summary.json made from that judged.csv, by digest), has
    one row per registered sampler in the registry's order, and every sampler has a rank (at the budget that holds every
    sampler's largest run; at 40 calls too, unless every run of it took more)."""
    spec = importlib.util.spec_from_file_location("readme_tables", REPO / "generate" / "readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    samplers, _ = module.pack()
    import diffusion_anatomy.lab.judged_report as report
    from diffusion_anatomy.lab.judged_sweep import file_sha1

    import json

    run = module.JUDGED_RUN
    assert json.loads((run / report.SUMMARY).read_text())["judged_csv_sha1"] == file_sha1(run / "judged.csv"), \
        "lab/judged_run/summary.json is not judged.csv's: run generate/readme_tables.py"
    _, table, _ = report.summary(run)
    assert {s for s, _ in table} == set(samplers.REGISTRY)
    most = max(g.nfe for g in table.values())
    assert set(report.adherence_ranks(table, most)) == set(samplers.REGISTRY)
    over_40 = {s for s in samplers.REGISTRY if min(g.nfe for (sid, _), g in table.items() if sid == s) > 40}
    assert set(report.adherence_ranks(table, 40)) == set(samplers.REGISTRY) - over_40
    section = module.judged_section().splitlines()
    rows = [line for line in section if line.startswith("| ") and not line.startswith("| sampler |")]
    assert [line.split(" | ")[0][2:] for line in rows] == [info.name for info in samplers.REGISTRY.values()]
    assert all(line.split(" | ")[5].split(" / ")[2] != "-" for line in rows)  # the rank at the largest budget
