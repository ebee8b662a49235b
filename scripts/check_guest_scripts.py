"""Run ``shellcheck -s sh`` on every script that runs in a guest (the lint tox env).

Guests are FreeBSD systems: what runs there is POSIX sh. That is the
self-hosted helper, the sample base's ``tools/install.sh`` (run by the build
on the build machine) and every script the host-initiated executor sends.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATIC = (
    ROOT / "plugins/guest-self-hosted/fruix_guest_self_hosted/fruix-self-hosted-native-build",
    ROOT / "fruix_core/sample_base/tools/install.sh",
)


def generated_scripts(work: Path) -> dict[str, str]:
    """The host-initiated executor's scripts, generated for sample paths."""
    from fruix_host_initiated import scripts

    from fruix_core.profile import BuildPaths

    paths = BuildPaths(str(work / "build"))
    return {
        "probe": scripts.probe_script(str(work), "bmake", "/sbin:/bin:/usr/sbin:/usr/bin"),
        "prepare": scripts.prepare_script(str(work / "src"), str(work / "result"),
                                          str(work / "build"), "running", fresh=True),
        "staging": scripts.staging_script(paths, str(work / "result")),
        "latest": scripts.swap_latest_script(str(work / "results"), "run-1"),
        "detached-start": scripts.detached_start_script("echo x; exit 3", str(work), "p"),
        "follow": scripts.follow_script(str(work), "p", 10),
        "detached-stop": scripts.detached_stop_script(str(work), "p"),
    }


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="fruix-shellcheck-") as tmp:
        work = Path(tmp)
        files = [str(p) for p in STATIC]
        for name, text in generated_scripts(work).items():
            path = work / f"{name}.sh"
            path.write_text("#!/bin/sh\n" + text + "\n", encoding="utf-8")
            files.append(str(path))
        result = subprocess.run(["shellcheck", "-s", "sh", *files], check=False)
        return result.returncode


if __name__ == "__main__":
    sys.exit(main())
