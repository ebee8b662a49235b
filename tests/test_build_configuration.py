"""Pinned build configuration and -j outside identity, through the real CLI and local builds.

FreeBSD reads ``SRCCONF`` (default ``/etc/src.conf``, ``share/mk/src.sys.mk``),
``__MAKE_CONF`` (default ``/etc/make.conf``, ``share/mk/sys.mk``) and
``SRC_ENV_CONF`` (default ``/etc/src-env.conf``, ``share/mk/src.sys.env.mk``);
left alone they follow the build machine, so every Fruix build pins them
(``/dev/null`` unless the operator declares files).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from fruix_core.errors import ExitCode
from fruix_core.promotion.schema import read_promotion
from fruix_core.testkit import Workspace, copy_sample_source, make_tree_writable, run_cli


def _run(base: Path, source: Path, **settings) -> dict:
    base.mkdir(parents=True)
    ws = Workspace(base)
    conf = ws.write_config(source=source, **settings)
    proc = run_cli("native-build", "run", "--config", str(conf), "--json", cwd=base)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _names(doc: dict) -> dict[str, str]:
    return {kind: Path(path).name for kind, path in doc["artifacts"].items()}


def test_jobs_do_not_change_artifact_names(tmp_path: Path) -> None:
    source = copy_sample_source(tmp_path / "src")
    one = _run(tmp_path / "one", source, jobs=1)
    two = _run(tmp_path / "two", source, jobs=2)
    assert _names(one) == _names(two)
    assert Path(one["bundle"]).name != Path(two["bundle"]).name  # provenance differs
    for doc, jobs in ((one, 1), (two, 2)):
        promotion = read_promotion(Path(doc["result_root"]) / "promotion.scm")
        assert promotion.policy.jobs == jobs
        assert promotion.policy.make_configuration == (
            ("SRCCONF", "/dev/null"), ("__MAKE_CONF", "/dev/null"), ("SRC_ENV_CONF", "/dev/null"))
        bundle = (Path(doc["bundle"]) / ".fruix-native-build-result.scm").read_text()
        assert f"(jobs {jobs})" in bundle
    make_tree_writable(tmp_path)


def test_declared_src_conf_is_read_recorded_and_in_identity(tmp_path: Path) -> None:
    source = copy_sample_source(tmp_path / "src")
    conf = tmp_path / "src.conf"
    conf.write_text("WITHOUT_WC=yes\n")
    plain = _run(tmp_path / "plain", source, jobs=2)
    declared = _run(tmp_path / "declared", source, jobs=2, srcconf=str(conf))
    world = Path(declared["artifacts"]["world"])
    assert not (world / "usr/bin/wc").exists() and (world / "usr/bin/cksum").exists()
    promotion = read_promotion(Path(declared["result_root"]) / "promotion.scm")
    digest = "sha256:" + hashlib.sha256(b"WITHOUT_WC=yes\n").hexdigest()
    assert dict(promotion.policy.make_configuration)["SRCCONF"] == digest
    assert _names(plain)["world"] != _names(declared)["world"]
    # The kernel does not read the option, but its policy names the file: another object.
    assert _names(plain)["kernel"] != _names(declared)["kernel"]
    metadata = (Path(declared["result_root"]) / "metadata").read_text()
    assert f"pinned_srcconf={digest}" in metadata
    make_tree_writable(tmp_path)


def test_an_unreadable_declared_file_names_the_key(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir(parents=True)
    conf = ws.write_config(make_conf=str(tmp_path / "missing.conf"))
    proc = run_cli("native-build", "run", "--config", str(conf), "--json", cwd=ws.root)
    assert proc.returncode == ExitCode.USAGE
    assert "key 'build.make_conf'" in proc.stderr and "missing.conf" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_metadata_carries_the_seed_helpers_keys(tmp_path: Path) -> None:
    source = copy_sample_source(tmp_path / "src")
    doc = _run(tmp_path / "run", source, jobs=2, promote=False)
    root = Path(doc["result_root"])
    metadata = dict(line.split("=", 1) for line in (root / "metadata").read_text().splitlines())
    assert metadata["helper_version"] == metadata["executor_version"]
    assert metadata["status_value"] == "ok"
    assert metadata["latest_link"] == str(root.parent / "latest")
    assert metadata["latest_target"] == doc["run_id"]
    assert int(metadata["result_root_size"]) == sum(
        int(v) for k, v in metadata.items() if k.startswith("size_"))
    assert int(metadata["build_root_size"]) >= 0
    # The seed's sha_param: the headers key file.
    param = root / "artifacts/headers/usr/include/sys/param.h"
    assert metadata["sha256_headers_usr_include_sys_param.h"] == \
        hashlib.sha256(param.read_bytes()).hexdigest()
    make_tree_writable(tmp_path)
