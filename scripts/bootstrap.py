#!/usr/bin/env python3
"""Create the project's environment (``.venv``) if needed, then run fruix or the tests.

    python3 scripts/bootstrap.py fruix native-build run     # the main job
    python3 scripts/bootstrap.py test [PYTEST ARGS]          # the whole test suite

Only the standard library is used here, so a fresh machine with python3 is
enough. The environment holds the core, every plugin under plugins/ (editable)
and the test requirements; it is refreshed when a pyproject.toml changes.
The test suite needs real system tools (OpenSSH's sshd, nix-hash, guile,
bmake, a C compiler); when one is missing and we are root on Debian they are
installed with apt-get, otherwise the command to run is printed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = Path(os.environ.get("FRUIX_DEV_VENV", ROOT / ".venv"))
PLUGINS = sorted(p for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").is_file())

#: tool on PATH -> Debian package that provides it
SYSTEM_TOOLS = {
    "chromium": "chromium", "zsh": "zsh",
    "sshd": "openssh-server", "ssh": "openssh-client", "nix-hash": "nix-bin",
    "nix-store": "nix-bin", "guile": "guile-3.0", "bmake": "bmake", "cc": "gcc",
    "make": "make", "tar": "tar", "bsdtar": "libarchive-tools", "dash": "dash",
    "tcsh": "tcsh", "shellcheck": "shellcheck", "ps": "procps", "zstd": "zstd",
}
SBIN = "/usr/sbin:/sbin"


def _stamp() -> str:
    digest = hashlib.sha256()
    for path in [ROOT / "pyproject.toml", *(p / "pyproject.toml" for p in PLUGINS)]:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def ensure_env(with_tests: bool) -> Path:
    python = ENV / "bin" / "python"
    marker = ENV / (".fruix-stamp-test" if with_tests else ".fruix-stamp")
    stamp = _stamp()
    # The test environment is a superset of the plain one: either stamp will do for fruix.
    ready = [marker] if with_tests else [marker, ENV / ".fruix-stamp-test"]
    if python.exists() and any(m.exists() and m.read_text() == stamp for m in ready):
        return python
    if not python.exists():
        print(f"bootstrap: creating {ENV}", file=sys.stderr)
        try:
            venv.EnvBuilder(with_pip=True, upgrade_deps=False).create(ENV)
        except (subprocess.CalledProcessError, OSError) as exc:
            sys.exit(f"bootstrap: cannot create a virtual environment ({exc}); "
                     "on Debian: apt-get install python3-venv")
    core = f"{ROOT}[test]" if with_tests else str(ROOT)
    args = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "-e", core]
    for plugin in PLUGINS:
        args += ["-e", str(plugin)]
    if with_tests:
        args += ["tox", "ruff", "mypy", "types-paramiko", "sphinx", "myst-parser"]
    print("bootstrap: installing the core and plugins (editable)", file=sys.stderr)
    subprocess.run(args, check=True)
    marker.write_text(stamp)
    return python


def missing_tools(tools: dict[str, str] = SYSTEM_TOOLS) -> dict[str, str]:
    path = os.environ.get("PATH", "") + ":" + SBIN
    return {tool: pkg for tool, pkg in tools.items()
            if shutil.which(tool, path=path) is None}


#: what the main job (the sample base, built locally) needs on PATH
MAIN_JOB_TOOLS = {"bmake": "bmake", "cc": "gcc"}


def ensure_system_tools(tools: dict[str, str] = SYSTEM_TOOLS,
                        purpose: str = "the test suite") -> None:
    missing = missing_tools(tools)
    if not missing:
        return
    packages = sorted(set(missing.values()))
    command = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"bootstrap: installing {' '.join(packages)} for {purpose}", file=sys.stderr)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(command, check=True, env=env)
        return
    sys.exit(f"bootstrap: {purpose} needs " + ", ".join(sorted(missing))
             + "; install them with: sudo " + " ".join(command))


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("fruix", "test", "env"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    what, rest = argv[0], argv[1:]
    if what == "fruix":
        python = ensure_env(with_tests=False)
        if rest[:2] == ["native-build", "run"]:
            ensure_system_tools(MAIN_JOB_TOOLS, "building the sample base")
        return subprocess.call([str(ENV / "bin" / "fruix"), *rest])
    python = ensure_env(with_tests=True)
    if what == "env":
        print(python.parent)
        return 0
    ensure_system_tools()
    env = dict(os.environ)
    env["PATH"] = f"{python.parent}:{env.get('PATH', '')}:{SBIN}"
    return subprocess.call([str(python), "-m", "pytest", *rest], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
