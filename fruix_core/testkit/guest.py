"""Directories laid out like a Fruix guest system, for in-guest executor tests.

A guest system root made by :func:`make_guest_root` holds what an in-guest
executor expects on a real Fruix guest (whose system root is ``/``)::

    <root>/run/current-system/metadata/store-layout.scm   where the store items are
    <root>/frx/store/<32-char hash>-freebsd-source/       the source, as a store item
    <root>/usr/include/  <root>/usr/share/mk/             development overlay (optional)
    <root>/var/lib/fruix/native-builds/                   result roots
    <root>/var/tmp/                                       heavy work area

Pytest fixtures (in :mod:`fruix_core.testkit.fixtures`):

``fruix_guest_root``
    a :class:`GuestRoot` holding the bundled sample base;
``fruix_guest``
    a :class:`~fruix_core.model.Guest` for that root, reached through
    ``fruix_sshd`` (see :mod:`fruix_core.testkit.sshd`).

A FreeBSD-shaped guest
----------------------

A Fruix guest is a FreeBSD system: its base has ``sh``, ``bsdtar`` as
``tar``, BSD make as ``make``, ``sha256``, ``stat -f``, ``sysctl``, and no
Python. :func:`make_base_system` lays out such a base from this machine's
tools (``dash`` as ``sh``, ``bsdtar`` as ``tar``, ``bmake`` as ``make``, the C
toolchain, ``tcsh`` as ``csh``; no Python, no bash) and
:func:`base_system_command` runs a command with it mounted over ``/bin``,
``/sbin``, ``/usr/bin``, ``/usr/sbin`` and ``/usr/local/bin`` in a private
mount namespace (``unshare -m``), so every absolute path and every ``PATH``
lookup inside sees only that base. The test kit's sshd takes it as the
guest's system (:class:`~fruix_core.testkit.sshd.SshServer` ``base_system``),
with ``tcsh`` as the login shell that reads every command, as a FreeBSD
user's ``csh`` would.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from fruix_core.guestlayout import LAYOUT_RELATIVE_PATH, StoreLayout, write_store_layout

__all__ = [
    "BASE_TOOLS",
    "GuestRoot",
    "base_system_command",
    "make_base_system",
    "make_guest_root",
    "source_hash",
]

_NIX_BASE32 = "0123456789abcdfghijklmnpqrsvwxyz"
STORE_DIRECTORY = "/frx/store"


@dataclass(frozen=True, slots=True)
class GuestRoot:
    """A guest system root on this machine and what it holds.

    ``source_store`` is the source's path *as the guest sees it*
    (``/frx/store/...``); ``source_dir`` is the same tree on this machine.
    """

    path: Path
    source_store: str
    source_dir: Path
    layout_file: Path
    results_dir: Path
    work_dir: Path
    closure_path: str
    development_profile_path: str

    def on_host(self, guest_path: str) -> Path:
        """This machine's path of a guest path (``/frx/store/x`` → ``<root>/frx/store/x``)."""
        return self.path / guest_path.lstrip("/")


def _base32(digest: bytes, length: int = 32) -> str:
    number = int.from_bytes(digest, "big")
    chars = []
    for _ in range(length):
        number, rest = divmod(number, 32)
        chars.append(_NIX_BASE32[rest])
    return "".join(chars)


def source_hash(source_dir: Path) -> tuple[str, str]:
    """``(32-character store hash, "sha256:<NAR hash>")`` of a source tree.

    The signature is the one the ``local`` executor records for the same tree,
    so in-guest and local runs declare the same source.
    """
    from fruix_core.promotion.nar import tree_signature

    nar = tree_signature(source_dir)
    return _base32(bytes.fromhex(nar)), f"sha256:{nar}"


