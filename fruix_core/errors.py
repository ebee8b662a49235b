"""The one error tree of Fruix native-build, and the exit codes it maps to.

::

    FruixError                      any failure the CLI reports as one clean message
    ├── UsageError                  exit 2: the operator asked for something invalid
    │   ├── ConfigError             a config file or key is wrong (names file and key)
    │   ├── UnknownPluginError      no installed executor / guest provider by that name
    │   ├── SourceTreeError         the source tree is missing or unreadable
    │   ├── RunNotFoundError        no result root for a run id
    │   └── PromotionInputError     a result root or its metadata is unfit to promote
    │       ├── MetadataError       promotion.scm (or another .scm) is malformed
    │       └── ProvenanceError     promotion.scm names another executor, version, run or root
    ├── BuildFailed                 exit 1: a build phase exited non-zero
    ├── InfrastructureError         exit 3: the machinery around the build failed
    │   ├── ToolMissingError        make or the C compiler is not there
    │   ├── PluginLoadError         a plugin could not be imported, validated or started
    │   ├── PluginContractError     a plugin's hook returned the wrong thing or crashed
    │   ├── TransportError          running a command or moving a tree failed
    │   │   ├── HostKeyError        the guest's host key is unknown or changed
    │   │   ├── AuthenticationError the guest refused our credentials
    │   │   └── ConnectionLostError the connection dropped mid-operation
    │   ├── GuestError              a guest provider could not acquire / release a guest
    │   ├── PhaseTimeout            a phase ran past its timeout
    │   ├── StoreError              the store cannot be written (permissions, disk full)
    │   └── WorkAreaError           a results or build directory cannot be written or is full
    ├── VerificationError           exit 4: a store object does not match its identity
    └── Cancelled                   exit 130: interrupted by Ctrl-C / SIGTERM

Every message is built by the exception itself so the CLI prints ``str(error)``
and nothing else; no traceback ever reaches the operator.
"""

from __future__ import annotations

import enum
from pathlib import Path

__all__ = [
    "AuthenticationError",
    "BuildFailed",
    "Cancelled",
    "ConfigError",
    "ConnectionLostError",
    "ExitCode",
    "FruixError",
    "GuestError",
    "HostKeyError",
    "InfrastructureError",
    "MetadataError",
    "PhaseTimeout",
    "PluginContractError",
    "PluginLoadError",
    "PromotionInputError",
    "ProvenanceError",
    "RunNotFoundError",
    "SourceTreeError",
    "StoreError",
    "ToolMissingError",
    "TransportError",
    "UnknownPluginError",
    "UsageError",
    "VerificationError",
    "WorkAreaError",
]


class ExitCode(enum.IntEnum):
    """Documented exit codes of ``fruix`` and ``fruix-self-hosted-native-build``."""

    OK = 0
    BUILD_FAILED = 1
    USAGE = 2
    INFRASTRUCTURE = 3
    VERIFICATION = 4
    INTERRUPTED = 130


class FruixError(Exception):
    """Base of every error the CLI reports as one clean message.

    The runner fills in ``run_id``, ``result_root`` and ``stage`` (the stage
    that failed) when the error ends a run, so ``--json`` can report them.
    """

    exit_code: ExitCode = ExitCode.INFRASTRUCTURE
    run_id: str | None = None
    result_root: str | None = None
    stage: str | None = None


class UsageError(FruixError):
    """The operator asked for something invalid."""

    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    """A config file or one of its keys is invalid."""

    def __init__(self, message: str, *, file: str | Path | None = None, key: str | None = None):
        self.file = str(file) if file is not None else None
        self.key = key
        where = []
        if self.file:
            where.append(self.file)
        if key:
            where.append(f"key '{key}'")
        prefix = ": ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class UnknownPluginError(UsageError):
    """No installed plugin has the requested name."""

    def __init__(self, kind: str, name: str, installed: list[str]):
        self.kind = kind
        self.name = name
        self.installed = sorted(installed)
        listing = ", ".join(self.installed) if self.installed else "none"
        super().__init__(f"unknown {kind} '{name}' (installed: {listing})")


class SourceTreeError(UsageError):
    """The source tree is missing, unreadable or not a base source tree."""


class RunNotFoundError(UsageError):
    """No result root exists for the requested run id."""


class PromotionInputError(UsageError):
    """A result root or its metadata is unfit to promote; nothing was written."""


class MetadataError(PromotionInputError):
    """A metadata file (S-expression) is malformed or does not fit its schema."""

    def __init__(self, message: str, *, file: str | Path | None = None, line: int | None = None):
        self.file = str(file) if file is not None else None
        self.line = line
        where = self.file or ""
        if line is not None:
            where = f"{where}:{line}" if where else f"line {line}"
        super().__init__(f"{where}: {message}" if where else message)


class ProvenanceError(PromotionInputError):
    """A result root claims another executor, version, run or place than the core's own."""


class BuildFailed(FruixError):
    """A build phase exited non-zero."""

    exit_code = ExitCode.BUILD_FAILED

    def __init__(self, phase: str, returncode: int | None, log_tail: str = "",
                 log_path: str | Path | None = None):
        self.phase = phase
        self.returncode = returncode
        self.log_tail = log_tail
        self.log_path = log_path
        msg = f"phase {phase} failed (exit status {returncode})"
        if log_path:
            msg += f"; log: {log_path}"
        super().__init__(msg)


class InfrastructureError(FruixError):
    """The machinery around the build failed (not the build itself)."""

    exit_code = ExitCode.INFRASTRUCTURE


class ToolMissingError(InfrastructureError):
    """A tool the build needs (make, cc) is not installed."""


class PluginLoadError(InfrastructureError):
    """An installed plugin failed to import, validate or instantiate."""


class PluginContractError(InfrastructureError):
    """A plugin's hook returned a value of the wrong type or raised a foreign exception."""

    def __init__(self, plugin: str, hook: str, problem: str):
        self.plugin = plugin
        self.hook = hook
        self.problem = problem
        super().__init__(f"{plugin}: {hook} {problem}")


class TransportError(InfrastructureError):
    """Running a command or moving a tree to or from a guest failed."""


class HostKeyError(TransportError):
    """The guest's SSH host key is unknown or does not match the pinned one."""


class AuthenticationError(TransportError):
    """The guest refused our credentials."""


class ConnectionLostError(TransportError):
    """The connection to the guest dropped mid-operation."""


class GuestError(InfrastructureError):
    """A guest provider could not acquire or release a guest."""


class PhaseTimeout(InfrastructureError):
    """A phase ran longer than its timeout and was stopped."""

    def __init__(self, phase: str, timeout: float):
        self.phase = phase
        self.timeout = timeout
        super().__init__(f"phase {phase} exceeded its timeout of {timeout:g} s and was stopped")


class StoreError(InfrastructureError):
    """The store cannot be written (permissions, disk full, ...)."""


class WorkAreaError(InfrastructureError):
    """A results or build directory cannot be written, lacks space, or filled up."""


class VerificationError(FruixError):
    """A store object does not match its recorded identity."""

    exit_code = ExitCode.VERIFICATION


class Cancelled(FruixError):
    """The operation was interrupted by Ctrl-C or SIGTERM."""

    exit_code = ExitCode.INTERRUPTED

    def __init__(self, message: str = "interrupted"):
        super().__init__(message)
