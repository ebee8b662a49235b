"""Generate a FreeBSD-shaped result root for promotion benchmarks.

At ``--scale 1`` (the issue's sizes):

- world: ~25,400 files, ~370 MB: a few very large toolchain binaries, ~400
  shared libraries, ~900 programs, ~23,600 small files (manual pages,
  ``/usr/share``, ``/etc``), a ``/rescue`` farm of 150 hard links to one
  12 MB crunched binary, ~600 symlinks (100 absolute), 20 setuid/setgid
  programs, empty directories;
- kernel: ~150 MB: a 30 MB kernel, ~700 modules and their ``.debug`` files;
- headers: ~30 MB in ~4,600 files under ``usr/include``;
- bootloader: ~1.3 MB under ``boot``.

``--scale`` multiplies file counts and sizes (``--scale 0.05`` for a quick
run). ``--variant N`` (N > 0) changes the contents of 5 % of the world's
files, chosen deterministically, to model a rebuilt world. Contents are
pseudo-random slices of a seeded pool with a unique header per file, so
files never dedupe by accident and every run generates identical bytes.

Usage::

    python benchmarks/promotion/generate.py OUT [--scale 1.0] [--variant 0]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[2]))

from fruix_core.model import (  # noqa: E402
    ARTIFACT_KINDS,
    ArtifactEntry,
    BaseMetadata,
    BuildPolicy,
    Promotion,
    SourceStore,
)
from fruix_core.promotion.schema import write_promotion  # noqa: E402

POOL_SIZE = 64 << 20
MB = 1 << 20


class Content:
    """Deterministic file contents: unique header + a slice of a seeded random pool."""

    def __init__(self, seed: int = 15) -> None:
        self.pool = random.Random(seed).randbytes(POOL_SIZE)
        self.variant = 0
        self.changed: set[str] = set()
        #: Other names of ``/rescue/rescue`` (hard links); 0 for a tree without groups.
        self.rescue_links = 150

    def bytes_for(self, rel: str, size: int) -> bytes:
        tag = rel
        if rel in self.changed:
            tag = f"{rel}#variant-{self.variant}"
        header = hashlib.sha256(tag.encode()).digest()
        if size <= len(header):
            return header[:size]
        body = size - len(header)
        offset = int.from_bytes(header[:4], "little") % (POOL_SIZE - min(body, POOL_SIZE - 1))
        if body <= POOL_SIZE - offset:
            return header + self.pool[offset:offset + body]
        parts = [header]
        while body > 0:
            take = min(body, POOL_SIZE)
            parts.append(self.pool[:take])
            body -= take
        return b"".join(parts)


#: Modification time of every generated file (a rebuilt file's is later): files a
#: rebuild did not change keep their time, as ``rsync``'s quick check needs.
MTIME = 1_600_000_000


def _write(root: Path, rel: str, content: Content, size: int, mode: int = 0o644) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.bytes_for(rel, size))
    os.chmod(path, mode)
    when = MTIME + (1000 * content.variant if rel in content.changed else 0)
    os.utime(path, (when, when))


def _n(count: int, scale: float) -> int:
    return max(1, round(count * scale))


def _s(size: int, scale: float) -> int:
    return max(1, round(size * scale))


def world_files(scale: float) -> list[tuple[str, int, int]]:
    """(relative path, size, mode) of every regular world file, in a fixed order."""
    rng = random.Random(1)
    files: list[tuple[str, int, int]] = [("bin/sh", 170_000, 0o555)]
    for i, size in enumerate((60, 25, 15, 10, 8, 5, 4, 3)):
        files.append((f"usr/bin/toolchain{i}", _s(size * MB, scale), 0o555))
    for i in range(_n(400, scale)):
        files.append((f"usr/lib/lib{i:03d}.so.{i % 7}", _s(rng.randint(50_000, 450_000), 1),
                      0o444))
    for i in range(_n(900, scale)):
        where = ("bin", "sbin", "usr/bin", "usr/sbin", "usr/libexec")[i % 5]
        mode = 0o4555 if i % 45 == 0 else 0o2555 if i % 45 == 1 else 0o555
        files.append((f"{where}/prog{i:04d}", rng.randint(10_000, 110_000), mode))
    for i in range(_n(23_600, scale)):
        area = ("usr/share/man/man1", "usr/share/man/man3", "usr/share/locale",
                "usr/share/misc", "etc", "usr/share/examples")[i % 6]
        sub = f"{area}/d{(i // 200):03d}"
        files.append((f"{sub}/file{i:05d}", rng.randint(200, 5_400),
                      0o600 if area == "etc" and i % 60 == 4 else 0o644))
    return files


def make_world(root: Path, content: Content, scale: float) -> None:
    for rel, size, mode in world_files(scale):
        _write(root, rel, content, size, mode)
    _write(root, "rescue/rescue", content, _s(12 * MB, scale), 0o555)
    for i in range(content.rescue_links):
        os.link(root / "rescue/rescue", root / f"rescue/r{i:03d}")
    for i in range(_n(600, scale)):
        link = root / f"usr/share/links/l{i:04d}"
        link.parent.mkdir(parents=True, exist_ok=True)
        target = f"/usr/share/misc/target{i}" if i % 6 == 0 else f"../man/man1/page{i}"
        os.symlink(target, link)
    for empty in ("tmp", "var/empty", "var/db", "mnt", "media", "proc"):
        (root / empty).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)


def make_kernel(root: Path, content: Content, scale: float) -> None:
    _write(root, "boot/kernel/kernel", content, _s(30 * MB, scale), 0o555)
    _write(root, "usr/lib/debug/boot/kernel/kernel.debug", content, _s(40 * MB, scale))
    modules = _n(700, scale)
    for i in range(modules):
        _write(root, f"boot/kernel/mod{i:03d}.ko", content, 50 * MB // 700, 0o555)
        _write(root, f"usr/lib/debug/boot/kernel/mod{i:03d}.ko.debug", content, 30 * MB // 700)
    _write(root, "boot/kernel/linker.hints", content, 20_000)


def make_headers(root: Path, content: Content, scale: float) -> None:
    rng = random.Random(3)
    for i in range(_n(4_600, scale)):
        sub = ("", "sys/", "net/", "netinet/", "machine/", "c++/v1/")[i % 6]
        _write(root, f"usr/include/{sub}h{i:04d}.h", content, rng.randint(500, 12_500))
    _write(root, "usr/include/sys/param.h", content, 12_000)


def make_bootloader(root: Path, content: Content, scale: float) -> None:
    _write(root, "boot/loader", content, _s(520_000, scale), 0o555)
    _write(root, "boot/loader_lua", content, _s(500_000, scale), 0o555)
    _write(root, "boot/boot1.efi", content, _s(120_000, scale))
    _write(root, "boot/defaults/loader.conf", content, 16_000)
    for i in range(20):
        _write(root, f"boot/lua/module{i:02d}.lua", content, 6_500)


MAKERS = {"world": make_world, "kernel": make_kernel, "headers": make_headers,
          "bootloader": make_bootloader}
KEY = {"world": "bin/sh", "kernel": "boot/kernel/kernel", "bootloader": "boot/loader",
       "headers": "usr/include/sys/param.h"}


def generate(out: Path, *, scale: float = 1.0, variant: int = 0, run_id: str = "bench",
             hard_links: bool = True) -> Path:
    """Write a complete result root at ``out``; returns ``out``.

    :param hard_links: ``False`` for a world without the ``/rescue`` hard-link farm.
    """
    content = Content()
    content.rescue_links = 150 if hard_links else 0
    if variant:
        rng = random.Random(1000 + variant)
        files = [rel for rel, _size, _mode in world_files(scale)]
        content.variant = variant
        content.changed = set(rng.sample(files, max(1, len(files) // 20)))
    entries = []
    for kind in ARTIFACT_KINDS:
        tree = out / "artifacts" / kind
        tree.mkdir(parents=True)
        MAKERS[kind](tree, content, scale)
        files: tuple[tuple[str, str], ...] = ()
        if kind in KEY:
            digest = hashlib.sha256((tree / KEY[kind]).read_bytes()).hexdigest()
            files = ((KEY[kind], digest),)
        entries.append(ArtifactEntry(kind=kind, path=f"artifacts/{kind}", files=files))
    promotion = Promotion(
        executor="local", executor_version="0.1.0", run_id=run_id,
        guest_host_name="bench.example", base=BaseMetadata(),
        source=SourceStore(path="/frx/store/0000-freebsd-source",
                           signature="sha256:" + "0" * 64),
        policy=BuildPolicy(phases=("buildworld", "buildkernel", "installworld",
                                   "distribution", "installkernel"),
                           jobs=8, environment_policy="sanitised-v1"),
        artifacts=tuple(entries))
    write_promotion(promotion, out / "promotion.scm")
    (out / "logs").mkdir()
    (out / "metadata").write_text(f"run_id={run_id}\n")
    (out / "status").write_text("ok\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--variant", type=int, default=0)
    parser.add_argument("--no-hard-links", action="store_true",
                        help="no /rescue hard-link farm")
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"{args.out} exists")
    generate(args.out, scale=args.scale, variant=args.variant,
             run_id=f"bench-{args.variant}", hard_links=not args.no_hard_links)


if __name__ == "__main__":
    main()
