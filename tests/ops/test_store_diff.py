"""``fruix store diff``: between runs, bundles and artifact objects, through manifests."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fruix_core.errors import ExitCode
from fruix_core.promotion.diff import DiffSide, diff_sides
from fruix_core.promotion.layout import MANIFEST_FILE, OBJECT_FILE
from fruix_core.schemas import validate_document

from .conftest import CHANGED_SOURCES, SampleRuns


def test_diff_between_two_runs_names_exactly_the_changed_files(sample_runs: SampleRuns):
    a, b = sample_runs.first["run_id"], sample_runs.second["run_id"]
    proc = sample_runs.cli("store", "diff", str(a), str(b), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    validate_document(doc)
    assert doc["a"]["run_id"] == a and doc["b"]["path"] == sample_runs.second["bundle"]
    changed = {(c["artifact"], c["path"], c["change"], tuple(c["aspects"]))
               for c in doc["changes"]}
    assert changed == {("world", path, "changed", ("content",))
                       for path in CHANGED_SOURCES.values()}
    # The kernel, headers and loader were built from unchanged sources: different objects
    # (the source signature is part of artifact identity) with identical manifests.
    assert doc["summary"]["identical_artifacts"] == ["kernel", "headers", "bootloader"]
    assert doc["a"]["objects"]["kernel"] != doc["b"]["objects"]["kernel"]
    motd = next(c for c in doc["changes"] if c["path"] == "./etc/motd")
    assert motd["size_b"] - motd["size_a"] == len("A changed message of the day.\n")
    assert doc["summary"]["changed"] == 2 and doc["summary"]["added"] == 0

    human = sample_runs.cli("store", "diff", str(a), "latest")
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert "~ world ./usr/bin/wc: content (" in human.stdout
    assert lines[-1].startswith("2 paths differ: 0 added")


def test_diff_of_bundles_and_of_artifact_objects_by_path_and_name(sample_runs: SampleRuns):
    bundle_a, bundle_b = sample_runs.first["bundle"], sample_runs.second["bundle"]
    world_a = Path(sample_runs.first["artifacts"]["world"])
    world_b = Path(sample_runs.second["artifacts"]["world"])
    by_path = sample_runs.cli("store", "diff", str(bundle_a), str(bundle_b), "--json")
    assert by_path.returncode == 0, by_path.stderr
    assert len(json.loads(by_path.stdout)["changes"]) == 2
    objects = sample_runs.cli("store", "diff", world_a.name, str(world_b), "--json")
    assert objects.returncode == 0, objects.stderr
    doc = json.loads(objects.stdout)
    validate_document(doc)
    assert doc["a"]["kind"] == "artifact"
    assert {c["path"] for c in doc["changes"]} == set(CHANGED_SOURCES.values())
    same = sample_runs.cli("store", "diff", str(world_a), str(world_a))
    assert same.returncode == 0 and same.stdout.strip().endswith("no differences")


def test_diff_refuses_what_it_cannot_compare(sample_runs: SampleRuns, tmp_path: Path):
    bundle = sample_runs.first["bundle"]
    world = sample_runs.first["artifacts"]["world"]
    cases = {
        ("no-such-run", "latest"): "no store object, store path or run",
        (str(bundle), str(world)): "cannot compare a bundle",
        (str(tmp_path / "missing"), "latest"): "no such store object or result root",
        (str(tmp_path), "latest"): "not a store object",
    }
    for (a, b), message in cases.items():
        proc = sample_runs.cli("store", "diff", a, b, "--json")
        assert proc.returncode == ExitCode.USAGE, (a, b, proc.stderr)
        doc = json.loads(proc.stdout)
        validate_document(doc)
        assert doc["ok"] is False and message in doc["error"] and message in proc.stderr
        assert "Traceback" not in proc.stderr


def test_a_run_without_a_bundle_is_named(sample_runs: SampleRuns):
    proc = sample_runs.cli("native-build", "run", "--no-promote", "--json")
    assert proc.returncode == 0, proc.stderr
    run_id = json.loads(proc.stdout)["run_id"]
    diff = sample_runs.cli("store", "diff", str(sample_runs.first["run_id"]), run_id)
    assert diff.returncode == ExitCode.USAGE
    assert f"run {run_id} has no bundle" in diff.stderr


def _object(store: Path, name: str, lines: list[str]) -> DiffSide:
    path = store / f"{name * 40}-fruix-native-world-15.0-STABLE-local"
    path.mkdir()
    (path / OBJECT_FILE).write_text("(fruix-native-build-object)\n")
    (path / MANIFEST_FILE).write_text("#mtree v2.0\n#fruix-native-build-manifest 1\n"
                                      + "".join(line + "\n" for line in lines))
    return DiffSide(name, "artifact", path, {"world": path})


def test_every_manifest_aspect_is_named(tmp_path: Path):
    # METALOG keywords (uname, gname, flags) as FreeBSD's install -M writes them
    # (mtree(5); usr.bin/xinstall/xinstall.c metadata_log), and a keyword unknown today.
    store = tmp_path / "store"
    store.mkdir()
    common = [". type=dir mode=0755", "./bin type=dir mode=0755"]
    a = _object(store, "a", common + [
        "./bin/su type=file uname=root gname=wheel mode=4555 size=10 sha256digest=aa",
        "./bin/ls type=file uname=root gname=wheel mode=0555 size=10 sha256digest=bb",
        "./bin/cc type=link link=clang",
        "./bin/gone type=file mode=0444 size=7 sha256digest=cc",
        "./bin/kind type=file mode=0555 size=1 sha256digest=dd",
        "./bin/x type=file mode=0555 size=1 sha256digest=ee newkey=1",
        "./bin/sp\\040ace type=file mode=0444 size=1 sha256digest=ff",
    ])
    b = _object(store, "b", common + [
        "./bin/su type=file uname=root gname=operator mode=4555 size=10 sha256digest=aa "
        "flags=schg",
        "./bin/ls type=file uname=root gname=wheel mode=0755 size=12 sha256digest=b2",
        "./bin/cc type=link link=clang17",
        "./bin/kind type=link link=x",
        "./bin/new type=file mode=0444 size=5 sha256digest=ee",
        "./bin/x type=file mode=0555 size=1 sha256digest=ee newkey=2",
        "./bin/sp\\040ace type=file mode=0444 size=1 sha256digest=ff",
    ])
    found = {c.path: c for c in diff_sides(a, b).changes}
    assert found["./bin/su"].aspects == ("flags", "owner")
    assert found["./bin/su"].details["gname"] == ("wheel", "operator")
    assert found["./bin/ls"].aspects == ("mode", "content")
    assert (found["./bin/ls"].size_a, found["./bin/ls"].size_b) == (10, 12)
    assert found["./bin/cc"].aspects == ("link",)
    assert "type" in found["./bin/kind"].aspects and "link" in found["./bin/kind"].aspects
    assert found["./bin/gone"].change == "removed" and found["./bin/gone"].size_a == 7
    assert found["./bin/new"].change == "added" and found["./bin/new"].size_b == 5
    assert found["./bin/x"].aspects == ("newkey",)
    assert "./bin/sp\\040ace" not in found
    assert len(found) == 7


def test_a_bundle_link_out_of_the_store_is_not_followed(sample_runs: SampleRuns,
                                                        tmp_path: Path):
    # A copy of a real bundle in another "store" whose world link points elsewhere.
    real = Path(str(sample_runs.first["bundle"]))
    store = tmp_path / "store"
    fake = store / real.name
    (fake / "artifacts").mkdir(parents=True)
    (fake / ".fruix-native-build-result.scm").write_bytes(
        (real / ".fruix-native-build-result.scm").read_bytes())
    os.symlink(sample_runs.first["artifacts"]["world"], fake / "artifacts" / "world")
    proc = sample_runs.cli("store", "diff", str(fake), str(real), "--store", str(store))
    assert proc.returncode == ExitCode.VERIFICATION, proc.stderr
    assert "not an object of the store" in proc.stderr and "not followed" in proc.stderr


def test_a_malformed_manifest_is_one_line(tmp_path: Path, sample_runs: SampleRuns):
    store = tmp_path / "store"
    store.mkdir()
    a = _object(store, "c", [". type=dir mode=0755"])
    b = _object(store, "d", ["garbage"])
    proc = sample_runs.cli("store", "diff", str(a.path), str(b.path))
    assert proc.returncode == ExitCode.VERIFICATION
    assert "malformed manifest path" in proc.stderr and "Traceback" not in proc.stderr


def test_verify_of_a_mistyped_store_path_is_exit_2(sample_runs: SampleRuns, tmp_path: Path):
    world = Path(str(sample_runs.first["artifacts"]["world"]))
    typo = world.name[:-1]
    proc = sample_runs.cli("store", "verify", typo)
    assert proc.returncode == ExitCode.USAGE and f"{typo}: no such store object" in proc.stderr
    proc = sample_runs.cli("store", "verify", str(tmp_path / "nothing"))
    assert proc.returncode == ExitCode.USAGE and "no such store object" in proc.stderr
    proc = sample_runs.cli("store", "verify", "--store", str(tmp_path / "no-store"))
    assert proc.returncode == ExitCode.USAGE and "no such store directory" in proc.stderr
    ok = sample_runs.cli("store", "verify", world.name)
    assert ok.returncode == ExitCode.OK, ok.stdout + ok.stderr
