"""The bundled sample base: real builds of all five phases with BSD make.

Nothing is mocked: every test compiles the tree with ``cc`` through the
phase commands of :mod:`fruix_core.profile` (install phases unprivileged,
``-DNO_ROOT METALOG=... DB_FROM_SRC=yes``), in the environment of
:func:`fruix_core.environment.sanitised_environment`, from a read-only copy.

What the tree models is FreeBSD's: ``Makefile.inc1`` (``-DNO_ROOT`` gives
``INSTALLFLAGS+= -U -M ${METALOG} -D ${INSTALL_DDIR}``, ``DB_FROM_SRC`` gives
``-N ${.CURDIR}/etc``, installworld starts the METALOG with ``#mtree 2.0``),
``usr.bin/xinstall/xinstall.c`` (``metadata_log``: ``type``, ``uname``,
``gname``, ``mode=%#o``, ``link``, ``size``, ``flags``; ``-U`` chmods
``mode & 0777`` and leaves directories alone), ``share/mk/sys.mk``
(``__MAKE_CONF?=/etc/make.conf``), ``share/mk/src.sys.mk``
(``SRCCONF?=/etc/src.conf``) and ``share/mk/src.sys.env.mk``
(``SRC_ENV_CONF?=/etc/src-env.conf``), all in freebsd/freebsd-src.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fruix_core.environment import sanitised_environment
from fruix_core.profile import (
    PHASES,
    BuildPaths,
    PinnedConfiguration,
    phase_by_name,
    phase_command,
)
from fruix_core.promotion.metalog import parse_metalog
from fruix_core.sample import SAMPLE_KERNCONFS, sample_base_path
from fruix_core.testkit import require_tool

BSD_MAKE = "bmake"


@pytest.fixture(autouse=True)
def _tools() -> None:
    """A C compiler and bmake are required (never a skip)."""
    require_tool("cc", "gcc")
    require_tool(BSD_MAKE, "bmake")


# ---- helpers

def copy_read_only(dest: Path) -> Path:
    """A copy of the sample base at ``dest`` with every write bit removed."""
    shutil.copytree(sample_base_path(), dest, ignore=shutil.ignore_patterns("__pycache__"))
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            os.chmod(path, stat.S_IMODE(os.lstat(path).st_mode) & ~0o222)
    os.chmod(dest, stat.S_IMODE(dest.stat().st_mode) & ~0o222)
    return dest


def make_writable(root: Path) -> None:
    for dirpath, dirnames, _ in os.walk(root):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o755)
    os.chmod(root, 0o755)


def run_phase(name: str, *, make: str, source: Path, build_root: Path,
              kernconf: str = "GENERIC", jobs: int = 2,
              pinned: PinnedConfiguration | None = None) -> subprocess.CompletedProcess[str]:
    """Run one phase exactly as an executor does (profile argv, sanitised environment)."""
    argv, extra = phase_command(phase_by_name(name), make=make, jobs=jobs,
                                paths=BuildPaths(str(build_root)), kernconf=kernconf,
                                pinned=pinned)
    env = sanitised_environment()
    env.update(extra)
    return subprocess.run(argv, cwd=source, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def build_all(*, make: str, source: Path, build_root: Path, jobs: int) -> None:
    for phase in PHASES:
        result = run_phase(phase.name, make=make, source=source, build_root=build_root,
                           jobs=jobs)
        assert result.returncode == 0, (
            f"{make} {phase.name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def source_snapshot(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every entry of a tree with its mode, size, mtime and content digest."""
    snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            digest = ""
            if stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            snapshot[os.path.relpath(path, root)] = (st.st_mode, st.st_size,
                                                     st.st_mtime_ns, digest)
    st = root.lstat()
    snapshot["."] = (st.st_mode, 0, st.st_mtime_ns, "")
    return snapshot


@dataclass(frozen=True)
class TreeDescription:
    """What reproducibility promises about a tree (not mtimes, not owners)."""

    entries: dict[str, tuple[str, ...]]
    hard_links: list[list[str]]


