"""Where things live inside a store directory.

::

    STORE/<h40>-fruix-native-<kind>-<version>-<executor>/   artifact objects
    STORE/<h40>-fruix-native-build-result-<version>-<executor>/   result bundles
    STORE/.links/<sha256>-<r|x>     content pool: one inode per (content, executable bit)
    STORE/.locks/<name>.lock        per-object publish lock (flock)
    STORE/.locks/owner-<token>.lock held by a live promoting process for its lifetime
    STORE/.locks/gc.lock            the collector's lock (shared while promoting)
    STORE/.tmp-<token>-<what>       an object being built by the process ``<token>``
    STORE/.trash-<name>             an object being deleted by the collector
    STORE/.roots/<name>             explicit GC roots (symlinks to store objects)
    STORE/.roots/.results/<h>       results directories that promoted into this store
    STORE/.cache/<fingerprint>      stat-cache records (see statcache)
    STORE/.cache/verified-inodes    store files a full verify hashed (verify --fast)

Dot-prefixed entries are the store's own bookkeeping, never objects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MANIFEST_FILE",
    "OBJECT_FILE",
    "OBJECT_NAME_RE",
    "REFERENCES_FILE",
    "RESERVED_NAMES",
    "RESULT_FILE",
    "StoreLayout",
]

#: Metadata of an artifact object.
OBJECT_FILE = ".fruix-native-build-object.scm"
#: Per-file manifest of an artifact object.
MANIFEST_FILE = ".fruix-native-build-manifest"
#: Store paths an object refers to, one per line, sorted.
REFERENCES_FILE = ".references"
#: Metadata of a result bundle.
RESULT_FILE = ".fruix-native-build-result.scm"
#: Top-level names an artifact tree may not use (the object's own files).
RESERVED_NAMES = frozenset({OBJECT_FILE, MANIFEST_FILE, REFERENCES_FILE, RESULT_FILE})

OBJECT_NAME_RE = re.compile(r"[0-9a-f]{40}-fruix-native-[A-Za-z0-9._+-]+\Z")


@dataclass(frozen=True, slots=True)
class StoreLayout:
    """Paths of one store directory."""

    root: Path

    @property
    def links(self) -> Path:
        return self.root / ".links"

    @property
    def locks(self) -> Path:
        return self.root / ".locks"

    def object(self, name: str) -> Path:
        return self.root / name

    def lock(self, name: str) -> Path:
        return self.locks / f"{name}.lock"

    def owner_lock(self, token: str) -> Path:
        return self.locks / f"owner-{token}.lock"

    def temp(self, token: str, what: str) -> Path:
        return self.root / f".tmp-{token}-{what}"

    @property
    def gc_lock(self) -> Path:
        return self.locks / "gc.lock"

    @property
    def roots_dir(self) -> Path:
        return self.root / ".roots"

    @property
    def results_roots(self) -> Path:
        return self.roots_dir / ".results"

    def trash(self, name: str) -> Path:
        return self.root / f".trash-{name}"

    def pool_entry(self, sha256: str, executable: bool) -> Path:
        return self.links / f"{sha256}-{'x' if executable else 'r'}"
