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
    (f'(fruix-store-layout (version 1) (freebsd-source "{SOURCE}") colour)', "pair"),
    (f'(fruix-store-layout (version 1) (freebsd-source "{SOURCE}" "x"))', "exactly one value"),
    (f'(fruix-store-layout (version 1) (freebsd-source "{SOURCE}") '
     '(freebsd-version "15.0 STABLE"))', "freebsd-version"),
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
    text = f'(fruix-store-layout\n  (version 1)\n  (freebsd-source "{SOURCE}")\n  (host-name 7))'
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


def test_unknown_fields_are_skipped_records_grow() -> None:
    # The seed's store-layout.scm may carry fields this reader does not use.
    layout = parse_store_layout(
        f'(fruix-store-layout (version 1) (freebsd-source "{SOURCE}") (colour "x") '
        '(generations (current 3) (previous 2)) (freebsd-version "15.0-STABLE") '
        '(freebsd-arch "amd64"))')
    assert layout.source_path == SOURCE
    assert layout.unknown_fields == ("colour", "generations")
    assert (layout.base_version, layout.base_arch) == ("15.0-STABLE", "amd64")


def test_declared_base_is_checked_against_the_request() -> None:
    from fruix_core.errors import ConfigError
    from fruix_core.guestlayout import check_declared_base
    from fruix_core.model import BaseMetadata

    layout = parse_store_layout(f'(fruix-store-layout (version 1) (freebsd-source "{SOURCE}") '
                                '(freebsd-version "14.3-RELEASE") (freebsd-arch "amd64"))')
    check_declared_base(layout, BaseMetadata(version="14.3-RELEASE"))
    with pytest.raises(ConfigError, match="key 'base.version'.*14.3-RELEASE.*15.0-STABLE"):
        check_declared_base(layout, BaseMetadata())
    with pytest.raises(ConfigError, match="key 'base.arch'"):
        check_declared_base(layout, BaseMetadata(version="14.3-RELEASE", arch="arm64"))
    check_declared_base(parse_store_layout(
        f'(fruix-store-layout (version 1) (freebsd-source "{SOURCE}"))'), BaseMetadata())
