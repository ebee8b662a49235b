"""The version of the guest self-hosted executor and of its in-guest helper.

One number for both: the host expects the helper of its own version, and the
helper records it as ``executor-version`` in promotion.scm, so it is part of
every artifact's identity.
"""

from __future__ import annotations

__version__ = "0.1.0"
