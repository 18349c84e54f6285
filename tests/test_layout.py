"""The file list is the architecture: packages form layers and nothing imports upward.

The layers are the ones docs/architecture.md draws; a module may import from its own
package or from a lower layer. No package holds more than 30% of the product's lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ordercache"

#: Bottom to top (docs/architecture.md, "Modules and what each owns").
LAYERS: list[set[str]] = [
    {"errors", "retry", "tasks", "config"},
    {"models"},
    {"redisconn"},
    {"cache", "db", "migrations"},
    {"streams"},
    {"agents", "tables", "sample", "local", "publish", "read", "warming"},
    {"health"},
    {"web"},
    {"app"},
]


def _layer(package: str) -> int:
    for i, names in enumerate(LAYERS):
        if package in names:
            return i
    raise AssertionError(f"package {package!r} is in no layer: add it to docs and LAYERS")


def _package(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 else rel.stem


def _imports(source: str) -> list[str]:
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(a.name for a in node.names)
    return [m for m in found if m.startswith("ordercache.")]


def _modules() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py"]


def upward_imports(own: str, source: str) -> list[str]:
    """The imports of a module of package ``own`` that reach a higher layer."""
    bad = []
    for module in _imports(source):
        target = module.split(".")[1]
        if target != own and _layer(target) > _layer(own):
            bad.append(module)
    return bad


def test_nothing_imports_upward() -> None:
    found = {
        str(path.relative_to(PACKAGE)): upward_imports(_package(path), path.read_text())
        for path in _modules()
    }
    assert {name: bad for name, bad in found.items() if bad} == {}


@pytest.mark.parametrize(
    ("own", "source", "bad"),
    [
        ("cache", "from ordercache.web.stats import StatsReporter", ["ordercache.web.stats"]),
        ("agents", "import ordercache.app.context", ["ordercache.app.context"]),
        ("web", "from ordercache.cache.views import ORDER", []),
        ("cache", "from ordercache.cache.keys import KeySpace", []),
    ],
)
def test_upward_import_check(own: str, source: str, bad: list[str]) -> None:
    assert upward_imports(own, source) == bad


def test_no_package_holds_more_than_30_percent_of_the_lines() -> None:
    lines: dict[str, int] = {}
    for path in _modules():
        lines[_package(path)] = lines.get(_package(path), 0) + len(path.read_text().splitlines())
    total = sum(lines.values())
    shares = {name: n / total for name, n in lines.items()}
    assert max(shares.values()) <= 0.30, shares


@pytest.mark.parametrize("path", sorted(_modules()), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_loads_code_through_importlib(path: Path) -> None:
    assert "importlib.import_module" not in path.read_text()
