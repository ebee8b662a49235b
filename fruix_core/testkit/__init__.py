"""Test kit for plugin authors: helpers here, pytest fixtures in :mod:`fruix_core.testkit.fixtures`.

The fixtures module is a pytest plugin, loaded automatically once ``fruix-core``
is installed (entry point ``pytest11``). This package itself does not import
pytest, so the XAPI lab and other tools can use the helpers without it.

Fixtures:

``fruix_sample_source``
    a private, read-only copy of the bundled sample base (a real C tree with
    FreeBSD's make interface).
``fruix_workspace``
    a :class:`Workspace`: temporary results directory, build root and store,
    and :meth:`Workspace.write_config` to write a ``fruix.toml`` for them.
``fruix_toy_source``
    a toy base whose phases are shell one-liners; a file ``fail-<phase>`` in it
    makes that phase fail, ``sleep-<phase>`` makes it sleep (the file's content in
    seconds, 60 when empty; with a background child, for cancel tests), and
    ``wait-<phase>`` makes it wait until a file ``go-<phase>`` appears (a barrier).
``fruix_sshd`` / ``fruix_guest_root``
    a real OpenSSH sshd on loopback and a Fruix guest system root (see
    :mod:`fruix_core.testkit.sshd` and :mod:`fruix_core.testkit.guest`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fruix_core.hookspecs import hookimpl

__all__ = [
    "TOY_MAKEFILE",
    "TeardownRecorder",
    "Workspace",
    "copy_sample_source",
    "make_toy_source",
    "make_tree_writable",
    "live_processes",
    "processes_in",
    "require_tool",
    "run_cli",
    "cli_process",
    "without_progress",
    "run_host_killed_in_phase",
    "toml_value",
    "wait_for",
    "wait_gone",
    "write_plugin_dist",
]


def make_tree_writable(path: Path) -> None:
    """Undo read-only modes under ``path`` (store objects, read-only sources) for cleanup."""
    if not path.exists() or path.is_symlink():
        return
    for dirpath, dirnames, _files in os.walk(path):
        for name in dirnames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                os.chmod(full, os.stat(full).st_mode | stat.S_IWUSR | stat.S_IXUSR)
    os.chmod(path, os.stat(path).st_mode | stat.S_IWUSR | stat.S_IXUSR)


def _make_read_only(path: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                os.chmod(full, os.stat(full).st_mode & ~0o222)
        for name in dirnames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                os.chmod(full, os.stat(full).st_mode & ~0o222)
    os.chmod(path, os.stat(path).st_mode & ~0o222)


def copy_sample_source(dest: Path, *, read_only: bool = True) -> Path:
    """Copy the bundled sample base to ``dest`` (read-only, like a store item)."""
    from fruix_core.sample import sample_base_path

    shutil.copytree(sample_base_path(), dest, symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    if read_only:
        _make_read_only(dest)
    return dest


def toml_value(value: Any) -> str:
    """``value`` (string, number, boolean, list) written as TOML, quotes and all escaped."""
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # A JSON string is a valid TOML basic string: quotes, backslashes and control
        # characters escaped, non-ASCII as \uXXXX (TOML 1.0, "Strings").
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


@dataclass
class Workspace:
    """Temporary places for one test's runs."""

    root: Path

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def build_root(self) -> Path:
        return self.root / "build"

    def write_config(self, text: str = "", *, source: Path | None = None,
                     name: str = "fruix.toml", **build: Any) -> Path:
        """Write a config using this workspace's paths; ``text`` is appended verbatim."""
        lines = ["[build]"]
        if source is not None:
            lines.append(f"source = {toml_value(str(source))}")
        for key, value in build.items():
            lines.append(f"{key} = {toml_value(value)}")
        lines += ["", "[paths]", f"store = {toml_value(str(self.store))}",
                  f"results = {toml_value(str(self.results))}",
                  f"build_root = {toml_value(str(self.build_root))}", ""]
        path = self.root / name
        path.write_text("\n".join(lines) + "\n" + text, encoding="utf-8")
        return path


