"""The architecture's import rules: no import cycle between any two of the project's modules
(``make lint`` also runs the layer contracts in pyproject.toml through ``lint-imports``)."""

from __future__ import annotations

import sys
from pathlib import Path

import grimp
import pytest

PACKAGES = ("ml_model", "backend", "pacs", "testing", "bench")


def module_cycles(*packages: str) -> list[list[str]]:
    """One shortest cycle through every direct import that closes one (empty: acyclic)."""
    graph = grimp.build_graph(*packages, cache_dir=None)
    cycles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back:
                cycles.append([importer, *back])
    return cycles


def test_no_module_imports_itself_back() -> None:
    assert module_cycles(*PACKAGES) == []


def test_the_check_finds_a_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "cyclic_demo"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cyclic_demo import b\n")
    (package / "b.py").write_text("from cyclic_demo.c import X\n")
    (package / "c.py").write_text("import cyclic_demo.a\nX = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cycles = module_cycles("cyclic_demo")
    sys.modules.pop("cyclic_demo", None)
    assert ["cyclic_demo.a", "cyclic_demo.b", "cyclic_demo.c", "cyclic_demo.a"] in cycles
