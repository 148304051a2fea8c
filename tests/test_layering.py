"""Package boundaries: code outside `osae.store` uses only the store's public API, and every osae module
imports on its own (no import cycles)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import osae.store

ROOT = Path(__file__).resolve().parents[1]
STORE = ROOT / "osae" / "store"
# Everything that uses the store from outside: the other packages, and the scripts and benchmarks.
OUTSIDE = [p for p in sorted((ROOT / "osae").rglob("*.py")) if STORE not in p.parents]
OUTSIDE += sorted((ROOT / "scripts").glob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))


# The root CLI mounts each stage's typer commands from `osae/<stage>/cli.py` (conventions.md): that import is
# the one way into a stage package besides its public API.
COMMANDS = "osae.store.cli"


def _internal(module: str) -> bool:
    return module.startswith("osae.store.") and module != COMMANDS


def store_internals_imported(source: str) -> list[tuple[int, str]]:
    """(line, what) for every import of a store submodule (but its commands), or of a name `osae.store` does not
    export."""
    found = []
    public = set(osae.store.__all__)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if _internal(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if _internal(node.module):
                found.append((node.lineno, node.module))
            elif node.module == "osae.store":
                found += [(node.lineno, f"osae.store.{a.name}") for a in node.names if a.name not in public]
            elif node.module == "osae":
                found += [(node.lineno, "osae.store") for a in node.names if a.name == "store"]
    return found


def test_the_checker_sees_every_kind_of_internal_import():
    src = (
        "import osae.store.core.reader\nfrom osae.store.loader import ShuffledLoader\n"
        "from osae.store import tools, ActivationStore\nfrom osae import store\n"
        "def f():\n    from osae.store.core import commit\n"
    )
    assert [line for line, _ in store_internals_imported(src)] == [1, 2, 3, 4, 6]
    fine = "from osae.store import ActivationStore, ShardWriter\nimport osae.store\nfrom osae.store.cli import app\n"
    assert store_internals_imported(fine) == []


def test_code_outside_the_store_imports_only_its_public_api():
    bad = [
        f"{p.relative_to(ROOT)}:{line}: {what}"
        for p in OUTSIDE
        for line, what in store_internals_imported(p.read_text())
    ]
    assert not bad, "import these from `osae.store` (its __all__) instead:\n" + "\n".join(bad)


def test_every_public_name_of_the_store_exists():
    missing = [name for name in osae.store.__all__ if not hasattr(osae.store, name)]
    assert not missing


IMPORT_EACH = r"""
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "osae" or m.startswith("osae.")]:
        del sys.modules[loaded]  # a fresh start for osae; third-party modules stay loaded (they never import osae)
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(f"{name}:\n{traceback.format_exc(limit=-3)}")
print("\n".join(failed))
sys.exit(1 if failed else 0)
"""


def _module_names() -> list[str]:
    names = []
    for p in sorted((ROOT / "osae").rglob("*.py")):
        parts = p.relative_to(ROOT).with_suffix("").parts
        if any("-" in part for part in parts) or parts[-1] == "__main__":
            continue  # data directories (the embedded model), and the entry point that runs the CLI
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_module_imports_first_on_its_own():
    """Each module imported first, with no other osae module loaded: an import cycle fails here."""
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH, *_module_names()], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