#: A toy base with FreeBSD's make interface whose phases are shell one-liners:
#: fast, and easy to make fail or hang. FAIL_PHASE / SLEEP_PHASE are read from
#: files in the source tree (the build environment is sanitised, so not from env).
TOY_MAKEFILE = textwrap.dedent("""\
    OBJ = $(MAKEOBJDIRPREFIX)/toy
    all:
    \t@echo use a target
    check:
    \t@test -n "$(MAKEOBJDIRPREFIX)" || (echo MAKEOBJDIRPREFIX unset; exit 1)
    \t@if [ -f fail-$(PHASE) ]; then echo "toy: $(PHASE) failing on purpose"; exit 7; fi
    \t@if [ -f sleep-$(PHASE) ]; then s=$$(cat sleep-$(PHASE)); echo "toy: $(PHASE) sleeping"; \\
    \t  sleep $${s:-60} & sleep $${s:-60}; fi
    \t@if [ -f wait-$(PHASE) ]; then echo "toy: $(PHASE) waiting for go-$(PHASE)"; \\
    \t  while [ ! -f go-$(PHASE) ]; do sleep 0.1; done; fi
    buildworld:
    \t@$(MAKE) -s check PHASE=buildworld
    \tmkdir -p $(OBJ) && cp world.txt $(OBJ)/world.txt && echo built world
    buildkernel:
    \t@$(MAKE) -s check PHASE=buildkernel
    \tmkdir -p $(OBJ) && echo "kernel $(KERNCONF)" > $(OBJ)/kernel
    installworld:
    \t@$(MAKE) -s check PHASE=installworld
    \tmkdir -p $(DESTDIR)/bin $(DESTDIR)/usr/include/sys $(DESTDIR)/boot/defaults
    \tcp $(OBJ)/world.txt $(DESTDIR)/bin/sh && chmod 555 $(DESTDIR)/bin/sh
    \techo '#define TOY 1' > $(DESTDIR)/usr/include/sys/param.h
    \techo loader > $(DESTDIR)/boot/loader
    \techo 'autoboot_delay=3' > $(DESTDIR)/boot/defaults/loader.conf
    distribution:
    \t@$(MAKE) -s check PHASE=distribution
    \tmkdir -p $(DESTDIR)/etc && echo 'hostname=toy' > $(DESTDIR)/etc/rc.conf
    installkernel:
    \t@$(MAKE) -s check PHASE=installkernel
    \tmkdir -p $(DESTDIR)/boot/kernel && cp $(OBJ)/kernel $(DESTDIR)/boot/kernel/kernel
    """)


def make_toy_source(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "Makefile").write_text(TOY_MAKEFILE)
    (path / "world.txt").write_text("#!/bin/sh\necho toy shell\n")
    return path


def write_plugin_dist(root: Path, dist: str, module: str, source: str, entry_points: str,
                      version: str = "1.2.3") -> Path:
    """Lay out an installed distribution (one module and its ``.dist-info``) under ``root``.

    Put ``root`` on ``sys.path`` (``monkeypatch.syspath_prepend``) or
    ``PYTHONPATH`` and its entry points are discovered like those of any
    installed plugin. ``entry_points`` is the text of ``entry_points.txt``.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n",
                                   encoding="utf-8")
    (info / "top_level.txt").write_text(module + "\n", encoding="utf-8")
    (info / "RECORD").write_text(f"{module}.py,,\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points), encoding="utf-8")
    return root


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None,
          timeout: float = 300, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess (no terminal), as an operator would."""
    full_env = dict(os.environ if env is None else env)
    return subprocess.run([sys.executable, "-m", "fruix_core.cli.main", *args], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=timeout, **kw)


