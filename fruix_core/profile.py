"""The FreeBSD build profile: five phases as data, shared by every executor.

``buildworld`` and ``buildkernel`` compile under ``MAKEOBJDIRPREFIX`` inside the
build root; ``installworld`` and ``distribution`` install into the world stage;
``installkernel`` into the kernel stage. :func:`artifact_split` then says how
the stages become the four artifacts. The bundled sample base offers the same
make interface, so the same profile builds both.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from fruix_core.model import Phase

__all__ = [
    "KEY_FILES",
    "PHASES",
    "BuildPaths",
    "artifact_split",
    "phase_by_name",
    "phase_command",
    "phases_from",
]

PHASES: tuple[Phase, ...] = (
    Phase("buildworld", "buildworld",
          environment=(("MAKEOBJDIRPREFIX", "{objdir}"),), parallel=True),
    Phase("buildkernel", "buildkernel", variables=(("KERNCONF", "{kernconf}"),),
          environment=(("MAKEOBJDIRPREFIX", "{objdir}"),), parallel=True),
    Phase("installworld", "installworld", variables=(("DESTDIR", "{stage_world}"),),
          environment=(("MAKEOBJDIRPREFIX", "{objdir}"),)),
    Phase("distribution", "distribution", variables=(("DESTDIR", "{stage_world}"),),
          environment=(("MAKEOBJDIRPREFIX", "{objdir}"),)),
    Phase("installkernel", "installkernel",
          variables=(("KERNCONF", "{kernconf}"), ("DESTDIR", "{stage_kernel}")),
          environment=(("MAKEOBJDIRPREFIX", "{objdir}"),)),
)

#: Files whose sha256 each artifact records; the first must exist.
KEY_FILES: dict[str, tuple[str, ...]] = {
    "world": ("bin/sh",),
    "kernel": ("boot/kernel/kernel",),
    "headers": (),
    "bootloader": ("boot/loader",),
}


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
                  kernconf: str) -> tuple[list[str], dict[str, str]]:
    """The argv and extra environment that run ``phase``.

    :returns: ``(argv, environment additions)``; argv starts with the words of
        ``make`` (so ``"bmake -m /usr/share/mk"`` works).
    """
    values = {"objdir": paths.objdir, "stage_world": paths.stage_world,
              "stage_kernel": paths.stage_kernel, "kernconf": kernconf}
    argv = make.split()
    if phase.parallel and jobs > 0:
        argv.append(f"-j{jobs}")
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
