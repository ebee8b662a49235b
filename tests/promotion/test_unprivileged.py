"""Promote and its attackers as an unprivileged account (``nobody``), via ``setpriv``.

The suite runs as root here; these cases drop to ``nobody`` where the point is
what an unprivileged owner of a result root can and cannot do.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fruix_core.errors import PromotionInputError
from fruix_core.promotion import promote, seams, verify
from fruix_core.testkit import require_tool

from .conftest import build_result_root
from .snapshot import store_bytes

SECRET = b"TOP SECRET: readable by root only\n"


@pytest.fixture
def nobody() -> pwd.struct_passwd:
    require_tool("setpriv", "util-linux")
    if os.geteuid() != 0:
        pytest.fail("these cases need root to act as 'nobody' (the CI runs as root)")
    return pwd.getpwnam("nobody")


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory ``nobody`` can reach (pytest's own temporary root is private to root)."""
    place = Path(tempfile.mkdtemp(prefix="fruix-unprivileged-", dir="/tmp"))
    os.chmod(place, 0o755)
    try:
        yield place
    finally:
        subprocess.run(["chmod", "-R", "u+rwx", str(place)], check=False)
        shutil.rmtree(place, ignore_errors=True)


def _as_nobody(user: pwd.struct_passwd, *argv: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "FRUIX_STORE_FSYNC": "none", "HOME": "/nonexistent",
           "XDG_CONFIG_HOME": "/nonexistent"}
    return subprocess.run(["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                           "--clear-groups", "--", *argv],
                          capture_output=True, timeout=120, env=env, cwd="/")


def _give(path: Path, user: pwd.struct_passwd) -> None:
    for base, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.chown(os.path.join(base, name), user.pw_uid, user.pw_gid,
                     follow_symlinks=False)
    os.chown(path, user.pw_uid, user.pw_gid)


def test_unreadable_file_is_refused_before_the_store_is_touched(
        shared_tmp: Path, nobody: pwd.struct_passwd) -> None:
    tmp_path = shared_tmp
    root = build_result_root(tmp_path / "r")
    _give(root, nobody)
    os.chmod(root / "artifacts/world/etc/rc.conf", 0o000)
    place = tmp_path / "stores"
    place.mkdir()
    _give(place, nobody)
    done = _as_nobody(nobody, sys.executable, "-m", "fruix_core.cli.main", "native-build",
                      "promote", str(root), "--store", str(place / "store"))
    assert done.returncode == 2, done.stderr
    assert b"rc.conf: cannot read: Permission denied" in done.stderr
    assert not (place / "store").exists(), "refused by validation: no store is created"


def test_unprivileged_owner_swaps_a_directory_while_root_promotes(
        shared_tmp: Path, nobody: pwd.struct_passwd) -> None:
    # The reported attack, with the attacker really unprivileged: the result root
    # belongs to nobody; the victim is a root-only file (0600 in a 0700 directory).
    tmp_path = shared_tmp
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    (victim / "master.passwd").write_bytes(SECRET)
    os.chmod(victim / "master.passwd", 0o600)
    root = build_result_root(tmp_path / "r")
    (root / "artifacts/world/etc/aaa-big").write_bytes(b"x" * (6 << 20))
    _give(root, nobody)
    world = root / "artifacts/world"
    original = (world / "etc/master.passwd").read_bytes()
    store = tmp_path / "store"
    swapped = []

    def attacker(rel: bytes) -> None:
        if rel == b"etc/aaa-big" and not swapped:
            code = (f"import os; os.rename({str(world / 'etc')!r}, "
                    f"{str(world / 'etc.moved')!r}); "
                    f"os.symlink({str(victim)!r}, {str(world / 'etc')!r})")
            done = _as_nobody(nobody, sys.executable, "-c", code)
            assert done.returncode == 0, done.stderr
            swapped.append(True)

    with seams.installed("walk.reading", attacker):
        try:
            outcome = promote(root, store)
        except PromotionInputError:
            outcome = None
    assert swapped, "the attack must have happened mid-read"
    assert SECRET not in store_bytes(store)
    if outcome is not None:
        assert (outcome.artifacts["world"] / "etc/master.passwd").read_bytes() == original
    assert verify(store).ok


def test_unprivileged_owner_cannot_hide_a_change_from_the_stat_cache(
        shared_tmp: Path, nobody: pwd.struct_passwd, monkeypatch: pytest.MonkeyPatch) -> None:
    # The owner of the result root rewrites a file after it was promoted and cached,
    # keeping its size and restoring its mtime: only the ctime tells, and no
    # unprivileged process can set that back. The re-promotion reads the file again.
    from fruix_core.promotion import statcache
    monkeypatch.setattr(statcache, "RACY_MARGIN_NS", 0)
    root = build_result_root(shared_tmp / "r")
    _give(root, nobody)
    store = shared_tmp / "store"
    first = promote(root, store)
    target = root / "artifacts/world/etc/rc.conf"
    code = ("import os, sys; p = sys.argv[1]; st = os.stat(p); d = open(p, 'rb').read(); "
            "open(p, 'r+b').write(d.upper()); "
            "os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))")
    done = _as_nobody(nobody, sys.executable, "-c", code, str(target))
    assert done.returncode == 0, done.stderr
    seen: list[bytes] = []
    with seams.installed("walk.reading", seen.append):
        again = promote(root, store)
    assert b"etc/rc.conf" in seen
    assert again.artifacts["world"] != first.artifacts["world"]
    assert (again.artifacts["world"] / "etc/rc.conf").read_bytes() == target.read_bytes()
    assert verify(store).ok
