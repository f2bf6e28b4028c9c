"""The dependency direction of DESIGN.md §1, read from the imports of every module.

pipelines -> infra, operators -> models. Operators may use ``infra.storage`` and ``infra.formats``
only; models import nothing of labelmill outside ``models``; infra never imports operators or
pipelines; ray and apache_beam are imported under ``infra/`` only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipelines", "operators", "models", "infra")
ENGINES = ("ray", "apache_beam")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in the file, wherever it is (functions included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # "from labelmill.infra import storage" imports labelmill.infra.storage
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


def _allowed(package: str, module: str) -> bool:
    if module.split(".")[0] in ENGINES:
        return package == "infra"
    if not module.startswith("labelmill."):
        return True
    parts = module.split(".")
    if len(parts) < 2:
        return True
    target = parts[1]
    if package == "pipelines":
        return True
    if package == "infra":
        return target == "infra"
    if package == "models":
        return target == "models"
    if package == "operators":
        if target in ("operators", "models"):
            return True
        if target == "infra":
            # "from labelmill.infra import storage" lists labelmill.infra itself too
            return len(parts) == 2 or parts[2] in ("storage", "formats")
        return False
    raise AssertionError(package)


def _violations() -> list[str]:
    problems = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, module in _imports(path):
                if not _allowed(package, module):
                    problems.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return problems


def test_every_module_follows_the_dependency_direction():
    assert _violations() == []


@pytest.mark.parametrize("package,module,ok", [
    ("operators", "labelmill.infra.storage", True),
    ("operators", "labelmill.infra.formats.shards", True),
    ("operators", "labelmill.infra.dataset_version", False),
    ("operators", "labelmill.pipelines.cli", False),
    ("operators", "ray", False),
    ("models", "labelmill.infra.storage", False),
    ("models", "labelmill.operators.pose3d.samples", False),
    ("infra", "labelmill.operators.common.decode", False),
    ("infra", "apache_beam.io", True),
    ("pipelines", "ray.data", False),
    ("pipelines", "labelmill.operators.pose3d.tracking", True),
])
def test_the_rule_itself_tells_allowed_from_forbidden(package, module, ok):
    assert _allowed(package, module) is ok


def test_the_scan_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from labelmill.infra import storage\n    import ray.data\n")
    assert ("labelmill.infra.storage" in {m for _, m in _imports(source)})
    assert ("ray.data" in {m for _, m in _imports(source)})
