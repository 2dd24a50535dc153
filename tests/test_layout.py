"""The dependency rule of the three packages, checked on the source itself.

`model` is the bottom layer; `indexer.index` (the index library) builds on it; the offline tools
(`indexer.ingest`, `indexer.learn`, `indexer.evaluate`, `indexer.cli`) build on both; `service`
uses only `model` and `indexer.index`. Imports inside functions count too: a lazy import is
still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("model", "indexer", "service")


def _imported_modules(path: Path) -> set[str]:
    """Every project module named by an import statement anywhere in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.split(".")[0] in PROJECT_PACKAGES}


def _modules_under(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def _allowed(importer: str, imported: str) -> bool:
    if importer.startswith("model"):
        return imported.startswith("model")
    if importer.startswith("indexer.index"):
        return imported.startswith(("model", "indexer.index"))
    if importer.startswith("indexer"):
        return imported.startswith(("model", "indexer"))
    if importer.startswith("service"):
        return imported.startswith(("model", "indexer.index", "service")) or imported == "indexer"
    return True


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


@pytest.mark.parametrize("package", PROJECT_PACKAGES)
def test_imports_follow_the_dependency_rule(package):
    offending = [
        f"{_module_name(path)} imports {imported}"
        for path in _modules_under(package)
        for imported in sorted(_imported_modules(path))
        if not _allowed(_module_name(path), imported)
    ]
    assert offending == []


def test_the_rule_catches_an_upward_import(tmp_path):
    rogue = tmp_path / "rogue.py"
    rogue.write_text("def f():\n    from service.app import create_app\n", encoding="utf-8")
    assert "service.app" in _imported_modules(rogue)
    assert not _allowed("indexer.ingest.pipeline", "service.app")
    assert not _allowed("service.engine", "indexer.ingest.pipeline")
    assert not _allowed("indexer.index.store", "indexer.ingest.sources")
    assert not _allowed("model.spq", "indexer.index.store")
    assert _allowed("service.engine", "indexer.index.store")


def _top_level_imports(path: Path) -> set[str]:
    """The top-level package of every absolute import anywhere in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


# The product never imports what only develops it; benchmarks share helpers with the tests
# through `support`, never by importing `tests`.
FORBIDDEN = {
    "model": {"benchmarks", "support", "tests"},
    "indexer": {"benchmarks", "support", "tests"},
    "service": {"benchmarks", "support", "tests"},
    "support": {"benchmarks", "tests"},
    "benchmarks": {"tests"},
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_the_product_and_the_benchmarks_never_import_tests(package):
    offending = [
        f"{_module_name(path)} imports {imported}"
        for path in _modules_under(package)
        for imported in sorted(_top_level_imports(path) & FORBIDDEN[package])
    ]
    assert offending == []