def describe(root: Path) -> TreeDescription:
    entries: dict[str, tuple[str, ...]] = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                entries[rel] = ("symlink", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                entries[rel] = ("directory",)
            elif stat.S_ISREG(st.st_mode):
                entries[rel] = (
                    "file",
                    hashlib.sha256(Path(path).read_bytes()).hexdigest(),
                    "executable" if st.st_mode & stat.S_IXUSR else "-",
                    "setuid" if st.st_mode & stat.S_ISUID else "-",
                    "setgid" if st.st_mode & stat.S_ISGID else "-",
                )
                inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
            else:
                entries[rel] = ("other",)
    groups = sorted(sorted(names) for names in inodes.values() if len(names) > 1)
    return TreeDescription(dict(sorted(entries.items())), groups)


def posix_cksum(data: bytes) -> int:
    """POSIX cksum(1), written independently of the C version in libsample."""
    crc = 0

    def feed(byte: int) -> None:
        nonlocal crc
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF

    for byte in data:
        feed(byte)
    length = len(data)
    while length:
        feed(length & 0xFF)
        length >>= 8
    return ~crc & 0xFFFFFFFF


# ---- the two reference builds, shared by the module

@dataclass(frozen=True)
class Build:
    make: str
    source: Path
    build_root: Path
    before: dict[str, tuple[int, int, int, str]]

    @property
    def world(self) -> Path:
        return Path(BuildPaths(str(self.build_root)).stage_world)

    @property
    def kernel(self) -> Path:
        return Path(BuildPaths(str(self.build_root)).stage_kernel)


def _build(make: str, source: Path, build_root: Path, jobs: int) -> Build:
    copy_read_only(source)
    before = source_snapshot(source)
    build_all(make=make, source=source, build_root=build_root, jobs=jobs)
    return Build(make, source, build_root, before)


@pytest.fixture(scope="module")
def first_build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Build]:
    top = tmp_path_factory.mktemp("first")
    build = _build(BSD_MAKE, top / "src", top / "build", jobs=2)
    yield build
    make_writable(build.source)


@pytest.fixture(scope="module")
def bsd_build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Build]:
    require_tool(BSD_MAKE, "bmake")
    # Other lengths and depths for both the source tree and the object directory.
    top = tmp_path_factory.mktemp("bsd")
    build = _build(BSD_MAKE, top / "a" / "longer" / "source-tree-location",
                   top / "elsewhere" / "root", jobs=8)
    yield build
    make_writable(build.source)


# ---- the package data

def test_sample_base_is_data_with_the_make_interface() -> None:
    root = sample_base_path()
    assert root.is_dir() and (root / "Makefile").is_file()
    assert not (root / "__init__.py").exists()
    for conf in SAMPLE_KERNCONFS:
        assert (root / "sys" / "amd64" / "conf" / conf).is_file()


def test_the_tree_brings_its_own_share_mk_and_install() -> None:
    root = sample_base_path()
    for name in ("Makefile", "Makefile.inc1", "share/mk/sys.mk", "share/mk/src.sys.mk",
                 "share/mk/src.sys.env.mk", "share/mk/bsd.own.mk", "tools/install.sh",
                 "etc/master.passwd", "etc/group"):
        assert (root / name).is_file(), name
    # FreeBSD's top-level Makefile hands the work to Makefile.inc1 with -m share/mk.
    assert "-m ${SRCTOP}/share/mk -f ${SRCTOP}/Makefile.inc1" in (root / "Makefile").read_text()


