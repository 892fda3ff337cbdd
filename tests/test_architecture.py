"""The shape of the code: one installed name, and folders imported only through it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("signaling", "session", "media", "recording", "turn", "web_client")
SKIP = {".git", ".venv", "node_modules", "teleconsult", "build"}


def python_files() -> list[Path]:
    """Every Python file of the repository, each once (not again through teleconsult/)."""
    return sorted(
        p
        for p in ROOT.rglob("*.py")
        if not SKIP & set(p.relative_to(ROOT).parts[:-1]) and ".egg-info" not in str(p)
    )


def test_no_file_imports_a_folder_by_its_bare_name() -> None:
    # From the repository's root `import media` would work too, and load a second copy of
    # every module (two registries, two SFUs): only `teleconsult.media` may be used.
    bare = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            bare += [f"{where} {n}" for n in names if n.split(".")[0] in FOLDERS]
    assert len(python_files()) > 100
    assert bare == []


def test_one_name_is_installed_and_runs() -> None:
    program = (
        "import importlib, pkgutil, sys, teleconsult\n"
        "for m in pkgutil.walk_packages(teleconsult.__path__, 'teleconsult.'):\n"
        "    if m.name != 'teleconsult.__main__':\n"
        "        importlib.import_module(m.name)\n"
        f"print(sorted(k for k in sys.modules if k.split('.')[0] in {FOLDERS!r}))\n"
        "print(sum(k.startswith('teleconsult.') for k in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, cwd="/"
    ).stdout.split("\n")
    assert out[0] == "[]"  # nothing loaded under a bare folder name
    assert int(out[1]) > 50  # every module imported
    usage = subprocess.run(
        [sys.executable, "-m", "teleconsult", "--help"], capture_output=True, text=True, cwd="/"
    )
    assert usage.returncode == 0 and "serve" in usage.stdout
    assert (ROOT / "teleconsult" / "py.typed").exists()
