"""Commands run with small or read-only file systems mounted: real disk-full and EROFS cases.

The mounts live in a private mount namespace (``unshare -m``; as a non-root
user a user namespace too), so nothing outside the command sees them.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path

__all__ = ["with_tmpfs"]


def with_tmpfs(argv: Sequence[str], mounts: Sequence[tuple[Path, str]]) -> list[str]:
    """``argv`` run with a tmpfs mounted on each path (options such as ``"ro"``, ``"size=1m"``).

    Each path must exist. The command fails (exit 97) when a mount is refused.
    """
    from fruix_core.testkit import require_tool

    unshare = require_tool("unshare", "util-linux")
    mount = shutil.which("mount") or "/bin/mount"
    steps = [f"{shlex.quote(mount)} -t tmpfs -o {shlex.quote(options)} fruix-test "
             f"{shlex.quote(str(path))} || exit 97" for path, options in mounts]
    script = "; ".join([*steps, 'exec "$@"'])
    flags = ["-m"] if os.geteuid() == 0 else ["-r", "-m"]
    return [unshare, *flags, "--", "/bin/sh", "-c", script, "fruix-tmpfs", *argv]