def test_gnu_make_is_refused_with_a_message(tmp_path: Path) -> None:
    require_tool("make", "make")
    source = copy_read_only(tmp_path / "src")
    try:
        result = subprocess.run(["make", "buildworld"], cwd=source, env=sanitised_environment(),
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode != 0
        assert "sample base: this tree needs BSD make" in result.stderr
    finally:
        make_writable(source)


# ---- reproducibility

def test_builds_elsewhere_with_other_jobs_are_bit_for_bit_identical(first_build: Build,
                                                             bsd_build: Build) -> None:
    assert first_build.source != bsd_build.source
    for stage in ("world", "kernel"):
        ours = describe(getattr(first_build, stage))
        theirs = describe(getattr(bsd_build, stage))
        assert ours.entries == theirs.entries, stage
        assert ours.hard_links == theirs.hard_links, stage
    for stage in ("world", "kernel"):
        assert metalog_text(first_build, stage) == metalog_text(bsd_build, stage), stage


def test_nix_hash_of_the_stages_agrees(first_build: Build, bsd_build: Build) -> None:
    require_tool("nix-hash", "nix-bin")
    for stage in ("world", "kernel"):
        hashes = {
            subprocess.run(["nix-hash", "--type", "sha256", str(getattr(b, stage))],
                           capture_output=True, text=True, check=True).stdout.strip()
            for b in (first_build, bsd_build)
        }
        assert len(hashes) == 1, stage


def test_rebuild_in_place_changes_nothing(first_build: Build) -> None:
    world, kernel = describe(first_build.world), describe(first_build.kernel)
    build_all(make=BSD_MAKE, source=first_build.source, build_root=first_build.build_root, jobs=4)
    assert describe(first_build.world) == world
    assert describe(first_build.kernel) == kernel


def test_nothing_is_written_into_the_source_tree(first_build: Build, bsd_build: Build) -> None:
    # Run as root, the read-only modes alone would not stop a write; compare everything.
    for build in (first_build, bsd_build):
        assert source_snapshot(build.source) == build.before
        assert not any(build.source.rglob("*.o"))


# ---- what is installed

def test_world_layout(first_build: Build) -> None:
    world = first_build.world
    tree = describe(world)
    for program in ("bin/sh", "bin/echo", "bin/test", "bin/[", "usr/bin/cksum",
                    "usr/bin/wc", "usr/bin/passwd", "boot/loader"):
        kind, _digest, executable, *_ = tree.entries[program]
        assert (kind, executable) == ("file", "executable"), program
        assert (world / program).read_bytes()[:4] == b"\x7fELF", program
    assert ["bin/[", "bin/test"] in tree.hard_links
    assert tree.entries["usr/bin/echo"] == ("symlink", "../../bin/echo")
    assert tree.entries["etc/termcap"] == ("symlink", "/usr/share/misc/termcap")
    # install -U: "fchmod(to_fd, dounpriv ? mode & (S_IRWXU|S_IRWXG|S_IRWXO) : mode)";
    # the set-user-ID bit is in the METALOG, never on the staged file.
    assert stat.S_IMODE((world / "usr/bin/passwd").stat().st_mode) == 0o555
    assert stat.S_IMODE((world / "bin/sh").stat().st_mode) == 0o555
    for data in ("usr/include/sample.h", "usr/include/paths.h", "usr/include/sys/param.h",
                 "usr/include/sys/cdefs.h", "usr/include/sys/module.h",
                 "boot/defaults/loader.conf", "usr/share/misc/termcap", "etc/passwd",
                 "etc/group", "etc/motd", "etc/rc.conf", "etc/defaults/rc.conf", "etc/shells"):
        assert stat.S_IMODE((world / data).stat().st_mode) == 0o444, data
    assert stat.S_IMODE((world / "etc/master.passwd").stat().st_mode) == 0o600
    for directory in ("dev", "tmp", "var/crash", "var/empty"):
        assert tree.entries[directory] == ("directory",), directory


def metalog_text(build: Build, stage: str) -> str:
    return Path(getattr(BuildPaths(str(build.build_root)), f"metalog_{stage}")).read_text()


def metalog_lines(build: Build, stage: str) -> dict[str, str]:
    lines = metalog_text(build, stage).splitlines()
    assert lines[0] == "#mtree 2.0"
    return {line.split(" ", 1)[0]: line for line in lines[1:]}


def test_install_writes_the_metalog_like_freebsd_install_m(first_build: Build) -> None:
    world = metalog_lines(first_build, "world")
    size = (first_build.world / "usr/bin/passwd").stat().st_size
    assert world["./usr/bin/passwd"] == (
        f"./usr/bin/passwd type=file uname=root gname=wheel mode=04555 size={size} flags=schg")
    assert world["./usr/bin/wc"].startswith(
        "./usr/bin/wc type=file uname=operator gname=operator mode=0555 size=")
    assert world["./usr/lib/libsample.a"].endswith(" flags=sunlnk")
    # makelink: a hard link is a file with the underlying mode and no owner.
    size = (first_build.world / "bin/test").stat().st_size
    assert world["./bin/["] == f"./bin/[ type=file mode=0555 size={size}"
    assert world["./usr/bin/echo"] == "./usr/bin/echo type=link mode=0755 link=../../bin/echo"
    assert world["./etc/termcap"] == ("./etc/termcap type=link mode=0755 "
                                      "link=/usr/share/misc/termcap")
    assert world["."] == ". type=dir uname=root gname=wheel mode=0755"
    assert world["./tmp"] == "./tmp type=dir uname=root gname=wheel mode=01777"
    assert world["./var/crash"] == "./var/crash type=dir uname=root gname=wheel mode=0750"
    assert world["./var/empty"] == ("./var/empty type=dir uname=root gname=wheel mode=0555 "
                                    "flags=schg")
    assert world["./etc/master.passwd"].startswith(
        "./etc/master.passwd type=file uname=root gname=wheel mode=0600 size=")
    # Every node of the stage has its line, and nothing else does.
    staged = {"." if rel == "." else "./" + rel
              for rel in [".", *describe(first_build.world).entries]}
    assert set(world) == staged
    kernel = metalog_lines(first_build, "kernel")
    assert set(kernel) == {".", "./boot", "./boot/kernel", "./boot/kernel/kernel",
                           "./boot/kernel/null.ko", "./boot/kernel/nullfs.ko"}
    # Readable by the promotion's METALOG parser, mode and flags intact.
    entries = parse_metalog(metalog_text(first_build, "world").encode().splitlines(), "world")
    passwd = entries[b"usr/bin/passwd"]
    assert (passwd.mode, passwd.uname, passwd.gname, passwd.flags) == (
        0o4555, "root", "wheel", "schg")


def test_static_library_is_deterministic(first_build: Build) -> None:
    archive = (first_build.world / "usr/lib/libsample.a").read_bytes()
    assert archive.startswith(b"!<arch>\n")
    # Every member header: name[16] mtime[12] uid[6] gid[6] mode[8] size[10] "`\n".
    offset, members = 8, 0
    while offset < len(archive):
        header = archive[offset:offset + 60]
        assert header[58:60] == b"`\n"
        assert header[16:28].strip() == b"0" and header[28:34].strip() == b"0"
        assert header[34:40].strip() == b"0"
        size = int(header[48:58])
        offset += 60 + size + (size & 1)
        members += 1
    assert members >= 4          # symbol index + three objects


def test_kernel_layout(first_build: Build) -> None:
    tree = describe(first_build.kernel)
    assert set(tree.entries) == {"boot", "boot/kernel", "boot/kernel/kernel",
                                 "boot/kernel/null.ko", "boot/kernel/nullfs.ko"}
    kernel = (first_build.kernel / "boot/kernel/kernel").read_bytes()
    assert kernel[:4] == b"\x7fELF" and b"GENERIC" in kernel
    for module in ("null.ko", "nullfs.ko"):
        data = (first_build.kernel / "boot/kernel" / module).read_bytes()
        assert data[:4] == b"\x7fELF" and data[16] == 1      # ET_REL, like amd64 .ko


# ---- the installed programs run

def run_installed(program: Path, *args: str,
                  stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(program), *args], input=stdin, capture_output=True,
                          env=sanitised_environment(), timeout=30, check=False)


