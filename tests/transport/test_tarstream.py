"""Tree transfer: one tar stream out of the guest, extracted safely on the host."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import threading
import time
from pathlib import Path

import pytest

from fruix_core.errors import ConnectionLostError, PromotionInputError, TransportError
from fruix_core.promotion.nar import tree_signature
from fruix_core.testkit.sshd import SshServer
from fruix_core.transport.ssh import SSHSession, connect
from fruix_core.transport.tarstream import (
    UnsafeArchiveError,
    extract_stream,
    fetch_tree,
    verify_result_root,
)


@pytest.fixture
def session(fruix_sshd_shared: SshServer):
    with connect(fruix_sshd_shared.guest()) as sess:
        yield sess


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _file(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def _entry(name: str, kind: bytes, link: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o755
    return info, None


def _sample_tree(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin/sh").write_bytes(b"#!/bin/sh\n" * 1000)
    (root / "bin/sh").chmod(0o555)
    os.link(root / "bin/sh", root / "bin/-sh")
    (root / "etc").mkdir()
    (root / "etc/motd").write_text("hello\n")
    (root / "empty").mkdir()
    os.symlink("../etc/motd", root / "bin/motd-link")
    os.symlink("/does/not/exist", root / "dangling")
    (root / "big").write_bytes(os.urandom(3 << 20))
    (root / "ro").mkdir()
    (root / "ro/file").write_text("r")
    (root / "ro").chmod(0o555)
    return root


# -- good streams ----------------------------------------------------------------------------


def test_tree_round_trip_keeps_its_signature(session: SSHSession, tmp_path: Path) -> None:
    source = _sample_tree(tmp_path / "guest-tree")
    dest = tmp_path / "host" / "tree"
    stats = fetch_tree(session, str(source), dest, progress=False)
    assert tree_signature(dest) == tree_signature(source)
    assert stats.bytes > 3 << 20 and stats.members >= 10
    assert os.readlink(dest / "dangling") == "/does/not/exist"
    assert os.stat(dest / "bin/sh").st_ino == os.stat(dest / "bin/-sh").st_ino
    assert stat.S_IMODE(os.stat(dest / "ro").st_mode) == 0o555
    assert [p.name for p in dest.parent.iterdir()] == ["tree"]  # no partial leftovers
    os.chmod(dest / "ro", 0o755)
    os.chmod(source / "ro", 0o755)


def test_existing_destination_is_replaced_whole(session: SSHSession, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "new").write_text("new")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "stale").write_text("old")
    fetch_tree(session, str(source), dest, progress=False)
    assert sorted(p.name for p in dest.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "src"]


def test_progress_is_shown_in_bytes(session: SSHSession, tmp_path: Path, capsys) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_bytes(b"a" * 100_000)
    fetch_tree(session, str(source), tmp_path / "dest", progress=True)
    assert "MiB" in capsys.readouterr().err


def test_remote_tar_failure_is_reported(session: SSHSession, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    with pytest.raises(TransportError):
        fetch_tree(session, str(tmp_path / "no-such-dir"), dest, progress=False)
    assert list(tmp_path.iterdir()) == []


# -- hostile streams, fed by the guest ---------------------------------------------------------


HOSTILE = {
    "dotdot": _tar(_file("ok"), _file("../escaped")),
    "nested-dotdot": _tar(_file("a/../../escaped")),
    "absolute": _tar(_file("/tmp/fruix-absolute-escape")),
    "device": _tar(_entry("dev/null", tarfile.CHRTYPE)),
    "block-device": _tar(_entry("disk", tarfile.BLKTYPE)),
    "fifo": _tar(_entry("pipe", tarfile.FIFOTYPE)),
    "symlink-then-file": _tar(_entry("link", tarfile.SYMTYPE, ".."), _file("link/escaped")),
    "symlink-then-dir": _tar(_entry("link", tarfile.SYMTYPE, "/tmp"),
                             _entry("link/d", tarfile.DIRTYPE)),
    "symlink-replaced": _tar(_entry("x", tarfile.SYMTYPE, "/etc/passwd"), _file("x")),
    "hardlink-outside": _tar(_entry("h", tarfile.LNKTYPE, "../../etc/passwd")),
    "hardlink-absolute": _tar(_entry("h", tarfile.LNKTYPE, "/etc/passwd")),
    "hardlink-to-symlink": _tar(_entry("s", tarfile.SYMTYPE, "/etc/passwd"),
                                _entry("h", tarfile.LNKTYPE, "s")),
    "file-then-file-under-it": _tar(_file("f"), _file("f/g")),
    "duplicate": _tar(_file("f"), _file("f")),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_stream_is_refused(case: str, session: SSHSession, tmp_path: Path) -> None:
    archive = tmp_path / "archive.tar"
    archive.write_bytes(HOSTILE[case])
    area = tmp_path / "area"
    area.mkdir()
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    dest = area / "dest"
    with pytest.raises(UnsafeArchiveError):
        fetch_tree(session, "/", dest, command=f"cat {archive}", progress=False)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert not Path("/tmp/fruix-absolute-escape").exists()


def test_refusals_are_usage_errors_naming_the_member(tmp_path: Path) -> None:
    with pytest.raises(PromotionInputError, match="escaped"):
        extract_stream(io.BytesIO(HOSTILE["dotdot"]), tmp_path)


def test_symlink_targets_are_kept_not_followed(tmp_path: Path) -> None:
    data = _tar(_entry("abs", tarfile.SYMTYPE, "/etc/passwd"),
                _entry("rel", tarfile.SYMTYPE, "../../../x"))
    extract_stream(io.BytesIO(data), tmp_path)
    assert os.readlink(tmp_path / "abs") == "/etc/passwd"
    assert os.readlink(tmp_path / "rel") == "../../../x"


# -- truncation and interruption ----------------------------------------------------------------


def test_truncated_streams_are_detected(session: SSHSession, tmp_path: Path) -> None:
    good = _tar(_file("a", b"A" * 5000), _file("b", b"B" * 700))
    archive = tmp_path / "archive.tar"
    archive.write_bytes(good)
    # Mid-member, on a member boundary (tarfile alone would accept that), mid-header.
    boundary = 512 + 5120  # header + padded data of "a" (pax header first: find it)
    offsets = [3000, 700, len(good) - 10240 + 100]
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        boundary = members[1].offset
    offsets.append(boundary)
    for size in offsets:
        dest = tmp_path / f"dest-{size}"
        with pytest.raises(TransportError, match="truncated|corrupt"):
            fetch_tree(session, "/", dest, command=f"head -c {size} {archive}", progress=False)
        assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive.tar"]


def test_truncated_stream_without_end_marker_unit(tmp_path: Path) -> None:
    good = _tar(_file("a", b"A" * 600))
    with tarfile.open(fileobj=io.BytesIO(good)) as tar:
        end = tar.getmembers()[-1].offset_data + 1024
    with pytest.raises(TransportError, match="truncated"):
        extract_stream(io.BytesIO(good[:end]), tmp_path)


def test_dropped_connection_leaves_nothing(fruix_sshd: SshServer, tmp_path: Path) -> None:
    archive = tmp_path / "archive.tar"
    archive.write_bytes(_tar(_file("a", b"A" * 100_000)))
    dest = tmp_path / "dest"
    with connect(fruix_sshd.guest()) as sess:
        threading.Timer(1.0, fruix_sshd.kill).start()
        started = time.monotonic()
        with pytest.raises(ConnectionLostError):
            fetch_tree(sess, "/", dest, command=f"head -c 20000 {archive}; sleep 306",
                       progress=False)
        assert time.monotonic() - started < 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive.tar", "sshd"]


# -- verification of a result root -------------------------------------------------------------


def _result_root(root: Path) -> Path:
    import hashlib

    from fruix_core.model import (
        ArtifactEntry,
        BaseMetadata,
        BuildPolicy,
        Promotion,
        SourceStore,
    )
    from fruix_core.promotion.schema import write_promotion

    (root / "artifacts/world/bin").mkdir(parents=True)
    (root / "artifacts/world/bin/sh").write_bytes(b"shell")
    digest = hashlib.sha256(b"shell").hexdigest()
    for kind in ("kernel", "headers", "bootloader"):
        (root / "artifacts" / kind).mkdir()
    write_promotion(Promotion(
        executor="host-initiated", executor_version="0.1.0", run_id="r1",
        guest_host_name="guest", base=BaseMetadata(),
        source=SourceStore(path="/frx/store/" + "a" * 32 + "-freebsd-source", signature="a" * 32),
        policy=BuildPolicy(phases=("buildworld",), jobs=1, environment_policy="sanitised-v1"),
        artifacts=(ArtifactEntry("world", "artifacts/world", (("bin/sh", digest),)),
                   ArtifactEntry("kernel", "artifacts/kernel", ()),
                   ArtifactEntry("headers", "artifacts/headers", ()),
                   ArtifactEntry("bootloader", "artifacts/bootloader", ()))),
        root / "promotion.scm")
    (root / "metadata").write_text(f"run_id=r1\nsha256_world_bin_sh={digest}\n")
    (root / "status").write_text("ok\n")
    return root


def test_imported_result_root_is_verified(session: SSHSession, tmp_path: Path) -> None:
    guest_root = _result_root(tmp_path / "guest-root")
    dest = tmp_path / "host" / "r1"
    fetch_tree(session, str(guest_root), dest, verify=verify_result_root, progress=False)
    assert (dest / "status").read_text() == "ok\n"


def test_digest_mismatch_refuses_the_import(session: SSHSession, tmp_path: Path) -> None:
    guest_root = _result_root(tmp_path / "guest-root")
    (guest_root / "artifacts/world/bin/sh").write_bytes(b"tampered")
    dest = tmp_path / "host" / "r1"
    with pytest.raises(PromotionInputError, match="bin/sh"):
        fetch_tree(session, str(guest_root), dest, verify=verify_result_root, progress=False)
    assert not dest.exists() and list((tmp_path / "host").iterdir()) == []


def test_metadata_disagreeing_with_promotion_is_refused(tmp_path: Path) -> None:
    root = _result_root(tmp_path / "r")
    with open(root / "metadata", "a") as handle:
        handle.write("sha256_world_bin_sh=" + "0" * 64 + "\n")
    with pytest.raises(PromotionInputError, match="metadata"):
        verify_result_root(root)


def test_missing_artifact_or_promotion_is_refused(tmp_path: Path) -> None:
    root = _result_root(tmp_path / "r")
    (root / "artifacts/kernel").rmdir()
    with pytest.raises(PromotionInputError, match="kernel"):
        verify_result_root(root)
    (root / "promotion.scm").unlink()
    with pytest.raises(PromotionInputError, match="promotion.scm"):
        verify_result_root(root)


# -- properties ------------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_names = st.text(alphabet="abcXYZ-_.é", min_size=1, max_size=8).filter(
    lambda n: n not in (".", ".."))
_trees = st.recursive(
    st.one_of(st.binary(max_size=3000), st.tuples(st.just("link"), _names)),
    lambda children: st.dictionaries(_names, children, max_size=5),
    max_leaves=15,
)


def _write(path: Path, node) -> None:  # type: ignore[no-untyped-def]
    if isinstance(node, dict):
        path.mkdir()
        for name, child in node.items():
            _write(path / name, child)
    elif isinstance(node, tuple):
        os.symlink(node[1], path)
    else:
        path.write_bytes(node)
        if len(node) % 2:
            path.chmod(0o755)


@settings(max_examples=40, deadline=None)
@given(tree=st.dictionaries(_names, _trees, max_size=6))
def test_any_tree_survives_the_stream(tree) -> None:  # type: ignore[no-untyped-def]
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        source, dest = Path(tmp) / "src", Path(tmp) / "dest"
        _write(source, tree)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
            tar.add(source, arcname=".")
        dest.mkdir()
        extract_stream(io.BytesIO(buffer.getvalue()), dest)
        assert tree_signature(dest) == tree_signature(source)


@settings(max_examples=40, deadline=None)
@given(cut=st.integers(min_value=0, max_value=20000))
def test_any_truncation_is_detected(cut: int) -> None:
    import tempfile

    good = _tar(_file("a", b"A" * 5000), _file("d/b", b"B" * 3000), _file("c", b""))
    with tarfile.open(fileobj=io.BytesIO(good)) as tar:
        last = tar.getmembers()[-1]
    marker_end = last.offset_data + -(-last.size // 512) * 512 + tarfile.BLOCKSIZE
    if cut >= marker_end:
        return  # the end-of-archive marker is complete: not truncated
    with tempfile.TemporaryDirectory() as tmp, pytest.raises(TransportError):
        extract_stream(io.BytesIO(good[:cut]), Path(tmp))


def test_file_modes_are_kept_exactly(tmp_path: Path) -> None:
    modes = {"ro": 0o444, "exe": 0o755, "group": 0o664, "private": 0o600, "setuid": 0o4755,
             "none": 0o000}
    data = _tar(*(_file(name, b"data", mode) for name, mode in modes.items()))
    extract_stream(io.BytesIO(data), tmp_path)
    for name, mode in modes.items():
        assert stat.S_IMODE(os.lstat(tmp_path / name).st_mode) == mode, name
        assert (tmp_path / name).read_bytes() == b"data"


# -- the guest's side of the stream ------------------------------------------------------------


def test_tar_warnings_never_enter_the_stream(session: SSHSession, tmp_path: Path) -> None:
    # FreeBSD's tar warns on stderr and goes on; merged into stdout (as `exec 2>&1`
    # did) its words would be read as tar headers.
    archive = tmp_path / "archive.tar"
    archive.write_bytes(_tar(_file("a", b"A" * 5000), _file("b", b"B" * 70_000)))
    dest = tmp_path / "dest"
    command = f"echo 'tar: ./x: warning' >&2; cat {archive}; echo 'tar: late warning' >&2"
    stats = fetch_tree(session, "/", dest, command=command, progress=False)
    assert sorted(p.name for p in dest.iterdir()) == ["a", "b"]
    assert stats.members == 2


def test_remote_tar_error_text_is_reported(session: SSHSession, tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="no-such-dir"):
        fetch_tree(session, str(tmp_path / "no-such-dir"), tmp_path / "dest", progress=False)


def test_freebsd_tar_stream_round_trip(session: SSHSession, tmp_path: Path) -> None:
    # The guest's tar is FreeBSD's bsdtar (libarchive; restricted pax format):
    # https://man.freebsd.org/cgi/man.cgi?query=tar&sektion=1
    from fruix_core.testkit import require_tool

    bsdtar = require_tool("bsdtar", "libarchive-tools")
    source = _sample_tree(tmp_path / "guest-tree")
    dest = tmp_path / "dest"
    fetch_tree(session, str(source), dest, command=f"{bsdtar} -C {source} -cf - .",
               progress=False)
    assert tree_signature(dest) == tree_signature(source)
    assert os.stat(dest / "bin/sh").st_ino == os.stat(dest / "bin/-sh").st_ino
    for tree in (dest, source):
        os.chmod(tree / "ro", 0o755)


# -- zstd --------------------------------------------------------------------------------------


def _compressible_tree(root: Path) -> Path:
    _sample_tree(root)
    (root / "man").mkdir()
    for i in range(50):
        (root / "man" / f"page{i}.1").write_text(f".Dd page {i}\n" + ".Sh NAME\nfoo\n" * 400)
    return root


@pytest.mark.parametrize("tar", ["tar", "bsdtar"])
def test_zstd_import_gives_an_identical_tree(tar: str, session: SSHSession,
                                              tmp_path: Path) -> None:
    from fruix_core.testkit import require_tool

    require_tool("zstd", "zstd")
    program = require_tool(tar, {"tar": "tar", "bsdtar": "libarchive-tools"}[tar])
    source = _compressible_tree(tmp_path / "guest-tree")
    plain = fetch_tree(session, str(source), tmp_path / "plain", progress=False)
    packed = fetch_tree(session, str(source), tmp_path / "zstd", compression="zstd",
                        command=f"{program} --zstd -C {source} -cf - .", progress=False)
    assert tree_signature(tmp_path / "zstd") == tree_signature(source) \
        == tree_signature(tmp_path / "plain")
    assert packed.received < plain.received - 200_000  # the manual pages shrank
    for tree in (source, tmp_path / "plain", tmp_path / "zstd"):
        os.chmod(tree / "ro", 0o755)


def test_guest_setting_turns_zstd_on(fruix_sshd_shared: SshServer, tmp_path: Path) -> None:
    import dataclasses

    source = _compressible_tree(tmp_path / "guest-tree")
    guest = dataclasses.replace(fruix_sshd_shared.guest(), details={"compression": "zstd"})
    with connect(guest) as sess:
        stats = fetch_tree(sess, str(source), tmp_path / "dest", progress=False)
        with pytest.raises(TransportError, match="unknown compression 'gzip'"):
            fetch_tree(sess, str(source), tmp_path / "other", compression="gzip")
    assert stats.received < stats.bytes - 200_000
    assert tree_signature(tmp_path / "dest") == tree_signature(source)
    for tree in (source, tmp_path / "dest"):
        os.chmod(tree / "ro", 0o755)


def test_truncated_or_corrupt_zstd_is_refused(session: SSHSession, tmp_path: Path) -> None:
    import zstandard

    good = _tar(_file("a", b"A" * 50_000), _file("b", os.urandom(40_000)))
    packed = tmp_path / "archive.tar.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(good))
    size = packed.stat().st_size
    for cut in (size // 3, size - 1):
        dest = tmp_path / f"dest-{cut}"
        with pytest.raises(TransportError, match="truncated"):
            fetch_tree(session, "/", dest, compression="zstd",
                       command=f"head -c {cut} {packed}", progress=False)
        assert not dest.exists()
    corrupt = tmp_path / "corrupt.zst"
    data = bytearray(packed.read_bytes())
    data[1] ^= 0xFF  # the frame's magic number (a payload bit flip is the MAC's job: SSH)
    corrupt.write_bytes(bytes(data))
    with pytest.raises(TransportError, match="corrupt|truncated"):
        fetch_tree(session, "/", tmp_path / "dest", compression="zstd",
                   command=f"cat {corrupt}", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive.tar.zst", "corrupt.zst"]


# -- writer threads ----------------------------------------------------------------------------


def test_writer_thread_failure_stops_the_extraction(tmp_path: Path) -> None:
    # A real write error in a writer thread (RLIMIT_FSIZE: EFBIG), in a child process.
    import subprocess
    import sys

    archive = tmp_path / "archive.tar"
    archive.write_bytes(_tar(*(_file(f"d/f{i}", b"x" * 3000) for i in range(20))))
    program = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from fruix_core.transport.tarstream import extract_stream\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))\n"
        "try:\n"
        "    with open(sys.argv[1], 'rb') as f:\n"
        "        extract_stream(f, Path(sys.argv[2]), writers=2)\n"
        "except OSError as exc:\n"
        "    print('error', exc.errno)\n"
        "    sys.exit(3)\n"
    )
    (tmp_path / "out").mkdir()
    done = subprocess.run([sys.executable, "-c", program, str(archive), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 3, done.stderr
    assert done.stdout.strip() == f"error {__import__('errno').EFBIG}"


@pytest.mark.parametrize("writers", [0, 1, 4])
def test_any_writer_count_gives_the_same_tree(writers: int, tmp_path: Path) -> None:
    source = _sample_tree(tmp_path / "src")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.add(source, arcname=".")
    dest = tmp_path / "dest"
    dest.mkdir()
    extract_stream(io.BytesIO(buffer.getvalue()), dest, writers=writers)
    assert tree_signature(dest) == tree_signature(source)
    assert os.stat(dest / "bin/sh").st_ino == os.stat(dest / "bin/-sh").st_ino
    for tree in (source, dest):
        os.chmod(tree / "ro", 0o755)


# -- header decoding ---------------------------------------------------------------------------


def _headers(data: bytes) -> list[bytes]:
    return [data[i:i + 512] for i in range(0, len(data), 512)]


@settings(max_examples=60, deadline=None)
@given(name=st.text(min_size=1, max_size=300).filter(lambda n: "\0" not in n),
       size=st.integers(min_value=0, max_value=3000), mode=st.integers(0, 0o7777),
       mtime=st.integers(0, 2**33), uid=st.integers(0, 2**22),
       kind=st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE,
                             tarfile.LNKTYPE, tarfile.CHRTYPE]),
       fmt=st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT]))
def test_fast_header_decoder_agrees_with_tarfile(name, size, mode, mtime, uid, kind,
                                                  fmt) -> None:  # type: ignore[no-untyped-def]
    from fruix_core.transport.tarstream import _HeaderInfo

    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.uid = kind, mode, mtime, uid
    info.size = size if kind == tarfile.REGTYPE else 0
    info.linkname = "target/" + name[:50] if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
    try:
        block = info.tobuf(fmt, "utf-8", "surrogateescape")
    except ValueError:
        return  # not representable in this format
    for header in _headers(block):
        for mutated in (header, header[:100] + b"7" + header[101:],
                        header[:150] + b"\x00" + header[151:]):
            outcomes = []
            for decoder in (tarfile.TarInfo, _HeaderInfo):
                try:
                    outcomes.append(decoder.frombuf(mutated, "utf-8", "surrogateescape")
                                    .get_info())
                except tarfile.HeaderError as exc:
                    outcomes.append(type(exc))
            assert outcomes[0] == outcomes[1]


def test_fast_decoder_reads_real_archives_like_tarfile(tmp_path: Path) -> None:
    from fruix_core.testkit import require_tool
    from fruix_core.transport.tarstream import _HeaderInfo

    source = _sample_tree(tmp_path / "src")
    (source / ("long-" * 40)).write_text("long name")
    for program in ("tar", require_tool("bsdtar", "libarchive-tools")):
        archive = tmp_path / "a.tar"
        __import__("subprocess").run([program, "-C", str(source), "-cf", str(archive), "."],
                                     check=True)
        with tarfile.open(archive) as plain, tarfile.open(archive, tarinfo=_HeaderInfo) as fast:
            assert [m.get_info() for m in plain.getmembers()] == \
                [m.get_info() for m in fast.getmembers()]
        archive.unlink()
    os.chmod(source / "ro", 0o755)


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_stream_is_refused_with_writer_threads(case: str, tmp_path: Path) -> None:
    area = tmp_path / "area"
    area.mkdir()
    with pytest.raises(UnsafeArchiveError):
        extract_stream(io.BytesIO(HOSTILE[case]), area, writers=2)
    assert not Path("/tmp/fruix-absolute-escape").exists()
    assert not (tmp_path / "escaped").exists()
