"""store-layout.scm: strict reading (never evaluation) and deterministic writing."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fruix_core.errors import MetadataError
from fruix_core.guestlayout import (
    StoreLayout,
    dumps_store_layout,
    parse_store_layout,
    read_store_layout,
    store_hash_part,
    write_store_layout,
)

H = "0123456789abcdfghijklmnpqrsvwxyz"
SOURCE = f"/frx/store/{H}-freebsd-source"


def test_round_trip(tmp_path: Path) -> None:
    layout = StoreLayout(source_path=SOURCE, source_signature="sha256:" + "ab" * 32,
                         closure_path=f"/frx/store/{H}-fruix-system-closure",
                         development_profile_path=f"/frx/store/{H}-fruix-development-profile",
                         host_name="guest")
    path = write_store_layout(tmp_path, layout)
    assert path == tmp_path / "run/current-system/metadata/store-layout.scm"
    assert read_store_layout(tmp_path) == layout
    assert layout.source_hash == H


def test_minimal_file() -> None:
    layout = parse_store_layout(f'(fruix-store-layout (version 1) (freebsd-source "{SOURCE}"))')
    assert layout.source_path == SOURCE and layout.store_directory == "/frx/store"
    assert layout.closure_path is None


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match="store-layout.scm"):
        read_store_layout(tmp_path)


@pytest.mark.parametrize(("text", "message"), [
    ("", "exactly one"),
    ("(fruix-store-layout (version 1))", "freebsd-source"),
    (f'(fruix-store-layout (freebsd-source "{SOURCE}"))', "version"),
    (f'(fruix-store-layout (version 2) (freebsd-source "{SOURCE}"))', "version"),
    (f'(fruix-store-layout (version 1) (freebsd-source "{SOURCE}") (colour "x"))', "unknown"),
    (f'(fruix-store-layout (version 1) (freebsd-source "{SOURCE}") '
     f'(freebsd-source "{SOURCE}"))', "twice"),
    ('(fruix-store-layout (version 1) (freebsd-source "relative/x"))', "absolute"),
    ('(fruix-store-layout (version 1) (freebsd-source "/frx/store/../etc"))', "normalised"),
    ('(fruix-store-layout (version 1) (freebsd-source "/elsewhere/' + H + '-src"))', "store"),
    ('(fruix-store-layout (version 1) (freebsd-source "/frx/store/short-src"))', "store"),
    ('(fruix-store-layout (version 1) (freebsd-source 42))', "string"),
    (f'(fruix-store-layout (version 1) (freebsd-source "{SOURCE}") '
     '(freebsd-source-signature "md5:1"))', "sha256"),
    ("#.(system \"rm -rf /\")", "not accepted"),
    (f"(fruix-store-layout (version 1) (freebsd-source . \"{SOURCE}\"))", "dotted"),
    ("(fruix-store-layout (version 1)", "unbalanced"),
    ("(other-form)", "exactly one"),
    ("(fruix-store-layout) (fruix-store-layout)", "exactly one"),
])
def test_malformed_files_are_refused(text: str, message: str) -> None:
    with pytest.raises(MetadataError, match=message):
        parse_store_layout(text, source="guest:/run/current-system/metadata/store-layout.scm")


def test_errors_name_file_and_line() -> None:
    text = f'(fruix-store-layout\n  (version 1)\n  (freebsd-source "{SOURCE}")\n  (bogus "x"))'
    with pytest.raises(MetadataError) as info:
        parse_store_layout(text, source="layout.scm")
    assert str(info.value).startswith("layout.scm:4:")


def test_store_hash_part() -> None:
    assert store_hash_part(SOURCE) == H
    with pytest.raises(ValueError):
        store_hash_part("/frx/store/nohash")


@given(st.text(min_size=1, max_size=30).filter(lambda s: "\n" not in s))
def test_host_names_round_trip(name: str) -> None:
    layout = StoreLayout(source_path=SOURCE, host_name=name)
    assert parse_store_layout(dumps_store_layout(layout)) == layout


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    try:
        parse_store_layout(data)
    except MetadataError:
        pass
