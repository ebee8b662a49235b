"""The test kit's pytest fixtures (a pytest plugin, entry point ``pytest11``).

See :mod:`fruix_core.testkit` for what each fixture gives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from fruix_core.model import Guest
from fruix_core.testkit import Workspace, copy_sample_source, make_toy_source, make_tree_writable
from fruix_core.testkit.guest import GuestRoot, make_guest_root
from fruix_core.testkit.sshd import SshdMissingError, SshServer

__all__ = [
    "fruix_executor_conformance",
    "fruix_guest",
    "fruix_guest_root",
    "fruix_sample_source",
    "fruix_sshd",
    "fruix_sshd_shared",
    "fruix_toy_source",
    "fruix_workspace",
]


@pytest.fixture
def fruix_sample_source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A read-only copy of the bundled sample base."""
    dest = tmp_path_factory.mktemp("sample-source") / "src"
    copy_sample_source(dest)
    yield dest
    make_tree_writable(dest)


@pytest.fixture
def fruix_workspace(tmp_path: Path) -> Iterator[Workspace]:
    """Temporary results directory, build root and store."""
    ws = Workspace(tmp_path / "fruix")
    ws.root.mkdir()
    yield ws
    make_tree_writable(ws.root)


@pytest.fixture
def fruix_toy_source(tmp_path: Path) -> Path:
    """A toy base (shell one-liners, FreeBSD's make interface): fast, easy to break."""
    return make_toy_source(tmp_path / "toy-src")


def _running_sshd(workdir: Path, base_system: Path | None = None) -> Iterator[SshServer]:
    """Start an sshd in ``workdir`` (a missing sshd fails the test, never skips it)."""
    server = SshServer(workdir, base_system=base_system)
    try:
        server.start()
    except SshdMissingError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fruix_sshd(tmp_path: Path) -> Iterator[SshServer]:
    """A real OpenSSH sshd on loopback for one test, stopped afterwards."""
    yield from _running_sshd(tmp_path / "sshd")


@pytest.fixture(scope="session")
def fruix_sshd_shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """One real OpenSSH sshd for the whole session; tests must not kill it."""
    yield from _running_sshd(tmp_path_factory.mktemp("sshd-shared"))


@pytest.fixture(scope="session")
def fruix_base_system(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A FreeBSD-shaped base system (dash, bsdtar, bmake, tcsh; no Python) for guests."""
    from fruix_core.testkit.guest import make_base_system

    return make_base_system(tmp_path_factory.mktemp("base-system"))


@pytest.fixture
def fruix_freebsd_sshd(tmp_path: Path, fruix_base_system: Path) -> Iterator[SshServer]:
    """An sshd whose commands run on :func:`fruix_base_system` under a tcsh login shell."""
    yield from _running_sshd(tmp_path / "sshd-freebsd", fruix_base_system)


@pytest.fixture
def fruix_guest_root(tmp_path: Path) -> GuestRoot:
    """A guest system root holding the bundled sample base as its source store."""
    from fruix_core.sample import sample_base_path

    return make_guest_root(tmp_path / "guest-root", sample_base_path())


@pytest.fixture
def fruix_guest(fruix_sshd: SshServer, fruix_guest_root: GuestRoot) -> Guest:
    """A :class:`~fruix_core.model.Guest` whose system root is ``fruix_guest_root``."""
    return fruix_sshd.guest(system_root=fruix_guest_root.path)


@pytest.fixture
def fruix_executor_conformance(tmp_path: Path) -> Callable[..., list[Any]]:
    """Run the executor conformance suite (:mod:`fruix_core.testkit.conformance`).

    Call it with the executor's entry-point name (and its settings, when it
    needs some); it returns the list of
    :class:`~fruix_core.testkit.conformance.CheckResult`::

        def test_conformance(fruix_executor_conformance):
            results = fruix_executor_conformance("chroot")
            assert all_passed(results), [r.line() for r in results]

    ``base_system=`` runs the test guest on a FreeBSD-shaped base system
    (:func:`fruix_core.testkit.guest.make_base_system`).
    """
    from fruix_core.testkit.conformance import run_checks

    def run(name: str, settings: Mapping[str, Any] | None = None, *,
            base_system: Path | None = None) -> list[Any]:
        return run_checks(name, tmp_path / f"conformance-{name}", settings,
                          base_system=base_system)

    return run
