"""The bundled sample base: a small real C source tree standing in for /usr/src.

It ships inside the ``fruix_core`` package as data (no ``__init__.py``) and
offers FreeBSD's make interface: ``buildworld``, ``buildkernel``,
``installworld``, ``distribution`` and ``installkernel`` with
``MAKEOBJDIRPREFIX``, ``KERNCONF``, ``DESTDIR``, ``-j``, ``-DNO_ROOT``,
``METALOG``, ``DB_FROM_SRC``, ``SRCCONF``, ``__MAKE_CONF`` and
``SRC_ENV_CONF``, for BSD make (FreeBSD's ``make``, ``bmake`` elsewhere), with
its own ``share/mk`` and ``tools/install.sh``. The build is bit-for-bit
reproducible; see ``docs/sample-base.rst``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SAMPLE_KERNCONFS", "sample_base_path"]

#: Kernel configurations the sample base offers (``sys/amd64/conf``).
SAMPLE_KERNCONFS: tuple[str, ...] = ("GENERIC", "MINIMAL")


def sample_base_path() -> Path:
    """The directory of the bundled sample base source tree.

    The tree is package data of an installed (or editable) ``fruix_core``, so
    it is a real directory. Treat it as read-only: builds write nothing into
    it, and neither may callers; copy it to build from another location.
    """
    return Path(__file__).resolve().parent / "sample_base"