def make_guest_root(path: Path, source_dir: Path, *, with_overlay: bool = True,
                    host_name: str = "fruix-test-guest") -> GuestRoot:
    """Lay out a Fruix guest system root at ``path`` holding ``source_dir`` as its source store.

    :param with_overlay: create the development overlay (``usr/include``,
        ``usr/share/mk``); without it ``prepare-env`` must refuse the guest.
    """
    path = Path(path)
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise FileNotFoundError(f"source tree not found: {source_dir}")
    path.mkdir(parents=True, exist_ok=True)
    staging = path / "frx/store/.incoming-source"
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(source_dir, staging, symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".git"))
    digest, signature = source_hash(staging)
    source_store = f"{STORE_DIRECTORY}/{digest}-freebsd-source"
    host_source = path / source_store.lstrip("/")
    if host_source.exists():
        shutil.rmtree(staging)
    else:
        os.rename(staging, host_source)
    fake = hashlib.sha256(digest.encode()).digest()
    closure = f"{STORE_DIRECTORY}/{_base32(fake)}-fruix-system-closure"
    profile = f"{STORE_DIRECTORY}/{_base32(fake[::-1])}-fruix-development-profile"
    for item in (closure, profile):
        (path / item.lstrip("/")).mkdir(parents=True, exist_ok=True)
    layout_file = write_store_layout(path, StoreLayout(
        source_path=source_store, store_directory=STORE_DIRECTORY, source_signature=signature,
        closure_path=closure,
        development_profile_path=profile, host_name=host_name))
    if with_overlay:
        include = path / "usr/include"
        include.mkdir(parents=True, exist_ok=True)
        (include / "fruix-overlay.h").write_text("/* development overlay marker */\n")
        mk = path / "usr/share/mk"
        mk.mkdir(parents=True, exist_ok=True)
        (mk / "sys.mk").write_text("# development overlay marker\n")
    results = path / "var/lib/fruix/native-builds"
    results.mkdir(parents=True, exist_ok=True)
    work = path / "var/tmp"
    work.mkdir(parents=True, exist_ok=True)
    assert layout_file == path / LAYOUT_RELATIVE_PATH
    return GuestRoot(path=path, source_store=source_store, source_dir=host_source,
                     layout_file=layout_file, results_dir=results, work_dir=work,
                     closure_path=closure, development_profile_path=profile)


#: The guest base system: its name -> this machine's tool (FreeBSD's name first).
BASE_TOOLS: dict[str, str] = {
    "sh": "dash", "csh": "tcsh", "tcsh": "tcsh", "tar": "bsdtar", "bsdtar": "bsdtar",
    "make": "bmake", "bmake": "bmake", "cc": "cc", "cpp": "cpp", "as": "as",
    "ld": "ld", "ar": "ar", "nm": "nm", "ranlib": "ranlib", "strip": "strip",
    "objcopy": "objcopy", "getconf": "getconf", "nproc": "nproc",
    **{tool: tool for tool in (
        "[", "awk", "basename", "cat", "chmod", "chown", "cksum", "cmp", "cp", "cut", "date",
        "dd", "df", "diff", "dirname", "du", "echo", "env", "expr", "false", "find", "grep",
        "head", "hostname", "id", "install", "kill", "ln", "ls", "mkdir", "mktemp", "mv",
        "nohup", "od", "printf", "ps", "pwd", "readlink", "rm", "rmdir", "sed", "setsid",
        "sha256sum", "sleep", "sort", "stat", "tail", "tee", "test", "timeout", "touch", "tr",
        "true", "uname", "uniq", "wc", "whoami", "xargs")},
}
#: Directories of the base, mounted over this machine's.
BASE_DIRS = ("bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin")


#: sysctl(8) of the test guest: the one MIB Fruix reads, ``hw.ncpu`` (as FreeBSD prints it).
SYSCTL = """#!/bin/sh
# sysctl(8) of the Fruix test guest: only hw.ncpu, as FreeBSD answers it.
n=''
if [ "${1-}" = -n ]; then n=1; shift; fi
case ${1-} in
hw.ncpu) if [ -n "$n" ]; then echo @NCPU@; else echo "hw.ncpu: @NCPU@"; fi ;;
*) echo "sysctl: unknown oid '${1-}'" >&2; exit 1 ;;
esac
"""


