"""Public Dagster APIs only (#26 item 4): no module of the project, its tests or benchmarks imports `dagster._*`,
whose names change in any minor release."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def private_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        found += [f"{path}:{node.lineno}: {n}" for n in names
                  if n.split(".")[0].startswith("dagster") and any(p.startswith("_") for p in n.split(".")[1:])]
    return found


def test_no_module_imports_a_private_dagster_module():
    files = [p for d in ("assets", "kalm_core", "dagster_project", "tests", "benchmarks")
             for p in (ROOT / d).rglob("*.py")]
    assert len(files) > 50
    assert [hit for p in files for hit in private_imports(p)] == []


def test_the_check_sees_a_private_import(tmp_path):
    bad = tmp_path / "probe.py"
    bad.write_text("import dagster as dg\nfrom dagster._core.storage import sql\nimport dagster_pipes._x\n")
    assert [h.split(": ")[1] for h in private_imports(bad)] == ["dagster._core.storage", "dagster_pipes._x"]
