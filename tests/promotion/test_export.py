"""``fruix store export-tar``: checked with bsdtar, the reader FreeBSD itself uses.

FreeBSD's release ``base.txz`` is made from the METALOG (``tar -cf - @METALOG``):
entries carry the METALOG's owners, groups and modes, and file flags travel as
the pax keyword ``SCHILY.fflags`` (libarchive's ``archive_write_set_format_pax``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fruix_core.errors import ExitCode, VerificationError
from fruix_core.promotion import promote
from fruix_core.promotion.export import export_tar_file
from fruix_core.testkit import make_tree_writable, require_tool, run_cli

from .conftest import build_result_root
from .test_metalog import WORLD_METALOG, _with_metalog


@pytest.fixture(autouse=True)
def _bsdtar() -> None:
    require_tool("bsdtar", "libarchive-tools")


def _listing(tar: Path) -> dict[str, list[str]]:
    out = subprocess.run(["bsdtar", "-tvf", str(tar)], capture_output=True, text=True,
                         check=True).stdout
    rows = {}
    for line in out.splitlines():
        words = line.split()
        rows[words[8].rstrip("/")] = words
    return rows


def _mtree(tar: Path) -> dict[str, str]:
    """bsdtar's own reading of the archive, as mtree lines (flags included)."""
    out = subprocess.run(["bsdtar", "-cf", "-", "--format=mtree",
                          "--options=!all,type,uname,gname,mode,flags", f"@{tar}"],
                         capture_output=True, text=True, check=True).stdout
    return {line.split(" ", 1)[0]: line for line in out.splitlines() if line.startswith(".")}


@pytest.fixture
def world(tmp_path: Path) -> Path:
    root = build_result_root(tmp_path / "result", extra=_with_metalog(WORLD_METALOG))
    return promote(root, tmp_path / "store").artifacts["world"]


def test_export_carries_owners_modes_and_flags(world: Path, tmp_path: Path) -> None:
    tar = tmp_path / "world.tar"
    report = export_tar_file(world, tar)
    assert report.entries > 10
    listing = _listing(tar)
    assert listing["./sbin/ping"][:4] == ["-r-sr-xr-x", "0", "root", "wheel"]
    assert listing["./usr/bin/wall"][:4] == ["-r-xr-sr-x", "0", "root", "tty"]
    assert listing["./etc/master.passwd"][0] == "-rw-------"
    assert listing["./tmp"][0] == "drwxrwxrwt"
    mtree = _mtree(tar)
    assert "flags=schg" in mtree["./sbin/ping"].split()
    assert "flags=schg" in mtree["./var/empty"].split()
    assert "flags" not in mtree["./bin/sh"]
    # Hard-link groups stay one file; symlinks keep their raw targets.
    links = [row for row in listing.values() if row[0].startswith("h")]
    assert links and all(row[-3:-1] == ["link", "to"] for row in links)
    assert listing["./usr/bin/cat"][-1] == "../bin/cat"
    # Files come out with their store content.
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["bsdtar", "-xf", str(tar), "-C", str(out), "./bin/sh"], check=True)
    assert (out / "bin/sh").read_bytes() == (world / "bin/sh").read_bytes()


def test_export_is_deterministic(world: Path, tmp_path: Path) -> None:
    export_tar_file(world, tmp_path / "a.tar")
    export_tar_file(world, tmp_path / "b.tar")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


def test_a_changed_store_file_fails_and_leaves_no_file(world: Path, tmp_path: Path) -> None:
    make_tree_writable(world)
    target = world / "bin" / "sh"
    os.unlink(target)  # the store shares content by hard links; replace, never edit
    target.write_bytes(b"#!sh\x00EVL")  # same size, other bytes
    tar = tmp_path / "out.tar"
    with pytest.raises(VerificationError, match=r"\./bin/sh differs from its manifest"):
        export_tar_file(world, tar)
    assert not tar.exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".out.tar")]


def test_cli_export_tar(world: Path, tmp_path: Path) -> None:
    tar = tmp_path / "cli.tar"
    proc = run_cli("store", "export-tar", world.name, "-o", str(tar), "--store",
                   str(world.parent), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _listing(tar)["./sbin/ping"][:4] == ["-r-sr-xr-x", "0", "root", "wheel"]
    piped = subprocess.run([sys.executable, "-m", "fruix_core.cli.main", "store", "export-tar",
                            str(world)], cwd=tmp_path, capture_output=True, check=False)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == tar.read_bytes()
    bad = run_cli("store", "export-tar", str(tmp_path), "-o", str(tmp_path / "no.tar"),
                  cwd=tmp_path)
    assert bad.returncode == ExitCode.USAGE
    assert "is not an artifact store object" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "no.tar").exists()
    missing = run_cli("store", "export-tar", "nonesuch", "--store", str(world.parent),
                      cwd=tmp_path)
    assert missing.returncode == ExitCode.USAGE and "no store object 'nonesuch'" in missing.stderr


def test_sample_world_exports_like_a_freebsd_base(tmp_path: Path, fruix_workspace,
                                                  fruix_sample_source) -> None:
    conf = fruix_workspace.write_config(source=fruix_sample_source)
    proc = run_cli("native-build", "run", "--config", str(conf), "--json",
                   cwd=fruix_workspace.root)
    assert proc.returncode == 0, proc.stderr
    world = Path(json.loads(proc.stdout)["artifacts"]["world"])
    tar = tmp_path / "base.tar"
    export = run_cli("store", "export-tar", str(world), "-o", str(tar), cwd=tmp_path)
    assert export.returncode == 0, export.stderr
    listing = _listing(tar)
    assert listing["./usr/bin/passwd"][:4] == ["-r-sr-xr-x", "0", "root", "wheel"]
    assert listing["./usr/bin/wc"][2:4] == ["operator", "operator"]
    mtree = _mtree(tar)
    assert "flags=schg" in mtree["./usr/bin/passwd"].split()
    assert "flags=sunlnk" in mtree["./usr/lib/libsample.a"].split()
    assert "mode=1777" in mtree["./tmp"].split() and "mode=750" in mtree["./var/crash"].split()
    manifest = (world / ".fruix-native-build-manifest").read_text()
    assert "./usr/bin/passwd type=file uname=root gname=wheel mode=4555 " in manifest


def test_export_never_reads_through_a_symlink(world: Path, tmp_path: Path) -> None:
    # A store changed behind the engine's back: bin/ replaced by a link elsewhere.
    import shutil

    outside = tmp_path / "outside"
    shutil.copytree(world / "bin", outside)   # the same bytes, outside the object
    make_tree_writable(world)
    shutil.rmtree(world / "bin")
    os.symlink(outside, world / "bin")
    with pytest.raises(VerificationError, match="reached through a symbolic link"):
        export_tar_file(world, tmp_path / "x.tar")
    assert not (tmp_path / "x.tar").exists()
