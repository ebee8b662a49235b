"""The FreeBSD build profile: five phases as data, shared by every executor.

``buildworld`` and ``buildkernel`` compile under ``MAKEOBJDIRPREFIX`` inside the
build root; ``installworld`` and ``distribution`` install into the world stage;
``installkernel`` into the kernel stage. :func:`artifact_split` then says how
the stages become the four artifacts. The bundled sample base offers the same
make interface, so the same profile builds both.

The install phases run unprivileged, as FreeBSD's release builds do
(``Makefile.inc1``: ``-DNO_ROOT`` makes install ``-U -M ${METALOG}``, and
``DB_FROM_SRC`` resolves owners in the source tree's ``etc``): nothing needs
root, and the owners, groups, modes and file flags a deployable world needs
are written to one METALOG per stage (``stage/world.METALOG``,
``stage/kernel.METALOG``) instead of being applied. Every phase has
``SRCCONF``, ``__MAKE_CONF`` and ``SRC_ENV_CONF`` pinned in its environment
(:class:`PinnedConfiguration`), so the build machine's ``/etc/src.conf``,
``/etc/make.conf`` and ``/etc/src-env.conf`` never apply.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fruix_core.errors import ConfigError
from fruix_core.model import Phase

__all__ = [
    "KEY_FILES",
    "PHASES",
    "BuildPaths",
    "PINNED_VARIABLES",
    "PinnedConfiguration",
    "artifact_split",
    "make_configuration_policy",
    "pinned_configuration",
    "read_make_configuration",
    "phase_by_name",
    "phase_command",
    "phases_from",
]

#: The make configuration files every phase pins, by environment variable:
#: (variable, what FreeBSD reads when it is unset).
PINNED_VARIABLES: tuple[tuple[str, str], ...] = (
    ("SRCCONF", "/etc/src.conf"),
    ("__MAKE_CONF", "/etc/make.conf"),
    ("SRC_ENV_CONF", "/etc/src-env.conf"),
)

_CONF_ENV = (("SRCCONF", "{srcconf}"), ("__MAKE_CONF", "{make_conf}"),
             ("SRC_ENV_CONF", "{src_env_conf}"))
_BUILD_ENV = (("MAKEOBJDIRPREFIX", "{objdir}"), *_CONF_ENV)
#: Makefile.inc1: ``-DNO_ROOT`` installs without root privilege into a METALOG;
#: ``DB_FROM_SRC`` takes users and groups from the source tree, never the guest's.
_NO_ROOT = ("-DNO_ROOT",)

PHASES: tuple[Phase, ...] = (
    Phase("buildworld", "buildworld", environment=_BUILD_ENV, parallel=True),
    Phase("buildkernel", "buildkernel", variables=(("KERNCONF", "{kernconf}"),),
          environment=_BUILD_ENV, parallel=True),
    Phase("installworld", "installworld",
          variables=(("DESTDIR", "{stage_world}"), ("METALOG", "{metalog_world}"),
                     ("DB_FROM_SRC", "yes")),
          environment=_BUILD_ENV, flags=_NO_ROOT),
    Phase("distribution", "distribution",
          variables=(("DESTDIR", "{stage_world}"), ("METALOG", "{metalog_world}"),
                     ("DB_FROM_SRC", "yes")),
          environment=_BUILD_ENV, flags=_NO_ROOT),
    Phase("installkernel", "installkernel",
          variables=(("KERNCONF", "{kernconf}"), ("DESTDIR", "{stage_kernel}"),
                     ("METALOG", "{metalog_kernel}"), ("DB_FROM_SRC", "yes")),
          environment=_BUILD_ENV, flags=_NO_ROOT),
)

#: Files whose sha256 each artifact records; the first must exist.
KEY_FILES: dict[str, tuple[str, ...]] = {
    "world": ("bin/sh",),
    "kernel": ("boot/kernel/kernel",),
    "headers": ("usr/include/sys/param.h",),
    "bootloader": ("boot/loader",),
}


@dataclass(frozen=True, slots=True)
class PinnedConfiguration:
    """``SRCCONF``, ``__MAKE_CONF`` and ``SRC_ENV_CONF`` as paths on the build machine.

    ``/dev/null`` (the default) reads nothing; a declared file is read as it is,
    and its digest belongs in the build policy.
    """

    srcconf: str = "/dev/null"
    make_conf: str = "/dev/null"
    src_env_conf: str = "/dev/null"


#: Config keys of the declared files, and their names in ``<build root>/conf``.
_CONF_KEYS = {"SRCCONF": ("build.srcconf", "src.conf"),
              "__MAKE_CONF": ("build.make_conf", "make.conf"),
              "SRC_ENV_CONF": ("build.src_env_conf", "src-env.conf")}
#: Largest configuration file accepted (FreeBSD's are a few KiB).
MAX_CONF_BYTES = 1 << 20


def read_make_configuration(declared: Iterable[tuple[str, str]],
                            config_file: str | None = None) -> tuple[tuple[str, bytes], ...]:
    """Read the declared files once: ``((variable, content), ...)`` in pinning order.

    The content read here is what every executor installs on the build
    machine and what the build policy's digests describe.

    :raises ConfigError: naming the config key and file when one cannot be read.
    """
    paths = dict(declared)
    out = []
    for variable, _default in PINNED_VARIABLES:
        if variable not in paths:
            continue
        key, _name = _CONF_KEYS[variable]
        path = Path(paths[variable])
        try:
            with open(path, "rb") as stream:
                content = stream.read(MAX_CONF_BYTES + 1)
        except OSError as err:
            raise ConfigError(f"cannot read {path}: {err.strerror}", file=config_file,
                              key=key) from None
        if len(content) > MAX_CONF_BYTES:
            raise ConfigError(f"{path} is larger than {MAX_CONF_BYTES} bytes",
                              file=config_file, key=key)
        out.append((variable, content))
    return tuple(out)


def make_configuration_policy(contents: Iterable[tuple[str, bytes]]
                              ) -> tuple[tuple[str, str], ...]:
    """The build policy's record of the pins: ``/dev/null`` or ``sha256:<hex>`` for each."""
    given = dict(contents)
    return tuple((variable, "sha256:" + hashlib.sha256(given[variable]).hexdigest()
                  if variable in given else "/dev/null") for variable, _ in PINNED_VARIABLES)


