"""Test kit for fruix plugin authors (pytest plugin)."""
