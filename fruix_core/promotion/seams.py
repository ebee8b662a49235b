"""Named points inside the promotion engine where a test can act deterministically.

A race between promote and someone rewriting the result root, or a crash at
an exact step, is reproduced by installing a callback at a named point
(:func:`installed`) instead of sleeping and hoping. In production no
callback is installed and :func:`reach` is one dictionary truth test.

Points (the argument is the relative path or object name concerned):

``walk.before-open``
    a tree walk has ``lstat``-ed a node and is about to open it;
``walk.reading``
    a regular file is open and about to be read;
``pool.compared``
    a content-pool entry was found equal to the file just read and is about
    to be linked into the object being built (the argument: where);
``promote.validated``
    the result root passed validation; nothing is ingested yet;
``promote.before-publish``
    every object is prepared; nothing is renamed into place yet;
``gc.deleting``
    the collector is about to remove one object;
``gc.trashed``
    the collector has renamed one object to ``.trash-<name>``, not yet removed it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

__all__ = ["installed", "reach"]

_callbacks: dict[str, Callable[[bytes], None]] = {}


def reach(point: str, detail: bytes = b"") -> None:
    """Run the callback installed at ``point``, if any."""
    if _callbacks:
        callback = _callbacks.get(point)
        if callback is not None:
            callback(detail)


@contextlib.contextmanager
def installed(point: str, callback: Callable[[bytes], None]) -> Iterator[None]:
    """Install ``callback`` at ``point`` for the duration of the ``with`` block."""
    previous = _callbacks.get(point)
    _callbacks[point] = callback
    try:
        yield
    finally:
        if previous is None:
            _callbacks.pop(point, None)
        else:
            _callbacks[point] = previous