def test_installed_shell_runs_commands(first_build: Build) -> None:
    sh = first_build.world / "bin/sh"
    assert run_installed(sh, "-c", "echo hi").stdout == b"hi\n"
    result = run_installed(sh, "-c", "echo 'a  b' \"c\"; false; echo $?; exit 3")
    assert (result.stdout, result.returncode) == (b"a  b c\n1\n", 3)
    script = f"{first_build.world}/bin/test -d /\necho $?\n".encode()
    assert run_installed(sh, stdin=script).stdout == b"0\n"
    result = run_installed(sh, "-c", "no-such-command-anywhere")
    assert result.returncode == 127 and b"not found" in result.stderr


def test_installed_tools_run(first_build: Build) -> None:
    world = first_build.world
    for data in (b"", b"123456789", bytes(range(256)) * 40):
        result = run_installed(world / "usr/bin/cksum", stdin=data)
        assert result.stdout.decode() == f"{posix_cksum(data)} {len(data)}\n"
    assert posix_cksum(b"123456789") == 930766865
    result = run_installed(world / "usr/bin/wc", "-lw", stdin=b"one two\nthree\n")
    assert result.stdout.split() == [b"2", b"3"]
    assert run_installed(world / "bin/[", "1", "-lt", "2", "]").returncode == 0
    assert run_installed(world / "bin/[", "b", "=", "a", "]").returncode == 1
    assert run_installed(world / "bin/[", "1", "-lt", "2").returncode == 2
    assert run_installed(world / "bin/test", "-n", "x").returncode == 0
    passwd = run_installed(world / "usr/bin/passwd")
    assert passwd.returncode == 1 and b"15.0-STABLE" in passwd.stdout


