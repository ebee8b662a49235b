"""METALOG lines in artifact manifests: owners, groups, intended modes, file flags.

The lines are the ones FreeBSD's ``install -M`` writes under ``-DNO_ROOT``
(``usr.bin/xinstall/xinstall.c``, ``metadata_log``; ``Makefile.inc1``:
``INSTALLFLAGS+= -U -M ${METALOG} -D ${INSTALL_DDIR}``), e.g.
``./sbin/ping type=file uname=root gname=wheel mode=04555 size=8 flags=schg``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from fruix_core.errors import PromotionInputError
from fruix_core.promotion import promote, verify
from fruix_core.promotion.layout import MANIFEST_FILE
from fruix_core.promotion.metalog import parse_metalog

from .conftest import build_result_root

WORLD_METALOG = """#mtree 2.0
. type=dir uname=root gname=wheel mode=0755
./bin type=dir uname=root gname=wheel mode=0755
./bin/sh type=file uname=root gname=wheel mode=0555 size=9
./sbin/ping type=file uname=root gname=wheel mode=04555 size=8 flags=schg
./usr/bin/wall type=file uname=root gname=tty mode=02555 size=4
./etc/master.passwd type=file uname=root gname=wheel mode=0600 size=41
./var/empty type=dir uname=root gname=wheel mode=0555 flags=schg
./usr/bin/cat type=link mode=0755 link=../bin/cat
./usr/include type=dir uname=root gname=wheel mode=0755
./usr/include/stdio.h type=file uname=root gname=wheel mode=0444 size=31
./usr/include/sys/param.h type=file uname=root gname=wheel mode=0444 size=36
./boot/loader type=file uname=root gname=wheel mode=0555 size=6 flags=sunlnk
./boot/loader type=file uname=root gname=wheel mode=0555 size=6 flags=uarch
"""


def _with_metalog(text: str, stage: str = "world"):
    def extra(root: Path) -> None:
        (root / "metalog").mkdir(exist_ok=True)
        (root / "metalog" / f"{stage}.METALOG").write_text(text)
    return extra


def _manifest(path: Path) -> dict[str, str]:
    lines = (path / MANIFEST_FILE).read_text().splitlines()[2:]
    return {line.split(" ", 1)[0]: line for line in lines}


def test_metalog_lines_enter_the_manifests_of_their_artifacts(tmp_path: Path) -> None:
    root = build_result_root(tmp_path / "result", extra=_with_metalog(WORLD_METALOG))
    outcome = promote(root, tmp_path / "store")
    world = _manifest(outcome.artifacts["world"])
    assert world["./sbin/ping"].startswith(
        "./sbin/ping type=file uname=root gname=wheel mode=4555 size=4 sha256digest=")
    assert world["./sbin/ping"].endswith(" flags=schg")
    assert " uname=root gname=tty mode=2555 " in world["./usr/bin/wall"]
    assert world["./var/empty"] == \
        "./var/empty type=dir uname=root gname=wheel mode=0555 flags=schg"
    assert world["./usr/bin/cat"] == "./usr/bin/cat type=link link=../bin/cat"
    # No METALOG line: what the staged tree says, no owner.
    assert world["./bin/cat"].startswith("./bin/cat type=file mode=0555 ")
    headers = _manifest(outcome.artifacts["headers"])
    assert headers["./usr/include/stdio.h"].startswith(
        "./usr/include/stdio.h type=file uname=root gname=wheel mode=0444 ")
    # The stage's root line belongs to every artifact cut from it.
    assert headers["."] == ". type=dir uname=root gname=wheel mode=0755"
    # A path logged twice: the later keywords win (mtree reads specs that way).
    assert _manifest(outcome.artifacts["bootloader"])["./boot/loader"].endswith(" flags=uarch")
    assert verify(tmp_path / "store").ok


def test_the_metalog_is_part_of_identity(tmp_path: Path) -> None:
    plain = promote(build_result_root(tmp_path / "a"), tmp_path / "store")
    logged = promote(build_result_root(tmp_path / "b", extra=_with_metalog(WORLD_METALOG)),
                     tmp_path / "store")
    other = promote(build_result_root(tmp_path / "c", extra=_with_metalog(
        WORLD_METALOG.replace("flags=schg\n./usr/bin/wall", "\n./usr/bin/wall"))),
        tmp_path / "store")
    names = [{k: p.name for k, p in o.artifacts.items()} for o in (plain, logged, other)]
    assert names[0]["world"] != names[1]["world"] != names[2]["world"]
    assert names[0]["kernel"] == names[1]["kernel"]  # no kernel METALOG: unchanged
    assert verify(tmp_path / "store").ok


@pytest.mark.parametrize(("text", "message"), [
    ("./bin/nonesuch type=file mode=0555\n", "METALOG names ./bin/nonesuch, which is not"),
    ("./bin/sh type=dir mode=0755\n", "METALOG says ./bin/sh is a dir, the tree has a file"),
    ("./bin/sh type=file mode=0444\n", "executable bits differ"),
    ("./usr/bin/cat type=link link=/elsewhere\n", "points to '/elsewhere'"),
    ("./bin/sh type=file mode=99\n", "metalog/world.METALOG:2: invalid mode=99"),
    ("./bin/sh type=file flags=$(reboot)\n", "invalid flags="),
    ("./bin/sh type=file uname=ro:ot\n", "invalid uname="),
    ("./../etc/passwd type=file\n", "leaves the tree"),
    ("/set type=file\n", "mtree directives"),
    ("bin/sh type=file\n", "does not start with './'"),
    ("./bin/sh mode=0555\n", "no type="),
    ("./bin/sh type=fifo\n", "unsupported type=fifo"),
])
def test_bad_metalogs_are_refused_and_nothing_is_written(tmp_path: Path, text: str,
                                                         message: str) -> None:
    root = build_result_root(tmp_path / "result", extra=_with_metalog("#mtree 2.0\n" + text))
    store = tmp_path / "store"
    with pytest.raises(PromotionInputError, match=re.escape(message)):
        promote(root, store)
    assert [n for n in os.listdir(store) if not n.startswith(".")] == [] \
        if store.exists() else True


def test_a_metalog_behind_a_symlink_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.METALOG"
    outside.write_text(WORLD_METALOG)

    def extra(root: Path) -> None:
        (root / "metalog").mkdir()
        os.symlink(outside, root / "metalog" / "world.METALOG")

    root = build_result_root(tmp_path / "result", extra=extra)
    with pytest.raises(PromotionInputError, match="symbolic link"):
        promote(root, tmp_path / "store")


def test_parse_metalog_merges_and_decodes() -> None:
    entries = parse_metalog([b"#mtree 2.0\n", b"./a\\040b type=file mode=0644\n",
                             b"./a\\040b type=file uname=operator\n", b"\n"], "m")
    entry = entries[b"a b"]
    assert (entry.type, entry.mode, entry.uname) == ("file", 0o644, "operator")
