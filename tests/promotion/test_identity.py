"""Identity: stable names; every identity field matters; provenance does not."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from fruix_core.model import BaseMetadata, BuildPolicy, SourceStore
from fruix_core.promotion import promote
from fruix_core.promotion.identity import (
    artifact_identity,
    artifact_name,
    bundle_identity,
    bundle_name,
    identity_hash,
)
from fruix_core.promotion.sexp import dumps_compact

from .conftest import build_result_root, sample_promotion

SIG = "1" * 64
MAN = "2" * 64


def _name(promotion, kind="world", tree=SIG, manifest=MAN) -> str:
    document = artifact_identity(promotion, kind, tree, manifest)
    return artifact_name(document, kind, promotion.base.version, promotion.executor)


def test_name_shape_and_stability() -> None:
    name = _name(sample_promotion())
    assert name == _name(sample_promotion())
    digest, rest = name.split("-", 1)
    assert len(digest) == 40 and int(digest, 16) >= 0
    assert rest == "fruix-native-world-15.0-STABLE-local"


def test_identity_hash_is_sha256_of_the_compact_form() -> None:
    import hashlib
    document = artifact_identity(sample_promotion(), "world", SIG, MAN)
    text = dumps_compact(document)
    assert text.startswith("(fruix-native-artifact-identity (format-version 1) (kind \"world\")")
    assert identity_hash(document) == hashlib.sha256(text.encode()).hexdigest()[:40]


POLICY = BuildPolicy(phases=("buildworld",), jobs=2, environment_policy="sanitised-v1")


@pytest.mark.parametrize("change", [
    {"base": BaseMetadata(name="fruixbsd")},
    {"base": BaseMetadata(version="14.3-RELEASE")},
    {"base": BaseMetadata(arch="arm64")},
    {"base": BaseMetadata(kernconf="MINIMAL")},
    {"source": SourceStore(path="/frx/store/aaaa-freebsd-source", signature="sha256:" + "cd" * 32)},
    {"policy": replace(POLICY, phases=("buildworld", "installworld"))},
    {"policy": replace(POLICY, environment_policy="inherited")},
    {"policy": replace(POLICY, make="bmake")},
    {"policy": replace(POLICY, make_configuration=(("SRCCONF", "sha256:" + "0" * 64),))},
    {"executor": "host-initiated"},
    {"executor_version": "0.2.0"},
])
def test_each_identity_field_changes_the_name(change) -> None:
    base = sample_promotion(policy=POLICY)
    changed = replace(base, **change)
    assert _name(changed) != _name(base)


def test_kind_tree_and_manifest_change_the_name() -> None:
    promotion = sample_promotion()
    names = {_name(promotion), _name(promotion, kind="kernel"),
             _name(promotion, tree="3" * 64), _name(promotion, manifest="4" * 64)}
    assert len(names) == 4


@pytest.mark.parametrize("change", [
    {"policy": replace(POLICY, jobs=3)},
    {"run_id": "another-run"},
    {"guest_host_name": "other-host"},
    {"closure_path": "/frx/store/dddd-other-closure"},
    {"development_profile_path": "/frx/store/eeee-profile"},
    {"source": SourceStore(path="/elsewhere/source", signature="sha256:" + "ab" * 32)},
])
def test_provenance_does_not_change_artifact_names(change) -> None:
    # -j belongs to the build machine: the same source at -j1 and -j8 is one object.
    base = sample_promotion(policy=POLICY)
    changed = replace(base, **change)
    assert _name(changed) == _name(base)
    paths = {"world": "/s/a-w"}
    if "source" not in change:
        assert bundle_name(bundle_identity(changed, paths), "15.0-STABLE", "local") != \
            bundle_name(bundle_identity(base, paths), "15.0-STABLE", "local")


def test_result_root_path_and_timestamps_do_not_matter(tmp_path: Path) -> None:
    first = promote(build_result_root(tmp_path / "a"), tmp_path / "s1")
    second_root = build_result_root(tmp_path / "somewhere/else")
    for path in second_root.rglob("*"):
        if not path.is_symlink():
            import os
            os.utime(path, (12345, 12345))
    second = promote(second_root, tmp_path / "s2")
    assert [p.name for p in first.artifacts.values()] == [
        p.name for p in second.artifacts.values()]


def test_content_changes_the_name(tmp_path: Path) -> None:
    first = promote(build_result_root(tmp_path / "a"), tmp_path / "s")
    second = promote(build_result_root(tmp_path / "b", salt=b"!"), tmp_path / "s")
    assert first.artifacts["world"] != second.artifacts["world"]
    assert first.artifacts["headers"] == second.artifacts["headers"]


def test_setuid_bit_changes_the_name_through_the_manifest(tmp_path: Path) -> None:
    import os
    plain_root = build_result_root(tmp_path / "a")
    os.chmod(plain_root / "artifacts/world/sbin/ping", 0o555)
    plain = promote(plain_root, tmp_path / "s")
    setuid = promote(build_result_root(tmp_path / "b"), tmp_path / "s")
    assert plain.tree_signatures["world"] == setuid.tree_signatures["world"]
    assert plain.artifacts["world"] != setuid.artifacts["world"]