@contextlib.contextmanager
def cli_process(*args: str, cwd: Path, env: dict[str, str] | None = None
                ) -> Iterator[subprocess.Popen[str]]:
    """The real CLI running in the background (stdout and stderr piped, text), for a test
    that acts while it runs; killed and reaped on the way out if it is still running."""
    proc = subprocess.Popen([sys.executable, "-m", "fruix_core.cli.main", *args], cwd=cwd,
                            env=dict(os.environ if env is None else env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def without_progress(stderr: str) -> list[str]:
    """The lines of a ``native-build run``'s stderr (off a terminal) that are not its
    timestamped progress lines: the error line, the log tail, log records."""
    from fruix_core.cli.progress import LINE_PREFIX

    return [line for line in stderr.splitlines() if not LINE_PREFIX.match(line)]


#: A host process that SIGKILLs itself on the first line ``phase`` prints in the guest
#: (the command lines the host and the helper write first start with "#"), or, for
#: "import", once the executor's teardown returned: just before the core's import.
_KILLED_HOST = """\
import os, signal, sys
from fruix_core.config import load_config
from fruix_core.hookspecs import hookimpl
from fruix_core.runner import run_build

def output(phase, line):
    if phase == sys.argv[2] and not line.startswith("#"):
        os.kill(os.getpid(), signal.SIGKILL)

class KillBeforeImport:
    @hookimpl(trylast=True)
    def fruix_teardown_env(self, request, env, outcome):
        if sys.argv[2] == "import" and outcome.ok:
            os.kill(os.getpid(), signal.SIGKILL)

run_build(load_config(sys.argv[1]), on_output=output, extra_plugins=(KillBeforeImport(),))
"""


def run_host_killed_in_phase(config: Path, phase: str, *, cwd: Path, results: Path,
                             timeout: float = 300) -> str:
    """Run a build whose host process is SIGKILLed once ``phase`` runs in the guest;
    returns its run id (the only run in ``results``).

    Deterministic: the kill comes with the phase's first line of output, so
    the phase has started in the guest and the host has not seen it end.
    ``phase`` ``"import"`` kills the host after the phases, the staging and
    the executor's teardown, just before the core imports the guest's result
    root. The result root is left ``running`` with a dead pid (stale); an
    ``AssertionError`` says so when it is not.
    """
    from fruix_core.resultroot import ResultRoot

    proc = subprocess.run([sys.executable, "-c", _KILLED_HOST, str(config), phase], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != -signal.SIGKILL:
        raise AssertionError(f"the host was not killed (exit {proc.returncode}): {proc.stderr}")
    runs = [p.name for p in results.iterdir() if not p.name.startswith(".")
            and p.name != "latest"]
    if len(runs) != 1:
        raise AssertionError(f"expected one run in {results}, found {runs}")
    status = ResultRoot(results / runs[0]).status()
    if not (status.state == "running" and status.stale):
        raise AssertionError(f"run {runs[0]} is {status}, not a stale running one")
    return runs[0]


def processes_in(directory: Path) -> list[int]:
    """PIDs whose working directory is ``directory``: what a leaked make would leave behind."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd") == str(directory):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def require_tool(tool: str, package: str) -> str:
    """The path of ``tool``, or a test failure naming the Debian package to install.

    Tests never skip for a missing tool: a skipped test proves nothing, and
    ``.ci/run`` installs every tool the suite needs.
    """
    found = shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if found is None:
        import pytest

        pytest.fail(f"'{tool}' is not installed: apt-get install {package} "
                    "(.ci/run and scripts/bootstrap.py test install it)", pytrace=False)
    return found


def live_processes(pattern: str) -> list[int]:
    """Live (non-zombie) processes, other than this one, whose command line contains ``pattern``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            raw = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            cmdline = raw.decode("utf-8", "replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if pattern in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def wait_gone(pattern: str, seconds: float = 10.0) -> list[int]:
    """Wait until no live process matches ``pattern``; the ones left after ``seconds``."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and live_processes(pattern):
        time.sleep(0.1)
    return live_processes(pattern)


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    """Wait until ``condition()`` holds, at most ``seconds``; whether it held."""
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() >= deadline:
            return bool(condition())
        time.sleep(0.05)
    return True


class TeardownRecorder:
    """A plugin that records the teardowns the core asks for, and can cancel between phases.

    Register it beside the executor (``run_build(..., extra_plugins=(recorder,))``):
    ``calls`` lists ``(run id, outcome state, failed stage)`` per teardown. With
    ``cancel_after="buildworld"`` it cancels ``cancel`` as soon as that phase
    returned, so the core stops the run *between* two phases.
    """

    def __init__(self, cancel_after: str | None = None, cancel: Any = None) -> None:
        self.calls: list[tuple[str, str, str | None]] = []
        self.cancel_after = cancel_after
        self.cancel = cancel

    @hookimpl(wrapper=True)
    def fruix_run_phase(self, request: Any, env: Any, phase: Any) -> Any:
        result = yield
        if phase.name == self.cancel_after and self.cancel is not None:
            self.cancel.cancel("interrupted")
        return result

    @hookimpl
    def fruix_teardown_env(self, request: Any, env: Any, outcome: Any) -> None:
        self.calls.append((request.run_id, outcome.state, outcome.stage))
