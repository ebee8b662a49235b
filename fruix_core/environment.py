"""The sanitised build environment: one function, used by every executor.

Base builds never run in a developer's shell environment. Leaking ``MAKEFLAGS``,
``CC``, ``CFLAGS`` and friends into ``buildworld`` once broke the LLVM
bootstrap (a missing ``llvm/Config/abi-breaking.h``), so the environment is
rebuilt from an allow-list instead of being filtered: ``PATH`` is reset to the
base paths, a few harmless identity variables are kept, everything else —
in particular the variables in :data:`REMOVED` and any ``FRUIX_*`` — is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "BASE_PATH",
    "ENVIRONMENT_POLICY",
    "KEPT",
    "REMOVED",
    "policy_description",
    "sanitised_environment",
]

#: Name recorded in metadata and promotion.scm; bump it when the rules change.
#: v2: SRCCONF, __MAKE_CONF and SRC_ENV_CONF are always pinned by the build
#: profile (``/dev/null`` unless declared), installs run with ``-DNO_ROOT``.
ENVIRONMENT_POLICY = "sanitised-v2"

#: PATH of every build: the base system's directories only.
BASE_PATH = "/sbin:/bin:/usr/sbin:/usr/bin"

#: Variables copied from the caller's environment when present.
KEPT: tuple[str, ...] = ("HOME", "USER", "LOGNAME", "TMPDIR")

#: Variables known to break base builds; never passed (documented, and asserted in tests).
REMOVED: tuple[str, ...] = (
    "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOBJDIR", "MAKESYSPATH", "__MKLVL__",
    "CC", "CXX", "CPP", "AR", "RANLIB", "NM", "LD", "AS", "OBJCOPY", "STRIP", "SIZE",
    "CPPFLAGS", "CFLAGS", "CXXFLAGS", "LDFLAGS", "LIBS", "LD_LIBRARY_PATH", "LD_PRELOAD",
    "SRCCONF", "SRC_ENV_CONF", "__MAKE_CONF", "CROSS_TOOLCHAIN", "XCC", "XCXX",
    "PYTHONPATH", "PYTHONHOME",
)

#: Fixed values every build gets (locale and time zone affect tool output).
FIXED: dict[str, str] = {"LC_ALL": "C", "LANG": "C", "TZ": "UTC"}


def sanitised_environment(current: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a base build runs in, derived from ``current``.

    :param current: the caller's environment (``os.environ`` when ``None``);
        only the names in :data:`KEPT` are read from it.
    :returns: a new dict: ``PATH`` = :data:`BASE_PATH`, :data:`FIXED`, and the
        kept variables.
    """
    import os

    source = os.environ if current is None else current
    env = {name: source[name] for name in KEPT if name in source and name not in REMOVED}
    env.update(FIXED)
    env["PATH"] = BASE_PATH
    return env


def policy_description() -> dict[str, str]:
    """What the metadata records about the policy."""
    return {
        "environment_policy": ENVIRONMENT_POLICY,
        "environment_path": BASE_PATH,
        "environment_kept": ",".join(KEPT),
        "environment_pinned": "SRCCONF,__MAKE_CONF,SRC_ENV_CONF",
    }
