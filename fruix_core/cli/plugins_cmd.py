"""``fruix executors list`` and ``fruix executors check NAME``."""

from __future__ import annotations

from pathlib import Path

from fruix_core.cli.jsonout import emit
from fruix_core.errors import ExitCode
from fruix_core.plugins import discover

__all__ = ["check_command", "list_command"]


def list_command(*, as_json: bool) -> int:
    """Print installed plugins; broken or invalid ones are reported with why, not fatal."""
    infos = discover()
    if as_json:
        emit("fruix.plugin-list/1", {"plugins": [info.as_dict() for info in infos]})
        return int(ExitCode.OK)
    if not infos:
        print("no executors or guest providers installed")
        return int(ExitCode.OK)
    width = max(len(i.name) for i in infos)
    for info in infos:
        if info.error:
            print(f"{info.name:<{width}}  {info.kind:<14}  BROKEN: {info.error}")
        else:
            print(f"{info.name:<{width}}  {info.kind:<14}  {info.distribution} {info.version}"
                  f"  (plugin API {info.api_version})  {info.description}")
    return int(ExitCode.OK)


def _test_guest_base(path: Path) -> Path:
    """The conformance guest's base: FreeBSD-shaped (sh, bsdtar, bmake, tcsh; no Python),
    with the shipped in-guest helper in its overlay's ``/usr/local/bin``, as a Fruix
    guest with the development overlay has it."""
    from fruix_core.cli.build_cmd import HELPER_SCRIPT, shipped_helper
    from fruix_core.testkit.guest import make_base_system

    helper = shipped_helper()
    return make_base_system(path, extra={HELPER_SCRIPT: helper} if helper else None)


def check_command(name: str, *, config_file: str | None, as_json: bool) -> int:
    """Run the conformance suite for executor ``name``; one line per check.

    The executor's own ``[executors.NAME]`` table is taken from the config
    file when there is one (a helper's path, for instance). Exit 0 only when
    every check passed, 1 otherwise.
    """
    import tempfile

    from fruix_core.config import load_config
    from fruix_core.testkit.conformance import all_passed, iter_checks

    settings = load_config(config_file).executor_settings(name)
    results = []
    with tempfile.TemporaryDirectory(prefix="fruix-executors-check-") as tmp:
        base_system = _test_guest_base(Path(tmp) / "base-system")
        for result in iter_checks(name, Path(tmp) / "lab", settings, base_system=base_system):
            results.append(result)
            if not as_json:
                print(result.line(), flush=True)
    ok = all_passed(results)
    if as_json:
        emit("fruix.executor-check/1", {"executor": name, "checks": [
            {"name": r.name, "ok": r.ok, "detail": r.detail} for r in results]}, ok=ok)
    else:
        passed = sum(r.ok for r in results)
        print(f"{name}: {passed}/{len(results)} checks passed")
    return int(ExitCode.OK) if ok else int(ExitCode.BUILD_FAILED)
