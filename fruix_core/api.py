"""The public plugin API: everything an executor, a guest provider or an observer needs.

Plugins import from this module only (and, in their tests, from
:mod:`fruix_core.testkit`); every other module of ``fruix_core`` is private
and may change without notice. The test suite fails when a shipped plugin
imports anything else from the core.

:data:`PLUGIN_API_VERSION` is the major version of this API. A plugin declares
the one it targets as the class attribute ``fruix_plugin_api``; the core
refuses a plugin that targets another one when it loads it, naming both
versions, and ``fruix executors list`` shows it.

The SSH and tar-stream names (:func:`connect`, :func:`shell_script`,
:class:`SSHSession`, :func:`fetch_tree`, :func:`verify_result_root`) are
imported on first use, so importing this module does not import paramiko.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fruix_core.__about__ import __version__ as CORE_VERSION
from fruix_core.config import Key, load_config, read_section, read_toml
from fruix_core.environment import (
    BASE_PATH,
    ENVIRONMENT_POLICY,
    policy_description,
    sanitised_environment,
)
from fruix_core.errors import (
    AuthenticationError,
    BuildFailed,
    Cancelled,
    ConfigError,
    ConnectionLostError,
    ExitCode,
    FruixError,
    GuestError,
    HostKeyError,
    InfrastructureError,
    MetadataError,
    PhaseTimeout,
    PluginContractError,
    PluginLoadError,
    PromotionInputError,
    ProvenanceError,
    RunNotFoundError,
    SourceTreeError,
    StoreError,
    ToolMissingError,
    TransportError,
    UnknownPluginError,
    UsageError,
    VerificationError,
)
from fruix_core.guestlayout import (
    LAYOUT_RELATIVE_PATH,
    StoreLayout,
    check_declared_base,
    parse_store_layout,
    read_store_layout,
)
from fruix_core.guests import require_guest
from fruix_core.hookspecs import PLUGIN_API_VERSION, hookimpl
from fruix_core.logconfig import configure_logging
from fruix_core.model import (
    ARTIFACT_KINDS,
    ArtifactEntry,
    BaseMetadata,
    BuildPolicy,
    BuildRequest,
    CancelToken,
    EmittedResult,
    Guest,
    GuestRequest,
    Phase,
    PhaseResult,
    PreparedEnv,
    Promotion,
    RunEnd,
    RunEvent,
    SourceStore,
    StagedArtifacts,
)
from fruix_core.profile import (
    KEY_FILES,
    PHASES,
    PINNED_VARIABLES,
    BuildPaths,
    PinnedConfiguration,
    artifact_split,
    make_configuration_policy,
    phase_command,
    phases_from,
    pinned_configuration,
    read_make_configuration,
)
from fruix_core.promotion.nar import tree_signature
from fruix_core.promotion.schema import dumps_promotion, read_promotion, write_promotion
from fruix_core.resultroot import (
    ResultRoot,
    RunStatus,
    build_metadata,
    build_promotion,
    key_file_digests,
    new_run_id,
    stage_trees,
    staged_artifacts,
    swap_latest,
    tree_size,
)
from fruix_core.sample import sample_base_path
from fruix_core.transport import CommandOutcome, CommandRunner, LineSink
from fruix_core.transport.local import LocalRunner, kill_process_group

if TYPE_CHECKING:
    from fruix_core.transport.ssh import SSHSession, connect, shell_script
    from fruix_core.transport.tarstream import fetch_tree, verify_result_root

__all__ = [
    "ARTIFACT_KINDS",
    "BASE_PATH",
    "CORE_VERSION",
    "ENVIRONMENT_POLICY",
    "KEY_FILES",
    "LAYOUT_RELATIVE_PATH",
    "PHASES",
    "PINNED_VARIABLES",
    "PLUGIN_API_VERSION",
    "ArtifactEntry",
    "AuthenticationError",
    "BaseMetadata",
    "BuildFailed",
    "BuildPaths",
    "BuildPolicy",
    "BuildRequest",
    "CancelToken",
    "Cancelled",
    "CommandOutcome",
    "CommandRunner",
    "ConfigError",
    "ConnectionLostError",
    "EmittedResult",
    "ExitCode",
    "FruixError",
    "Guest",
    "GuestError",
    "GuestRequest",
    "HostKeyError",
    "InfrastructureError",
    "Key",
    "LineSink",
    "LocalRunner",
    "MetadataError",
    "Phase",
    "PhaseResult",
    "PhaseTimeout",
    "PinnedConfiguration",
    "PluginContractError",
    "PluginLoadError",
    "PreparedEnv",
    "Promotion",
    "PromotionInputError",
    "ProvenanceError",
    "ResultRoot",
    "RunEnd",
    "RunEvent",
    "RunNotFoundError",
    "RunStatus",
    "SSHSession",
    "SourceStore",
    "SourceTreeError",
    "StagedArtifacts",
    "StoreError",
    "StoreLayout",
    "ToolMissingError",
    "TransportError",
    "UnknownPluginError",
    "UsageError",
    "VerificationError",
    "artifact_split",
    "build_metadata",
    "build_promotion",
    "check_declared_base",
    "configure_logging",
    "connect",
    "dumps_promotion",
    "fetch_tree",
    "hookimpl",
    "key_file_digests",
    "kill_process_group",
    "load_config",
    "make_configuration_policy",
    "new_run_id",
    "parse_store_layout",
    "phase_command",
    "phases_from",
    "pinned_configuration",
    "policy_description",
    "read_promotion",
    "read_section",
    "read_make_configuration",
    "read_store_layout",
    "read_toml",
    "require_guest",
    "sample_base_path",
    "sanitised_environment",
    "shell_script",
    "stage_trees",
    "staged_artifacts",
    "swap_latest",
    "tree_signature",
    "tree_size",
    "verify_result_root",
    "write_promotion",
]

_LAZY = {
    "SSHSession": "fruix_core.transport.ssh",
    "connect": "fruix_core.transport.ssh",
    "shell_script": "fruix_core.transport.ssh",
    "fetch_tree": "fruix_core.transport.tarstream",
    "verify_result_root": "fruix_core.transport.tarstream",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
