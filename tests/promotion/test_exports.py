"""The public facade exports exactly what it documents."""

from __future__ import annotations

import fruix_core.promotion as promotion


def test_facade_exports() -> None:
    assert sorted(promotion.__all__) == sorted([
        "Problem", "Progress", "PromotionOutcome", "VerifyReport", "dumps_promotion",
        "promote", "read_promotion", "tree_signature", "verify", "write_promotion"])
    for name in promotion.__all__:
        assert getattr(promotion, name).__doc__, name
