"""The bundled sample base: real builds of all five phases, GNU make and BSD make.

Nothing is mocked: every test compiles the tree with ``cc`` through the
phase commands of :mod:`fruix_core.profile`, in the environment of
:func:`fruix_core.environment.sanitised_environment`, from a read-only copy.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fruix_core.environment import sanitised_environment
from fruix_core.profile import PHASES, BuildPaths, phase_by_name, phase_command
from fruix_core.sample import SAMPLE_KERNCONFS, sample_base_path
from fruix_core.testkit import require_tool

GNU_MAKE = "make"
BSD_MAKE = "bmake"



@pytest.fixture(autouse=True)
def _tools() -> None:
    """A C compiler, GNU make and bmake are required (never a skip)."""
    require_tool("cc", "gcc")
    require_tool(GNU_MAKE, "make")
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
              kernconf: str = "GENERIC", jobs: int = 2) -> subprocess.CompletedProcess[str]:
    """Run one phase exactly as an executor does (profile argv, sanitised environment)."""
    argv, extra = phase_command(phase_by_name(name), make=make, jobs=jobs,
                                paths=BuildPaths(str(build_root)), kernconf=kernconf)
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
def gnu_build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Build]:
    top = tmp_path_factory.mktemp("gnu")
    build = _build(GNU_MAKE, top / "src", top / "build", jobs=2)
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


def test_makefiles_use_only_constructs_both_makes_share() -> None:
    root = sample_base_path()
    makefiles = [root / "Makefile", *sorted((root / "mk").glob("*.mk"))]
    assert len(makefiles) == 4
    forbidden = re.compile(
        r"^\s*(ifeq|ifneq|ifdef|ifndef|define|export)\b"   # GNU directives
        r"|\$\((shell|wildcard|patsubst|foreach|call|if)\s"  # GNU functions
        r"|^[^\t#]*%[^=]*:"                                # pattern rules
        r"|^\.(if|ifdef|ifndef|for|include|export|error)\b"  # BSD directives
        r"|\$[\^<>]|\$\{\.(ALLSRC|IMPSRC|TARGET)",          # automatic variables not in both
        re.MULTILINE)
    for makefile in makefiles:
        text = "\n".join(line for line in makefile.read_text().splitlines()
                         if not line.lstrip().startswith("#"))
        assert not forbidden.search(text), f"{makefile.name}: {forbidden.search(text)}"


# ---- reproducibility

def test_gnu_make_and_bmake_builds_are_bit_for_bit_identical(gnu_build: Build,
                                                             bsd_build: Build) -> None:
    assert gnu_build.source != bsd_build.source
    for stage in ("world", "kernel"):
        ours = describe(getattr(gnu_build, stage))
        theirs = describe(getattr(bsd_build, stage))
        assert ours.entries == theirs.entries, stage
        assert ours.hard_links == theirs.hard_links, stage


def test_nix_hash_of_the_stages_agrees(gnu_build: Build, bsd_build: Build) -> None:
    require_tool("nix-hash", "nix-bin")
    for stage in ("world", "kernel"):
        hashes = {
            subprocess.run(["nix-hash", "--type", "sha256", str(getattr(b, stage))],
                           capture_output=True, text=True, check=True).stdout.strip()
            for b in (gnu_build, bsd_build)
        }
        assert len(hashes) == 1, stage


def test_rebuild_in_place_changes_nothing(gnu_build: Build) -> None:
    world, kernel = describe(gnu_build.world), describe(gnu_build.kernel)
    build_all(make=GNU_MAKE, source=gnu_build.source, build_root=gnu_build.build_root, jobs=4)
    assert describe(gnu_build.world) == world
    assert describe(gnu_build.kernel) == kernel


def test_nothing_is_written_into_the_source_tree(gnu_build: Build, bsd_build: Build) -> None:
    # Run as root, the read-only modes alone would not stop a write; compare everything.
    for build in (gnu_build, bsd_build):
        assert source_snapshot(build.source) == build.before
        assert not any(build.source.rglob("*.o"))


# ---- what is installed

def test_world_layout(gnu_build: Build) -> None:
    world = gnu_build.world
    tree = describe(world)
    for program in ("bin/sh", "bin/echo", "bin/test", "bin/[", "usr/bin/cksum",
                    "usr/bin/wc", "usr/bin/passwd", "boot/loader"):
        kind, _digest, executable, *_ = tree.entries[program]
        assert (kind, executable) == ("file", "executable"), program
        assert (world / program).read_bytes()[:4] == b"\x7fELF", program
    assert ["bin/[", "bin/test"] in tree.hard_links
    assert tree.entries["usr/bin/echo"] == ("symlink", "../../bin/echo")
    assert tree.entries["etc/termcap"] == ("symlink", "/usr/share/misc/termcap")
    assert stat.S_IMODE((world / "usr/bin/passwd").stat().st_mode) == 0o4555
    assert stat.S_IMODE((world / "bin/sh").stat().st_mode) == 0o555
    for data in ("usr/include/sample.h", "usr/include/paths.h", "usr/include/sys/param.h",
                 "usr/include/sys/cdefs.h", "usr/include/sys/module.h",
                 "boot/defaults/loader.conf", "usr/share/misc/termcap", "etc/passwd",
                 "etc/group", "etc/motd", "etc/rc.conf", "etc/defaults/rc.conf", "etc/shells"):
        assert stat.S_IMODE((world / data).stat().st_mode) == 0o444, data
    assert tree.entries["dev"] == ("directory",)
    assert stat.S_IMODE((world / "tmp").stat().st_mode) == 0o1777


def test_static_library_is_deterministic(gnu_build: Build) -> None:
    archive = (gnu_build.world / "usr/lib/libsample.a").read_bytes()
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


def test_kernel_layout(gnu_build: Build) -> None:
    tree = describe(gnu_build.kernel)
    assert set(tree.entries) == {"boot", "boot/kernel", "boot/kernel/kernel",
                                 "boot/kernel/null.ko", "boot/kernel/nullfs.ko"}
    kernel = (gnu_build.kernel / "boot/kernel/kernel").read_bytes()
    assert kernel[:4] == b"\x7fELF" and b"GENERIC" in kernel
    for module in ("null.ko", "nullfs.ko"):
        data = (gnu_build.kernel / "boot/kernel" / module).read_bytes()
        assert data[:4] == b"\x7fELF" and data[16] == 1      # ET_REL, like amd64 .ko


# ---- the installed programs run

def run_installed(program: Path, *args: str,
                  stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(program), *args], input=stdin, capture_output=True,
                          env=sanitised_environment(), timeout=30, check=False)


def test_installed_shell_runs_commands(gnu_build: Build) -> None:
    sh = gnu_build.world / "bin/sh"
    assert run_installed(sh, "-c", "echo hi").stdout == b"hi\n"
    result = run_installed(sh, "-c", "echo 'a  b' \"c\"; false; echo $?; exit 3")
    assert (result.stdout, result.returncode) == (b"a  b c\n1\n", 3)
    script = f"{gnu_build.world}/bin/test -d /\necho $?\n".encode()
    assert run_installed(sh, stdin=script).stdout == b"0\n"
    result = run_installed(sh, "-c", "no-such-command-anywhere")
    assert result.returncode == 127 and b"not found" in result.stderr


def test_installed_tools_run(gnu_build: Build) -> None:
    world = gnu_build.world
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


def test_installed_loader_and_kernel_run(gnu_build: Build) -> None:
    conf = gnu_build.world / "boot/defaults/loader.conf"
    loader = run_installed(gnu_build.world / "boot/loader", "-f", str(conf))
    assert loader.returncode == 0
    assert b"Loading /boot/kernel/kernel" in loader.stdout
    kernel = run_installed(gnu_build.kernel / "boot/kernel/kernel")
    assert kernel.returncode == 0
    assert b"15.0-STABLE #0: GENERIC" in kernel.stdout
    assert b"option HZ=1000" in kernel.stdout


def test_kernconf_selects_the_kernel(gnu_build: Build, tmp_path: Path) -> None:
    for phase in ("buildkernel", "installkernel"):
        result = run_phase(phase, make=GNU_MAKE, source=gnu_build.source,
                           build_root=tmp_path, kernconf="MINIMAL")
        assert result.returncode == 0, result.stderr
    minimal = Path(BuildPaths(str(tmp_path)).stage_kernel) / "boot/kernel"
    generic = gnu_build.kernel / "boot/kernel"
    assert (minimal / "kernel").read_bytes() != (generic / "kernel").read_bytes()
    assert b"MINIMAL" in (minimal / "kernel").read_bytes()
    for module in ("null.ko", "nullfs.ko"):
        assert (minimal / module).read_bytes() == (generic / module).read_bytes()


# ---- failures are clear

MAKES = [GNU_MAKE, BSD_MAKE]


@pytest.mark.parametrize("make", MAKES)
def test_unknown_kernconf_fails_with_a_message(gnu_build: Build, tmp_path: Path,
                                               make: str) -> None:
    result = run_phase("buildkernel", make=make, source=gnu_build.source,
                       build_root=tmp_path, kernconf="NOSUCHCONF")
    # bmake -j passes a job's stderr on through its own stdout; look at both.
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "unknown KERNCONF 'NOSUCHCONF'" in output
    assert "GENERIC MINIMAL" in output
    assert not (tmp_path / "obj").exists()


@pytest.mark.parametrize("make", MAKES)
def test_missing_objdirprefix_fails_with_a_message(gnu_build: Build, make: str) -> None:
    for target in ("buildworld", "buildkernel"):
        result = subprocess.run([make, "-j2", target], cwd=gnu_build.source,
                                env=sanitised_environment(), capture_output=True,
                                text=True, timeout=60, check=False)
        assert result.returncode != 0
        assert "MAKEOBJDIRPREFIX is not set" in result.stdout + result.stderr


@pytest.mark.parametrize("make", MAKES)
def test_install_needs_a_build_and_a_destdir(gnu_build: Build, tmp_path: Path,
                                             make: str) -> None:
    result = run_phase("installworld", make=make, source=gnu_build.source, build_root=tmp_path)
    assert result.returncode != 0 and "run buildworld first" in result.stderr
    assert not (tmp_path / "stage").exists()
    env = sanitised_environment()
    env["MAKEOBJDIRPREFIX"] = str(gnu_build.build_root / "obj")
    result = subprocess.run([make, "installworld"], cwd=gnu_build.source, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0 and "DESTDIR is not set" in result.stderr


# ---- as an unprivileged user, where read-only really means read-only

@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None
                    or not os.path.isdir("/tmp"),
                    reason="needs root, setpriv and /tmp to switch to an unprivileged user")
def test_unprivileged_build_matches(gnu_build: Build) -> None:
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
        assert describe(build_root / "stage/world") == describe(gnu_build.world)
        assert describe(build_root / "stage/kernel") == describe(gnu_build.kernel)
    finally:
        make_writable(top / "src")
        shutil.rmtree(top)
