"""requirements.txt names no package the code never imports (issue 27: `datasets` was one)."""

from __future__ import annotations

import ast
import re
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Required, but run by name rather than imported.
TOOLS = {"ruff": "the linter: ruff check ."}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_top_level_modules() -> set[str]:
    found = set()
    for folder in ("src", "tests", "benchmarks"):
        for path in [*REPO.glob("*.py"), *(REPO / folder).rglob("*.py")]:
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module.split(".")[0])
    return found


def test_every_required_package_is_imported():
    providers = metadata.packages_distributions()  # module -> the distributions providing it
    imported = {_normal(d) for module in imported_top_level_modules() for d in providers.get(module, [])}
    required = [
        _normal(re.split(r"[<>=!~\[; ]", line.strip())[0])
        for line in (REPO / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    never_imported = [name for name in required if name not in imported and name not in TOOLS]
    assert never_imported == [], f"requirements.txt names packages nothing imports: {never_imported}"