def pinned_configuration(conf_dir: str, contents: Iterable[tuple[str, bytes]]
                         ) -> tuple[PinnedConfiguration, dict[str, bytes]]:
    """Where the pins point on the build machine, and the files to write there.

    :param conf_dir: a directory of the build root on the build machine.
    :returns: ``(pins, {path: content})``; undeclared variables stay ``/dev/null``.
    """
    files: dict[str, bytes] = {}
    paths: dict[str, str] = {}
    for variable, content in contents:
        path = posixpath.join(conf_dir, _CONF_KEYS[variable][1])
        files[path] = content
        paths[variable] = path
    pinned = PinnedConfiguration(srcconf=paths.get("SRCCONF", "/dev/null"),
                                 make_conf=paths.get("__MAKE_CONF", "/dev/null"),
                                 src_env_conf=paths.get("SRC_ENV_CONF", "/dev/null"))
    return pinned, files


@dataclass(frozen=True, slots=True)
class BuildPaths:
    """The heavy work area of one run on the build machine (POSIX paths)."""

    build_root: str

    @property
    def objdir(self) -> str:
        return posixpath.join(self.build_root, "obj")

    @property
    def stage_world(self) -> str:
        return posixpath.join(self.build_root, "stage", "world")

    @property
    def stage_kernel(self) -> str:
        return posixpath.join(self.build_root, "stage", "kernel")

    @property
    def conf_dir(self) -> str:
        """Where the declared make configuration files are written for the build."""
        return posixpath.join(self.build_root, "conf")

    @property
    def metalog_world(self) -> str:
        """The world stage's METALOG (installworld and distribution), beside the stage."""
        return posixpath.join(self.build_root, "stage", "world.METALOG")

    @property
    def metalog_kernel(self) -> str:
        """The kernel stage's METALOG (installkernel), beside the stage."""
        return posixpath.join(self.build_root, "stage", "kernel.METALOG")


def phase_by_name(name: str) -> Phase:
    for phase in PHASES:
        if phase.name == name:
            return phase
    raise KeyError(name)


def phases_from(name: str | None) -> tuple[Phase, ...]:
    """The phases to run, starting at ``name`` (all when ``None``)."""
    if name is None:
        return PHASES
    names = [p.name for p in PHASES]
    return PHASES[names.index(name):]


def phase_command(phase: Phase, *, make: str, jobs: int, paths: BuildPaths,
                  kernconf: str, pinned: PinnedConfiguration | None = None,
                  ) -> tuple[list[str], dict[str, str]]:
    """The argv and extra environment that run ``phase``.

    :param pinned: the make configuration files (``/dev/null`` each when ``None``).
    :returns: ``(argv, environment additions)``; argv starts with the words of
        ``make`` (so ``"bmake -m /usr/share/mk"`` works).
    """
    pinned = pinned or PinnedConfiguration()
    values = {"objdir": paths.objdir, "stage_world": paths.stage_world,
              "stage_kernel": paths.stage_kernel, "kernconf": kernconf,
              "metalog_world": paths.metalog_world, "metalog_kernel": paths.metalog_kernel,
              "srcconf": pinned.srcconf, "make_conf": pinned.make_conf,
              "src_env_conf": pinned.src_env_conf}
    argv = make.split()
    if phase.parallel and jobs > 0:
        argv.append(f"-j{jobs}")
    argv.extend(phase.flags)
    argv.append(phase.target)
    argv.extend(f"{k}={v.format(**values)}" for k, v in phase.variables)
    env = {k: v.format(**values) for k, v in phase.environment}
    return argv, env


@dataclass(frozen=True, slots=True)
class SplitRule:
    """How one artifact is cut out of a stage tree."""

    kind: str
    stage: str            # "world" or "kernel"
    subtree: str          # path inside the stage ('' = all of it)
    exclude: tuple[str, ...] = ()


def artifact_split() -> tuple[SplitRule, ...]:
    """World stage → world (minus headers and boot), headers, bootloader; kernel stage → kernel.

    Each subtree keeps its path inside the artifact (``headers/usr/include``,
    ``bootloader/boot/loader``), so an artifact is always rooted like ``/``.
    """
    return (
        SplitRule("world", "world", "", exclude=("usr/include", "boot")),
        SplitRule("kernel", "kernel", ""),
        SplitRule("headers", "world", "usr/include"),
        SplitRule("bootloader", "world", "boot"),
    )