def test_installed_loader_and_kernel_run(first_build: Build) -> None:
    conf = first_build.world / "boot/defaults/loader.conf"
    loader = run_installed(first_build.world / "boot/loader", "-f", str(conf))
    assert loader.returncode == 0
    assert b"Loading /boot/kernel/kernel" in loader.stdout
    kernel = run_installed(first_build.kernel / "boot/kernel/kernel")
    assert kernel.returncode == 0
    assert b"15.0-STABLE #0: GENERIC" in kernel.stdout
    assert b"option HZ=1000" in kernel.stdout


def test_kernconf_selects_the_kernel(first_build: Build, tmp_path: Path) -> None:
    for phase in ("buildkernel", "installkernel"):
        result = run_phase(phase, make=BSD_MAKE, source=first_build.source,
                           build_root=tmp_path, kernconf="MINIMAL")
        assert result.returncode == 0, result.stderr
    minimal = Path(BuildPaths(str(tmp_path)).stage_kernel) / "boot/kernel"
    generic = first_build.kernel / "boot/kernel"
    assert (minimal / "kernel").read_bytes() != (generic / "kernel").read_bytes()
    assert b"MINIMAL" in (minimal / "kernel").read_bytes()
    for module in ("null.ko", "nullfs.ko"):
        assert (minimal / module).read_bytes() == (generic / module).read_bytes()


# ---- failures are clear

MAKES = [BSD_MAKE]


@pytest.mark.parametrize("make", MAKES)
def test_unknown_kernconf_fails_with_a_message(first_build: Build, tmp_path: Path,
                                               make: str) -> None:
    result = run_phase("buildkernel", make=make, source=first_build.source,
                       build_root=tmp_path, kernconf="NOSUCHCONF")
    # bmake -j passes a job's stderr on through its own stdout; look at both.
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "unknown KERNCONF 'NOSUCHCONF'" in output
    assert "GENERIC MINIMAL" in output
    assert not (tmp_path / "obj").exists()


@pytest.mark.parametrize("make", MAKES)
def test_missing_objdirprefix_fails_with_a_message(first_build: Build, make: str) -> None:
    for target in ("buildworld", "buildkernel"):
        result = subprocess.run([make, "-j2", target], cwd=first_build.source,
                                env=sanitised_environment(), capture_output=True,
                                text=True, timeout=60, check=False)
        assert result.returncode != 0
        assert "MAKEOBJDIRPREFIX is not set" in result.stdout + result.stderr


@pytest.mark.parametrize("make", MAKES)
def test_install_needs_a_build_and_a_destdir(first_build: Build, tmp_path: Path,
                                             make: str) -> None:
    result = run_phase("installworld", make=make, source=first_build.source, build_root=tmp_path)
    assert result.returncode != 0 and "run buildworld first" in result.stderr
    assert not (tmp_path / "stage").exists()
    env = sanitised_environment()
    env["MAKEOBJDIRPREFIX"] = str(first_build.build_root / "obj")
    result = subprocess.run([make, "installworld"], cwd=first_build.source, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0 and "DESTDIR is not set" in result.stderr


# ---- as an unprivileged user, where read-only really means read-only

@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None
                    or not os.path.isdir("/tmp"),
                    reason="needs root, setpriv and /tmp to switch to an unprivileged user")
def test_unprivileged_build_matches(first_build: Build) -> None:
    # Not under pytest's base temp: the unprivileged user must be able to reach it.
    top = Path(tempfile.mkdtemp(prefix="fruix-sample-", dir="/tmp"))
    try:
        os.chmod(top, 0o755)
        source = copy_read_only(top / "src")
        build_root = top / "build"
        build_root.mkdir()
        os.chown(build_root, 65534, 65534)
        env = sanitised_environment()
        env.pop("TMPDIR", None)
        env.pop("HOME", None)
        for phase in PHASES:
            argv, extra = phase_command(phase, make=BSD_MAKE, jobs=2,
                                        paths=BuildPaths(str(build_root)), kernconf="GENERIC")
            result = subprocess.run(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv],
                cwd=source, env={**env, **extra}, capture_output=True, text=True,
                timeout=120, check=False)
            assert result.returncode == 0, result.stderr
        assert describe(build_root / "stage/world") == describe(first_build.world)
        assert describe(build_root / "stage/kernel") == describe(first_build.kernel)
        for stage in ("world", "kernel"):
            assert (build_root / f"stage/{stage}.METALOG").read_text() == \
                metalog_text(first_build, stage)
    finally:
        make_writable(top / "src")
        shutil.rmtree(top)


