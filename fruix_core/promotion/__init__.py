"""The one promotion engine: result roots become immutable store objects.

Submodules, one job each: :mod:`~fruix_core.promotion.sexp` (S-expression
reader/writer), :mod:`~fruix_core.promotion.schema` (``promotion.scm``).
"""

from __future__ import annotations

from fruix_core.promotion.schema import dumps_promotion, read_promotion, write_promotion

__all__ = ["dumps_promotion", "read_promotion", "write_promotion"]
