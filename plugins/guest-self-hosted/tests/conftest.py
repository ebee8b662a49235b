"""Fixtures for the guest self-hosted tests: guest roots, the helper command, reference builds.

A "guest" is a system root directory on this machine (see
:mod:`fruix_core.testkit.guest`); its compilers and make are this machine's.
The reference build is the ``local`` executor's build of the very same source
store, for tree-signature comparisons.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from fruix_core.model import ARTIFACT_KINDS
from fruix_core.testkit import make_toy_source, make_tree_writable, processes_in
from fruix_core.testkit.guest import GuestRoot, make_guest_root

HELPER_SCRIPT = Path(sys.executable).parent / "fruix-self-hosted-native-build"


def helper_command() -> list[str]:
    """The helper as installed in this environment (its console script, else ``-m``)."""
    if HELPER_SCRIPT.exists():
        return [str(HELPER_SCRIPT)]
    return [sys.executable, "-m", "fruix_guest_self_hosted.helper"]


def run_helper(*args: str, env: dict[str, str] | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the helper in a subprocess, as an operator in the guest would."""
    return subprocess.run([*helper_command(), *args], env=env if env is not None else
                          dict(os.environ), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def summary_of(proc: subprocess.CompletedProcess[str]) -> dict:
    """The ``--json`` document a helper run printed."""
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"no JSON document on stdout:\n{proc.stdout}\n{proc.stderr}") \
            from None


def signatures(result_root: Path, kinds: Sequence[str] = ARTIFACT_KINDS) -> dict[str, str]:
    """``kind → tree signature`` of a result root's artifacts."""
    from fruix_core.promotion.nar import tree_signature

    return {kind: tree_signature(result_root / "artifacts" / kind) for kind in kinds}


def kill_processes_in(directory: Path) -> None:
    """Kill the process groups of whatever still runs in ``directory`` (test cleanup)."""
    import signal

    for pid in processes_in(directory):
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@pytest.fixture(scope="session")
def sample_guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuestRoot]:
    """A guest system root holding the bundled sample base (shared; runs add result roots)."""
    from fruix_core.sample import sample_base_path

    root = make_guest_root(tmp_path_factory.mktemp("sample-guest") / "root", sample_base_path())
    yield root
    make_tree_writable(root.path)


@pytest.fixture(scope="session")
def local_reference(tmp_path_factory: pytest.TempPathFactory,
                    sample_guest: GuestRoot) -> dict[str, str]:
    """Tree signatures of the ``local`` executor's build of the sample guest's source store."""
    from fruix_local import LocalExecutor

    from fruix_core.config import Config
    from fruix_core.runner import run_build

    work = tmp_path_factory.mktemp("local-reference")
    config = Config(source=sample_guest.source_dir, store=work / "store",
                    results=work / "results", build_root=work / "build", promote=False, jobs=2)
    outcome = run_build(config, executor_plugin=LocalExecutor())
    return signatures(outcome.result_root)


def make_toy_guest(base: Path, *, with_overlay: bool = True, **marks: str) -> GuestRoot:
    """A guest whose source store is the test kit's toy base.

    ``marks`` become files in the source (``fail_buildkernel=""`` → ``fail-buildkernel``,
    ``sleep_buildworld="30"``), which make that phase fail or sleep.
    """
    source = make_toy_source(base / "toy-src")
    for name, content in marks.items():
        (source / name.replace("_", "-")).write_text(content)
    return make_guest_root(base / "root", source, with_overlay=with_overlay)


class Kit:
    """The helpers above, for test modules (which cannot import this conftest)."""

    helper_command = staticmethod(helper_command)
    run_helper = staticmethod(run_helper)
    summary_of = staticmethod(summary_of)
    signatures = staticmethod(signatures)
    processes_in = staticmethod(processes_in)
    kill_processes_in = staticmethod(kill_processes_in)
    make_toy_guest = staticmethod(make_toy_guest)


@pytest.fixture(scope="session")
def kit() -> type[Kit]:
    """Helpers: run the helper, read its summary, compare signatures, make toy guests."""
    return Kit


@pytest.fixture
def toy_guest(tmp_path: Path) -> GuestRoot:
    """A guest whose source store is the toy base (fast)."""
    return make_toy_guest(tmp_path)