# ---- the build configuration is what the caller names, never the machine's /etc

def _conf(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("variable", ["srcconf", "make_conf", "src_env_conf"])
def test_pinned_configuration_files_are_read(first_build: Build, tmp_path: Path,
                                             variable: str) -> None:
    # WITHOUT_WC, as FreeBSD's WITHOUT_<option> knobs in src.conf (share/mk/src.opts.mk).
    conf = _conf(tmp_path / "wc.conf", "WITHOUT_WC=yes\n")
    pinned = PinnedConfiguration(**{variable: str(conf)})
    build_root = tmp_path / "build"
    shutil.copytree(first_build.build_root / "obj", build_root / "obj", symlinks=True)
    result = run_phase("installworld", make=BSD_MAKE, source=first_build.source,
                       build_root=build_root, pinned=pinned)
    assert result.returncode == 0, result.stderr
    world = build_root / "stage/world"
    assert not (world / "usr/bin/wc").exists() and (world / "usr/bin/cksum").is_file()
    assert "./usr/bin/wc " not in (build_root / "stage/world.METALOG").read_text()


def test_every_phase_pins_the_three_files() -> None:
    for phase in PHASES:
        _argv, env = phase_command(phase, make=BSD_MAKE, jobs=2, paths=BuildPaths("/b"),
                                   kernconf="GENERIC")
        assert {k: env[k] for k in ("SRCCONF", "__MAKE_CONF", "SRC_ENV_CONF")} == {
            "SRCCONF": "/dev/null", "__MAKE_CONF": "/dev/null", "SRC_ENV_CONF": "/dev/null"}


def test_unpinned_the_defaults_are_freebsds(first_build: Build) -> None:
    # Without the pins the tree would read the machine's files, as FreeBSD's does.
    env = sanitised_environment()
    for variable, default in (("SRCCONF", "/etc/src.conf"), ("__MAKE_CONF", "/etc/make.conf"),
                              ("SRC_ENV_CONF", "/etc/src-env.conf")):
        result = subprocess.run(
            [BSD_MAKE, "-m", str(first_build.source / "share/mk"), "-f",
             str(first_build.source / "Makefile.inc1"), f"SRCTOP={first_build.source}",
             "-V", variable], cwd=first_build.source, env=env, capture_output=True, text=True,
            timeout=60, check=False)
        assert result.stdout.strip() == default, result.stderr


def test_install_phases_run_unprivileged_with_a_metalog() -> None:
    for name in ("installworld", "distribution", "installkernel"):
        argv, _env = phase_command(phase_by_name(name), make=BSD_MAKE, jobs=4,
                                   paths=BuildPaths("/b"), kernconf="GENERIC")
        stage = "kernel" if name == "installkernel" else "world"
        assert "-DNO_ROOT" in argv and "DB_FROM_SRC=yes" in argv
        assert f"METALOG=/b/stage/{stage}.METALOG" in argv
        assert not any(a.startswith("-j") for a in argv)


def test_db_from_src_refuses_an_unknown_owner(tmp_path: Path) -> None:
    # install -N DIR resolves names in DIR/master.passwd and DIR/group only.
    install = sample_base_path() / "tools/install.sh"
    src = _conf(tmp_path / "f", "x\n")
    for option, name, message in (("-o", "unbound", "unknown user unbound"),
                                  ("-g", "unbound", "unknown group unbound")):
        result = subprocess.run(
            ["sh", str(install), "-U", "-N", str(sample_base_path() / "etc"), option, name,
             "-m", "444", str(src), str(tmp_path / "g")],
            capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode != 0 and message in result.stderr
    assert not (tmp_path / "g").exists()


def test_a_relative_metalog_is_refused(first_build: Build, tmp_path: Path) -> None:
    env = sanitised_environment()
    env["MAKEOBJDIRPREFIX"] = str(first_build.build_root / "obj")
    result = subprocess.run([BSD_MAKE, "-DNO_ROOT", "installworld", f"DESTDIR={tmp_path}/w",
                             "METALOG=rel.METALOG"], cwd=first_build.source, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "METALOG must be an absolute path, not 'rel.METALOG'" in result.stderr
    assert not (tmp_path / "w").exists()
