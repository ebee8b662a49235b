"""promote(): objects, bundle, idempotence, dedup, canonical form, store failures."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from fruix_core.errors import StoreError, UsageError
from fruix_core.model import ARTIFACT_KINDS
from fruix_core.promotion import promote, tree_signature, verify
from fruix_core.promotion.layout import MANIFEST_FILE, OBJECT_FILE, REFERENCES_FILE, RESULT_FILE
from fruix_core.promotion.storeio import ENOSPC_SEAM

from .conftest import build_result_root, sample_promotion


def _store_entries(store: Path) -> list[str]:
    return sorted(n for n in os.listdir(store) if not n.startswith("."))


def test_promote_publishes_four_artifacts_and_a_bundle(result_root: Path, store: Path) -> None:
    outcome = promote(result_root, store)
    assert set(outcome.artifacts) == set(ARTIFACT_KINDS)
    assert len(outcome.published) == 5 and outcome.reused == ()
    for kind, path in outcome.artifacts.items():
        assert path.parent == store.absolute()
        assert path.name.endswith(f"-fruix-native-{kind}-15.0-STABLE-local")
        assert len(path.name.split("-")[0]) == 40
        for own in (OBJECT_FILE, MANIFEST_FILE, REFERENCES_FILE):
            assert (path / own).is_file()
        assert outcome.tree_signatures[kind] == tree_signature(result_root / "artifacts" / kind)
    bundle = outcome.bundle
    assert bundle.name.endswith("-fruix-native-build-result-15.0-STABLE-local")
    assert (bundle / RESULT_FILE).is_file()
    for kind, path in outcome.artifacts.items():
        assert os.readlink(bundle / "artifacts" / kind) == str(path)
    assert (bundle / REFERENCES_FILE).read_text().splitlines() == sorted(
        str(p) for p in outcome.artifacts.values())
    assert verify(store).ok
    assert not [n for n in os.listdir(store) if n.startswith(".tmp-")]


def test_store_objects_are_canonical(result_root: Path, store: Path) -> None:
    world = promote(result_root, store).artifacts["world"]
    for top, dirs, files in os.walk(world):
        for name in dirs:
            st = os.lstat(os.path.join(top, name))
            assert stat.S_IMODE(st.st_mode) == 0o555 and st.st_mtime == 1
        for name in files:
            st = os.lstat(os.path.join(top, name))
            if stat.S_ISLNK(st.st_mode):
                continue
            assert stat.S_IMODE(st.st_mode) in (0o444, 0o555), name
            assert st.st_mtime == 1
    assert stat.S_IMODE(os.stat(world / "sbin/ping").st_mode) == 0o555
    manifest = (world / MANIFEST_FILE).read_text()
    assert "./sbin/ping type=file mode=4555" in manifest
    assert "./usr/bin/wall type=file mode=2555" in manifest
    assert "./etc/master.passwd type=file mode=0600" in manifest
    assert "./tmp type=dir mode=1777" in manifest
    assert os.readlink(world / "etc/localtime") == "/usr/share/zoneinfo/UTC"


def test_hard_link_groups_are_kept(result_root: Path, store: Path) -> None:
    world = promote(result_root, store).artifacts["world"]
    inodes = {os.stat(world / "rescue" / n).st_ino for n in ("rescue", "ls", "cp", "mv")}
    assert len(inodes) == 1
    assert "hardlink=./rescue/cp" in (world / MANIFEST_FILE).read_text()


def test_promoting_again_copies_nothing(result_root: Path, store: Path) -> None:
    first = promote(result_root, store)
    inode = os.stat(first.artifacts["world"] / "bin/sh").st_ino
    again = promote(result_root, store)
    assert (again.bundle, again.artifacts) == (first.bundle, first.artifacts)
    assert again.published == () and len(again.reused) == 5
    assert again.bytes_written == 0
    assert os.stat(again.artifacts["world"] / "bin/sh").st_ino == inode
    assert not [n for n in os.listdir(store) if n.startswith(".tmp-")]


def test_identical_files_are_stored_once(tmp_path: Path, store: Path) -> None:
    first = promote(build_result_root(tmp_path / "r1"), store)
    rebuilt = build_result_root(tmp_path / "r2", salt=b"-rebuilt")
    second = promote(rebuilt, store)
    world1, world2 = first.artifacts["world"], second.artifacts["world"]
    assert world1 != world2
    # Unchanged content: the same inode in both objects; changed content: new file.
    assert os.stat(world1 / "etc/rc.conf").st_ino == os.stat(world2 / "etc/rc.conf").st_ino
    assert os.stat(world1 / "bin/sh").st_ino != os.stat(world2 / "bin/sh").st_ino
    assert second.bytes_written < first.bytes_written
    assert second.artifacts["headers"] == first.artifacts["headers"]
    assert verify(store).ok


def test_run_id_changes_the_bundle_not_the_artifacts(tmp_path: Path, store: Path) -> None:
    first = promote(build_result_root(tmp_path / "r1"), store)
    other = build_result_root(tmp_path / "r2",
                              promotion=sample_promotion(run_id="run-0002",
                                                         guest_host_name="elsewhere"))
    second = promote(other, store)
    assert second.artifacts == first.artifacts
    assert second.bundle != first.bundle
    assert second.published == (second.bundle,)


def test_dry_run_writes_nothing(result_root: Path, store: Path) -> None:
    planned = promote(result_root, store, dry_run=True)
    assert not store.exists()
    assert planned.dry_run and len(planned.published) == 5
    real = promote(result_root, store)
    assert (real.bundle, real.artifacts) == (planned.bundle, planned.artifacts)
    before = sorted(os.listdir(store))
    again = promote(result_root, store, dry_run=True)
    assert len(again.reused) == 5 and sorted(os.listdir(store)) == before


def test_log_events_per_object(result_root: Path, store: Path) -> None:
    with capture_logs() as logs:
        promote(result_root, store)
        promote(result_root, store)
    events = [e["event"] for e in logs if e["event"].startswith("store.object.")]
    assert events == ["store.object.published"] * 5 + ["store.object.reused"] * 5


def test_progress_reports_files_and_bytes(result_root: Path, store: Path) -> None:
    seen = []
    outcome = promote(result_root, store, progress=lambda p: seen.append(
        (p.kind, p.files_done, p.bytes_done, p.files_total, p.bytes_total)))
    assert seen and seen[-1][1] == seen[-1][3] == outcome.files
    assert seen[-1][2] == seen[-1][4] == outcome.bytes


def test_stale_temporaries_of_dead_owners_are_removed(result_root: Path, store: Path) -> None:
    promote(result_root, store)
    stale = store / ".tmp-999999deadbeef-world"
    (stale / "bin").mkdir(parents=True)
    os.chmod(stale / "bin", 0o555)
    promote(result_root, store)
    assert not stale.exists()


def test_temporaries_of_live_owners_are_kept(result_root: Path, store: Path) -> None:
    promote(result_root, store)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
         "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
         str(store / ".locks/owner-4242cafe.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        busy = store / ".tmp-4242cafe-world"
        busy.mkdir()
        promote(result_root, store)
        assert busy.exists()
    finally:
        holder.kill()
        holder.wait()


def test_unknown_fsync_policy_is_a_usage_error(result_root: Path, store: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRUIX_STORE_FSYNC", "sometimes")
    with pytest.raises(UsageError, match="FRUIX_STORE_FSYNC"):
        promote(result_root, store)


@pytest.mark.parametrize("policy", ["syncfs", "each"])
def test_durable_policies_publish_the_same(result_root: Path, tmp_path: Path,
                                           policy: str) -> None:
    fast = promote(result_root, tmp_path / "fast", fsync="none")
    durable = promote(result_root, tmp_path / policy, fsync=policy)
    assert [p.name for p in durable.artifacts.values()] == [
        p.name for p in fast.artifacts.values()]


# -- the store cannot be written ------------------------------------------


def test_store_path_is_a_file(result_root: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    for store in (blocker, blocker / "store"):
        with pytest.raises(StoreError, match="cannot create store directory"):
            promote(result_root, store)
    assert blocker.read_text() == ""


def _mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True)
    return done.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True)


def test_read_only_store(result_root: Path, tmp_path: Path) -> None:
    mount = tmp_path / "ro"
    if not _mount_tmpfs(mount, "ro,size=1m"):
        pytest.skip("cannot mount a read-only tmpfs here (covered by test_store_path_is_a_file)")
    try:
        with pytest.raises(StoreError, match="not writable|Read-only"):
            promote(result_root, mount / "store")
        assert os.listdir(mount) == []
    finally:
        _umount(mount)


def _big_root(tmp_path: Path) -> Path:
    def extra(root: Path) -> None:
        (root / "artifacts/world/usr/lib").mkdir(parents=True)
        (root / "artifacts/world/usr/lib/libbig.so").write_bytes(os.urandom(3 << 20))
    return build_result_root(tmp_path / "big", extra=extra)


def test_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _big_root(tmp_path)
    mount = tmp_path / "small"
    mounted = _mount_tmpfs(mount, "size=1m")
    try:
        if not mounted:
            # No mountable file system: inject ENOSPC at the write layer (documented seam).
            monkeypatch.setattr("fruix_core.promotion.storeio._writes", 0)
            monkeypatch.setenv(ENOSPC_SEAM, "5")
        store = mount / "store"
        with pytest.raises(StoreError, match="No space left on device"):
            promote(root, store)
        assert _store_entries(store) == []
        assert not [n for n in os.listdir(store) if n.startswith(".tmp-")]
    finally:
        if mounted:
            _umount(mount)


def test_full_disk_through_the_seam(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = build_result_root(tmp_path / "root")
    monkeypatch.setattr("fruix_core.promotion.storeio._writes", 0)
    monkeypatch.setenv(ENOSPC_SEAM, "3")
    store = tmp_path / "store"
    with pytest.raises(StoreError, match=r"No space left on device \(ENOSPC\)"):
        promote(root, store)
    assert _store_entries(store) == []
    monkeypatch.delenv(ENOSPC_SEAM)
    assert len(promote(root, store).published) == 5


def test_lock_files_of_dead_owners_are_removed(result_root: Path, store: Path) -> None:
    promote(result_root, store)
    dead = store / ".locks/owner-1deadbeef.lock"
    dead.write_text("")
    promote(result_root, store)
    assert not dead.exists()
    assert [n for n in os.listdir(store / ".locks") if n.startswith("owner-")] == []
