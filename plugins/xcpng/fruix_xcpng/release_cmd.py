"""``fruix-xcpng-release``: bring a kept or stranded build VM back to halted and reverted.

Reads ``[guests.xcpng]`` from the same config a run uses (``--config F``, or
the file ``fruix`` itself would find), logs in to the pool (following the
master), shuts the VM down (clean, then hard), reverts it to the snapshot and
logs out: the code path of a run's own release, shielded the same way against
a stray Ctrl-C. ``keep`` does not apply: an explicit release always reverts.

Exit codes: 0 released, 2 bad config or usage, 3 the pool refused or could
not be reached (the message says how to finish by hand), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fruix_core.api import ExitCode, FruixError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fruix-xcpng-release",
        description="Shut down the configured XCP-ng build VM and revert it to its snapshot "
                    "(for a VM kept by keep = ... or left by an abandoned run).")
    parser.add_argument("--config", metavar="FILE", help="fruix config with [guests.xcpng]")
    parser.add_argument("--log-format", choices=("console", "json"), default="console")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fruix-xcpng-release``."""
    from fruix_core.api import configure_logging, load_config
    from fruix_xcpng.lifecycle import release_vm
    from fruix_xcpng.settings import load_credentials, parse_settings

    args = _parser().parse_args(argv)
    configure_logging(args.log_format, args.log_level)
    try:
        config = load_config(args.config)
        settings = parse_settings(config.guest_settings("xcpng"), file=config.file)
        lease = release_vm(settings, load_credentials(settings))
    except FruixError as exc:
        print(f"fruix-xcpng-release: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("fruix-xcpng-release: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    print(f"{lease.describe()}: halted and reverted to {lease.snapshot_label}")
    return int(ExitCode.OK)


if __name__ == "__main__":
    sys.exit(main())
