"""The shape of the code: one installed name, and folders imported only through it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("signaling", "session", "media", "recording", "turn", "web_client", "client", "cluster")
SKIP = {".git", ".venv", "node_modules", "build"}


def python_files() -> list[Path]:
    """Every Python file of the repository, each once (not again through teleconsult/'s links)."""
    files = []
    for p in ROOT.rglob("*.py"):
        rel = p.relative_to(ROOT)
        through_link = any(
            (ROOT / Path(*rel.parts[:i])).is_symlink() for i in range(1, len(rel.parts))
        )
        if not through_link and not SKIP & set(rel.parts[:-1]) and ".egg-info" not in str(p):
            files.append(p)
    return sorted(files)


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
    assert ROOT / "teleconsult" / "cli.py" in python_files()
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


def test_no_import_cycle_anywhere() -> None:
    # Counting imports made for type checking only, and those inside functions: a cycle
    # "broken" by either is still a knot a reader has to undo.
    graph = grimp.build_graph("teleconsult", cache_dir=None)
    modules = sorted(graph.modules)
    assert len(modules) > 60
    cycles = [
        (a, b)
        for a in modules
        for b in graph.find_modules_directly_imported_by(a)
        if a != b and graph.chain_exists(importer=b, imported=a)
    ]
    assert cycles == []


def test_the_core_loads_no_io_library() -> None:
    program = (
        "import sys, teleconsult.session.room, teleconsult.session.channel, "
        "teleconsult.session.store\n"
        "io = {'aiortc', 'av', 'redis', 'starlette', 'uvicorn', 'websockets', 'asyncio'}\n"
        "print(sorted(io & {k.split('.')[0] for k in sys.modules}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, cwd="/"
    )
    assert out.stdout.strip() == "[]"
