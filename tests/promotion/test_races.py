"""The result root rearranged while it is promoted: nothing from outside enters the store.

The attacker is whoever can write the result root (its unprivileged owner).
Each race is reproduced deterministically with a named seam
(:mod:`fruix_core.promotion.seams`) at the exact step, never with timing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from fruix_core.errors import PromotionInputError
from fruix_core.promotion import promote, seams, verify

from .conftest import build_result_root
from .snapshot import snapshot, store_bytes

SECRET = b"TOP SECRET: root-only content outside the result root\n"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A root-only directory outside the result root, holding names the world also has."""
    place = tmp_path / "victim"
    place.mkdir(mode=0o700)
    for name in ("rc.conf", "master.passwd", "localtime", "aaa-big", "secret"):
        (place / name).write_bytes(SECRET)
        os.chmod(place / name, 0o600)
    (place / "bin").mkdir()
    (place / "bin/sh").write_bytes(SECRET)
    return place


def _big_etc(root: Path) -> None:
    (root / "artifacts/world/etc/aaa-big").write_bytes(b"x" * (6 << 20))


@pytest.fixture
def seeded_store(tmp_path: Path) -> Path:
    """A store that already holds another promotion (so its bytes can be compared)."""
    store = tmp_path / "store"
    promote(build_result_root(tmp_path / "seed", salt=b"seed"), store)
    return store


def _after_validation(point: str, action: Callable[[bytes], None]):
    """Install ``action`` at ``point``, armed only once validation is over."""
    armed = {"on": False}

    def arm(_detail: bytes) -> None:
        armed["on"] = True

    def fire(detail: bytes) -> None:
        if armed["on"]:
            action(detail)

    class Both:
        def __enter__(self) -> None:
            self._a = seams.installed("promote.validated", arm)
            self._b = seams.installed(point, fire)
            self._a.__enter__()
            self._b.__enter__()

        def __exit__(self, *exc: object) -> None:
            self._b.__exit__(*exc)
            self._a.__exit__(*exc)

    return Both()


def test_directory_swapped_for_symlink_before_it_is_opened(
        tmp_path: Path, seeded_store: Path, victim: Path) -> None:
    root = build_result_root(tmp_path / "r", extra=_big_etc)
    world = root / "artifacts/world"
    before = snapshot(seeded_store)

    def swap(rel: bytes) -> None:
        if rel == b"etc":
            os.rename(world / "etc", world / "etc.moved")
            os.symlink(victim, world / "etc")

    with _after_validation("walk.before-open", swap), \
            pytest.raises(PromotionInputError, match="changed while it was read"):
        promote(root, seeded_store)
    assert snapshot(seeded_store) == before, "a refusal must leave the store byte-identical"
    assert SECRET not in store_bytes(seeded_store)


def test_directory_swapped_while_a_large_file_in_it_is_read(
        tmp_path: Path, seeded_store: Path, victim: Path) -> None:
    # The reported attack: while promote reads etc/aaa-big, etc becomes a symlink to a
    # root-only directory; a path-based walk then read etc/master.passwd from there.
    root = build_result_root(tmp_path / "r", extra=_big_etc)
    world = root / "artifacts/world"
    original = (world / "etc/master.passwd").read_bytes()

    def swap(rel: bytes) -> None:
        if rel == b"etc/aaa-big" and not os.path.islink(world / "etc"):
            os.rename(world / "etc", world / "etc.moved")
            os.symlink(victim, world / "etc")

    with _after_validation("walk.reading", swap):
        try:
            outcome = promote(root, seeded_store)
        except PromotionInputError:
            outcome = None
    assert SECRET not in store_bytes(seeded_store)
    if outcome is not None:  # stored, then exactly the validated content
        stored = outcome.artifacts["world"] / "etc/master.passwd"
        assert stored.read_bytes() == original
        assert oct(stored.stat().st_mode & 0o777) == oct(0o444)
    assert verify(seeded_store).ok


def test_whole_world_replaced_after_validation(tmp_path: Path, seeded_store: Path,
                                               victim: Path) -> None:
    root = build_result_root(tmp_path / "r")
    world = root / "artifacts/world"
    sh = (world / "bin/sh").read_bytes()

    def replace_world(_detail: bytes) -> None:
        os.rename(world, root / "artifacts/world.old")
        os.symlink(victim, world)

    with seams.installed("promote.validated", replace_world):
        outcome = promote(root, seeded_store)
    # Ingestion walks the directory validated (held open), never the new symlink.
    assert (outcome.artifacts["world"] / "bin/sh").read_bytes() == sh
    assert SECRET not in store_bytes(seeded_store)
    assert verify(seeded_store).ok


def test_world_emptied_after_validation_is_refused(tmp_path: Path,
                                                   seeded_store: Path) -> None:
    root = build_result_root(tmp_path / "r")
    world = root / "artifacts/world"
    before = snapshot(seeded_store)

    def empty_sh(_detail: bytes) -> None:
        (world / "bin/sh").unlink()
        (world / "bin/sh").mkdir()

    with seams.installed("promote.validated", empty_sh), \
            pytest.raises(PromotionInputError, match="bin/sh.*not a regular file"):
        promote(root, seeded_store)
    assert snapshot(seeded_store) == before


def test_file_swapped_for_a_fifo_in_the_kernel_publishes_nothing(
        tmp_path: Path, seeded_store: Path) -> None:
    # The kernel is ingested after the world: the world must not be published alone,
    # and no pool entry or lock file may stay behind.
    root = build_result_root(tmp_path / "r", salt=b"fresh content")
    module = root / "artifacts/kernel/boot/kernel/if_em.ko"
    before = snapshot(seeded_store)

    def to_fifo(rel: bytes) -> None:
        if rel == b"boot/kernel/if_em.ko":
            module.unlink()
            os.mkfifo(module)

    with _after_validation("walk.before-open", to_fifo), \
            pytest.raises(PromotionInputError, match="if_em.ko"):
        promote(root, seeded_store)
    assert snapshot(seeded_store) == before


def test_file_made_unreadable_after_validation(tmp_path: Path, seeded_store: Path) -> None:
    root = build_result_root(tmp_path / "r", salt=b"other")
    before = snapshot(seeded_store)
    target = root / "artifacts/world/etc/rc.conf"

    def vanish(rel: bytes) -> None:
        if rel == b"etc/rc.conf":
            target.unlink()  # unreadable for anyone, root included

    with _after_validation("walk.before-open", vanish), \
            pytest.raises(PromotionInputError, match="rc.conf"):
        promote(root, seeded_store)
    assert snapshot(seeded_store) == before
