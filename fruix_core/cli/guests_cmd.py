"""``fruix guests release``: give back a guest a run kept, or one an abandoned run left.

The configured guest provider (``--guest NAME``, else ``build.guest``) is
loaded with the validation a run does, and its
:func:`~fruix_core.hookspecs.GuestProviderSpec.fruix_release_configured_guest`
releases the guest its ``[guests.NAME]`` table names, under the interrupt
shield a run's own release has.
"""

from __future__ import annotations

import argparse

from fruix_core.cli.jsonout import emit
from fruix_core.config import load_config
from fruix_core.errors import ConfigError, ExitCode, UnknownPluginError, UsageError
from fruix_core.model import GuestRequest
from fruix_core.plugins import check_settings, load, make_plugin_manager
from fruix_core.runner import _shielded

__all__ = ["release_command"]


def release_command(args: argparse.Namespace) -> int:
    """Release the configured guest; print what the provider did (one line, or JSON)."""
    config = load_config(args.config)
    check_settings(config)  # the validation a run does, before anything is contacted
    name = args.guest or config.guest
    if not name:
        where = config.file or "the default configuration"
        raise UsageError(f"no guest provider to release: {where} sets no build.guest "
                         "(or pass --guest NAME)")
    try:
        provider = load("guest-provider", name)
    except UnknownPluginError as exc:
        if args.guest:  # the operator's own word, not the file's
            raise
        raise ConfigError(str(exc), file=config.file, key="build.guest") from None
    pm = make_plugin_manager(provider)
    request = GuestRequest(provider=name, run_id="", settings=config.guest_settings(name),
                           config_file=config.file)
    with _shielded(f"releasing guest {name}"):
        description = pm.release_configured_guest(request)
    if args.json:
        emit("fruix.guest-release/1", {"guest": name, "distribution": provider.distribution,
                                       "version": provider.version, "released": description})
    else:
        print(description)
    return int(ExitCode.OK)