def make_base_system(path: Path, *, extra: dict[str, Path] | None = None,
                     ncpu: int | None = None) -> Path:
    """Lay out a FreeBSD-shaped base system at ``path`` (idempotent).

    Every tool of :data:`BASE_TOOLS` is copied (not linked: the originals are
    hidden in the namespace) into ``bin`` and ``usr/bin``; ``sbin`` and
    ``usr/sbin`` hold a ``sysctl`` answering ``hw.ncpu`` (``ncpu``, default
    this machine's CPU count) and ``usr/local/bin`` holds ``extra`` (guest
    name -> file, e.g. the self-hosted helper). Python and bash are not there.

    :raises FileNotFoundError: naming the Debian package of a missing tool.
    """
    from fruix_core.testkit import require_tool

    path = Path(path)
    marker = path / ".fruix-base-system"
    if not marker.exists():
        packages = {"dash": "dash", "tcsh": "tcsh", "bsdtar": "libarchive-tools",
                    "bmake": "bmake", "cc": "gcc", "cpp": "cpp", "as": "binutils",
                    "ld": "binutils", "ps": "procps", "setsid": "util-linux"}
        for directory in BASE_DIRS:
            (path / directory).mkdir(parents=True, exist_ok=True)
        for name, tool in BASE_TOOLS.items():
            found = shutil.which(tool)
            if found is None:
                require_tool(tool, packages.get(tool, "coreutils"))
                continue
            for directory in ("bin", "usr/bin"):
                target = path / directory / name
                if not target.exists():
                    shutil.copy(os.path.realpath(found), target)
                    os.chmod(target, 0o755)
        marker.write_text("FreeBSD-shaped base of the Fruix test kit\n")
    for directory in ("sbin", "usr/sbin"):
        sysctl = path / directory / "sysctl"
        sysctl.write_text(SYSCTL.replace("@NCPU@", str(ncpu or os.cpu_count() or 1)))
        os.chmod(sysctl, 0o755)
    for name, source in (extra or {}).items():
        target = path / "usr/local/bin" / name
        shutil.copy(source, target)
        os.chmod(target, stat.S_IMODE(os.stat(source).st_mode) | 0o555)
    return path


def base_system_command(base: Path, argv: list[str], *, user: int | None = None) -> list[str]:
    """``argv`` run with ``base`` mounted over the system's tool directories.

    The mounts live in a private mount namespace (``unshare -m``; as a
    non-root user a user namespace too), so nothing outside changes. The
    directory holding ``mount`` is covered last.

    :param user: run ``argv`` as this uid (its gid the same number, no
        supplementary groups), as a build user of the guest would; needs root.
    """
    mount = shutil.which("mount") or "/bin/mount"
    binds = []
    for directory in BASE_DIRS:
        real = "/" + directory
        if os.path.islink(real) or not os.path.isdir(real):
            continue  # merged /usr: /bin is /usr/bin
        binds.append((str(Path(base) / directory), real))
    mount_dir = os.path.dirname(os.path.realpath(mount))
    binds.sort(key=lambda pair: os.path.realpath(pair[1]) == mount_dir)
    drop = ""
    if user is not None:
        # setpriv is this machine's, kept outside the base's PATH directories.
        tools = Path(base) / ".fruix-tools"
        tools.mkdir(exist_ok=True)
        setpriv = tools / "setpriv"
        if not setpriv.exists():
            shutil.copy(os.path.realpath(shutil.which("setpriv") or "/usr/bin/setpriv"),
                        setpriv)
        drop = (f"{shlex.quote(str(setpriv))} --reuid={int(user)} --regid={int(user)} "
                "--clear-groups ")
    # FreeBSD's login PATH (login.conf's default), nothing of this machine's.
    script = "; ".join(f"{shlex.quote(mount)} --bind {shlex.quote(src)} {shlex.quote(dst)}"
                       for src, dst in binds) + (
        "; PATH=/sbin:/bin:/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin; export PATH"
        f'; exec {drop}"$@"')
    unshare = shutil.which("unshare") or "/usr/bin/unshare"
    flags = ["-m"] if os.geteuid() == 0 else ["-r", "-m"]
    return [unshare, *flags, "--", "/bin/sh", "-c", script, "fruix-base-system", *argv]
