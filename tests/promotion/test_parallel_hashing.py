"""Files around every size boundary of the ingestion paths hash the same as nix-hash.

Small files are read whole; from ``PARALLEL_MIN`` the two digests run on two
cores from one reusable buffer; above ``BUFFER_LIMIT`` files stream in chunks
through two alternating buffers. Whatever the path, the tree signature must
equal ``nix-hash`` and each manifest digest the file's own SHA-256.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from fruix_core.promotion import promote, verify
from fruix_core.promotion.ingest import BUFFER_LIMIT
from fruix_core.promotion.layout import MANIFEST_FILE
from fruix_core.promotion.manifest import parse_manifest
from fruix_core.promotion.nar import CHUNK_SIZE, PARALLEL_MIN
from fruix_core.testkit import require_tool

from .conftest import build_result_root

SIZES = (0, 1, PARALLEL_MIN - 1, PARALLEL_MIN, PARALLEL_MIN + 1, CHUNK_SIZE, CHUNK_SIZE + 7,
         BUFFER_LIMIT, BUFFER_LIMIT + 1, 2 * BUFFER_LIMIT + 12_345)


def _contents(size: int) -> bytes:
    seed = hashlib.sha256(str(size).encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def _big_files(root: Path) -> None:
    world = root / "artifacts/world/usr/big"
    world.mkdir(parents=True)
    for size in SIZES:
        (world / f"f{size}").write_bytes(_contents(size))
    # A hard-link group of a streamed file, and one with a trailing hole.
    os.link(world / f"f{SIZES[-1]}", world / "same-inode")
    with open(world / "holey", "wb") as stream:
        stream.write(b"start")
        stream.truncate(3 * CHUNK_SIZE)


def test_every_read_path_matches_nix_hash(tmp_path: Path, store: Path) -> None:
    require_tool("nix-hash", "nix-bin")
    root = build_result_root(tmp_path / "r", extra=_big_files)
    outcome = promote(root, store)
    for kind in outcome.artifacts:
        golden = subprocess.run(["nix-hash", "--type", "sha256", str(root / "artifacts" / kind)],
                                check=True, capture_output=True, text=True).stdout.strip()
        assert outcome.tree_signatures[kind] == golden, kind
    world = outcome.artifacts["world"]
    with open(world / MANIFEST_FILE, "rb") as stream:
        digests = {e.rel: e.sha256 for e in parse_manifest(stream, "manifest") if e.sha256}
    for size in SIZES:
        rel = f"usr/big/f{size}".encode()
        assert digests[rel] == hashlib.sha256(_contents(size)).hexdigest(), size
        assert (world / os.fsdecode(rel)).read_bytes() == _contents(size)
    assert verify(store).ok
    # Promoting again into a fresh store through the same paths gives the same objects.
    again = promote(root, tmp_path / "other-store")
    assert again.tree_signatures == outcome.tree_signatures
