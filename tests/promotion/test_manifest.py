"""The mtree-style manifest: encoding and parsing."""

from __future__ import annotations

import io

import pytest

from fruix_core.errors import VerificationError
from fruix_core.promotion.manifest import (
    ManifestEntry,
    ManifestWriter,
    decode_path,
    encode_path,
    parse_manifest,
)


@pytest.mark.parametrize("raw", [b"plain/path", b"with space", b"tab\tnew\nline", b"#hash",
                                 b"back\\slash", b"caf\xc3\xa9", b"\xff\x00\x01", b"a=b"])
def test_path_encoding_round_trips(raw: bytes) -> None:
    encoded = encode_path(raw)
    assert all(0x21 <= b < 0x7F for b in encoded)
    assert b" " not in encoded and b"#" not in encoded.replace(b"\\043", b"")
    assert decode_path(encoded) == raw


def test_write_then_parse() -> None:
    entries = [
        ManifestEntry(b"", "dir", mode=0o755),
        ManifestEntry(b"bin", "dir", mode=0o755),
        ManifestEntry(b"bin/sh", "file", mode=0o555, size=3, sha256="a" * 64),
        ManifestEntry(b"rescue/cp", "file", mode=0o555, size=1, sha256="b" * 64, nlink=2),
        ManifestEntry(b"rescue/ls", "file", mode=0o555, size=1, sha256="b" * 64, nlink=2,
                      hardlink=b"rescue/cp"),
        ManifestEntry(b"sbin/ping", "file", mode=0o4555, size=1, sha256="c" * 64),
        ManifestEntry(b"etc/localtime", "link", link=b"/usr/share/zoneinfo/UTC"),
        ManifestEntry(b"odd name", "link", link=b"target with space"),
    ]
    stream = io.BytesIO()
    writer = ManifestWriter(stream)
    for entry in entries:
        writer.add(entry)
    text = stream.getvalue()
    assert text.startswith(b"#mtree v2.0\n")
    assert b"./sbin/ping type=file mode=4555 size=1 sha256digest=" in text
    assert b"./odd\\040name type=link link=target\\040with\\040space" in text
    assert list(parse_manifest(io.BytesIO(text), "m")) == entries
    import hashlib
    assert writer.hexdigest() == hashlib.sha256(text).hexdigest()


@pytest.mark.parametrize("text", [b"no header\n", b"#mtree v2.0\n#fruix-native-build-manifest 1\n"
                                  b"./x type=file mode=zz\n",
                                  b"#mtree v2.0\n#fruix-native-build-manifest 1\nx type=dir\n",
                                  b"#mtree v2.0\n#fruix-native-build-manifest 1\n. type=dir"])
def test_malformed_manifests(text: bytes) -> None:
    with pytest.raises(VerificationError):
        list(parse_manifest(io.BytesIO(text), "m"))
