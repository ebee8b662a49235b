"""The example executor passes the conformance suite (run with the plugin installed)."""

from __future__ import annotations

from fruix_core.testkit.conformance import all_passed


def test_conformance(fruix_executor_conformance):
    results = fruix_executor_conformance("nice", {"niceness": 5})
    assert all_passed(results), "\n".join(r.line() for r in results)
