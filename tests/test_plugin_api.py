"""The declared plugin API: one public module, typed distributions, one version source each."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import fruix_core.api as api
from fruix_core.plugins import load

REPO = Path(__file__).resolve().parents[1]

#: (project directory, import package, distribution)
DISTRIBUTIONS = [
    (REPO, "fruix_core", "fruix-core"),
    (REPO / "plugins/local", "fruix_local", "fruix-executor-local"),
    (REPO / "plugins/host-initiated", "fruix_host_initiated", "fruix-executor-host-initiated"),
    (REPO / "plugins/guest-self-hosted", "fruix_guest_self_hosted",
     "fruix-executor-guest-self-hosted"),
    (REPO / "plugins/xcpng", "fruix_xcpng", "fruix-guest-xcpng"),
]

#: What a plugin may import from the core: the facade, the plugin API, the test kit.
PUBLIC = ("fruix_core", "fruix_core.api", "fruix_core.testkit")


def _core_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("fruix_core")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fruix_core"):
            module = node.module or ""
            if module == "fruix_core":  # from fruix_core import api / hookimpl
                found += [(node.lineno, f"fruix_core.{a.name}") if a.name == "api"
                          else (node.lineno, "fruix_core") for a in node.names]
            else:
                found.append((node.lineno, module))
    return found


def _is_public(module: str) -> bool:
    return module in PUBLIC or module.startswith("fruix_core.testkit.")


@pytest.mark.parametrize("package", [d[1] for d in DISTRIBUTIONS[1:]])
def test_shipped_plugins_import_only_the_public_api(package):
    root = next(d[0] for d in DISTRIBUTIONS if d[1] == package) / package
    private = [f"{path.relative_to(REPO)}:{line}: {module}"
               for path in sorted(root.rglob("*.py")) for line, module in _core_imports(path)
               if not _is_public(module)]
    assert private == [], "private core modules imported:\n" + "\n".join(private)


def test_the_api_exports_what_it_names_lazily_for_ssh():
    for name in api.__all__:
        assert getattr(api, name) is not None, name
    code = ("import sys, fruix_core.api; "
            "print('paramiko' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize(("project", "package", "dist"), DISTRIBUTIONS)
def test_each_distribution_is_typed(project, package, dist):
    assert (project / package / "py.typed").is_file()
    files = importlib.metadata.files(dist) or []
    # Editable installs list only their .pth; a built wheel lists py.typed (hatch takes
    # every file of the package), so check the tree the wheel is built from.
    assert any(str(f).endswith("py.typed") for f in files) or \
        (project / package / "py.typed").is_file()


@pytest.mark.parametrize(("project", "package", "dist"), DISTRIBUTIONS)
def test_one_version_source_per_distribution(project, package, dist):
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"], "the version lives in the package only"
    assert "version" in pyproject["project"]["dynamic"]
    source = project / pyproject["tool"]["hatch"]["version"]["path"]
    assert source.is_file() and source.is_relative_to(project / package)
    module = importlib.import_module(package)
    assert module.__version__ == importlib.metadata.version(dist)


@pytest.mark.parametrize(("kind", "name", "dist"), [
    ("executor", "local", "fruix-executor-local"),
    ("executor", "host-initiated", "fruix-executor-host-initiated"),
    ("executor", "guest-self-hosted", "fruix-executor-guest-self-hosted"),
    ("guest-provider", "xcpng", "fruix-guest-xcpng"),
    ("guest-provider", "ssh", "fruix-core"),
    ("observer", "command", "fruix-core"),
])
def test_the_version_in_identity_is_the_distributions(kind, name, dist):
    loaded = load(kind, name)
    assert (loaded.distribution, loaded.version) == (dist, importlib.metadata.version(dist))
    # No class carries a version of its own that could drift from the distribution's.
    assert not hasattr(type(loaded.plugin), "version")
    assert loaded.plugin.fruix_plugin_api == api.PLUGIN_API_VERSION
