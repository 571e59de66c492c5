"""The layering of docs/architecture.md holds: imports point down, and no module imports
itself through others (type-only imports included)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]


def test_imports_point_down_the_layers() -> None:
    """The contracts in pyproject.toml ([tool.importlinter]), as ``lint-imports`` checks them."""
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_no_import_cycle() -> None:
    graph = grimp.build_graph("pullcache", cache_dir=None)
    cycles = sorted(
        (importer, imported)
        for importer in graph.modules
        for imported in graph.find_modules_directly_imported_by(importer)
        if graph.chain_exists(importer=imported, imported=importer))
    assert cycles == [], cycles


def test_the_architecture_doc_lists_the_real_imports() -> None:
    """docs/architecture.md's table of what each package imports is the import graph."""
    import re

    graph = grimp.build_graph("pullcache", cache_dir=None)
    real: dict[str, set[str]] = {}
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            a, b = module.split(".")[1], imported.split(".")[1]
            if a != b and a != "__main__":
                real.setdefault(a, set()).add(b)
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text[text.index("| package | imports |"):]
    documented: dict[str, set[str]] = {}
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        packages, imports = (cell.strip() for cell in line.strip("|").split("|"))
        names = set() if "nothing" in imports else set(re.findall(r"`(\w+)`", imports))
        names.discard("Proxy")
        for package in re.findall(r"`(\w+)`", packages):
            documented[package] = names
    assert {k: v for k, v in documented.items() if v} == real
