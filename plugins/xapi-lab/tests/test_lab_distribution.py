"""The lab is a distribution of its own: the runtime provider's wheel ships none of it."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import fruix_xapi_lab

PLUGINS = Path(__file__).resolve().parents[2]


def build_wheel(project: Path, into: Path) -> list[str]:
    """Build *project*'s wheel the way a release does (hatchling, its own file selection)."""
    done = subprocess.run([sys.executable, "-m", "hatchling", "build", "-t", "wheel",
                           "-d", str(into)], cwd=project, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    (wheel,) = into.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_the_xcpng_wheel_holds_no_lab(tmp_path: Path) -> None:
    names = build_wheel(PLUGINS / "xcpng", tmp_path)
    assert "fruix_xcpng/lifecycle.py" in names and "fruix_xcpng/py.typed" in names
    lab = [n for n in names if "lab" in n.split("/")[-1] or n.startswith("fruix_xapi_lab")
           or "/lab/" in n]
    assert lab == []
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(next(tmp_path.glob("*.whl"))) as archive:
        assert "xapi-lab" not in archive.read(entry_points).decode()


def test_the_lab_wheel_is_typed_and_has_its_command(tmp_path: Path) -> None:
    names = build_wheel(PLUGINS / "xapi-lab", tmp_path)
    assert {"fruix_xapi_lab/__init__.py", "fruix_xapi_lab/py.typed",
            "fruix_xapi_lab/server.py"} <= set(names)
    assert not any(n.startswith("fruix_xcpng/") for n in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(next(tmp_path.glob("*.whl"))) as archive:
        assert "fruix-xapi-lab = fruix_xapi_lab.__main__:main" in \
            archive.read(entry_points).decode()


def test_the_lab_imports_nothing_from_the_provider() -> None:
    package = Path(fruix_xapi_lab.__file__).parent
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(m.startswith("fruix_xcpng") for m in modules), path


def test_facade_exports_what_it_names() -> None:
    for name in fruix_xapi_lab.__all__:
        assert hasattr(fruix_xapi_lab, name), f"fruix_xapi_lab.{name}"
