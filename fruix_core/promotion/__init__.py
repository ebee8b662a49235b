"""The one promotion engine: result roots become immutable store objects.

Public entry points:

- :func:`promote` — validate a result root and publish its four artifact
  objects and its result bundle into a store (:class:`PromotionOutcome`);
- :func:`verify` — re-derive names, signatures and manifests of store
  objects (:class:`VerifyReport`);
- :func:`tree_signature` — SHA-256 of a tree's NAR serialisation
  (equal to ``nix-hash --type sha256``);
- :func:`read_promotion`, :func:`write_promotion`, :func:`dumps_promotion`
  — the ``promotion.scm`` schema.

Submodules, one job each: ``sexp`` (S-expression reader/writer), ``schema``
(promotion.scm), ``nar`` (tree signature, the descriptor-based walk),
``safeio`` (opening without following symlinks or blocking on FIFOs),
``manifest`` (per-file manifest), ``identity`` (names), ``records`` (object
metadata files), ``validate`` (checks before writing), ``ingest`` (one pass
per artifact), ``publish`` (all objects renamed as one unit under their
locks), ``locking``, ``storeio``, ``store`` (:func:`promote`), ``verify``,
``gc`` (roots and collection), ``layout``, ``display`` (escaping names for
terminals and logs), ``seams`` (named points for deterministic tests).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fruix_core.promotion.ingest import Progress
    from fruix_core.promotion.nar import tree_signature
    from fruix_core.promotion.schema import dumps_promotion, read_promotion, write_promotion
    from fruix_core.promotion.store import PromotionOutcome, promote
    from fruix_core.promotion.verify import Problem, VerifyReport, verify

#: Public name -> submodule. Imported on first use, so a command that reads
#: ``promotion.scm`` or hashes one tree does not load the whole engine at start-up.
_EXPORTS = {
    "Problem": "verify",
    "Progress": "ingest",
    "PromotionOutcome": "store",
    "VerifyReport": "verify",
    "dumps_promotion": "schema",
    "promote": "store",
    "read_promotion": "schema",
    "tree_signature": "nar",
    "verify": "verify",
    "write_promotion": "schema",
}

__all__ = [
    "Problem",
    "Progress",
    "PromotionOutcome",
    "VerifyReport",
    "dumps_promotion",
    "promote",
    "read_promotion",
    "tree_signature",
    "verify",
    "write_promotion",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
