"""The test kit's own helpers."""

from __future__ import annotations

import tomllib

from fruix_core.config import load_config
from fruix_core.testkit import toml_value


def test_write_config_quotes_any_value(fruix_workspace, tmp_path):
    odd = tmp_path / "it's a \"source\" \\ dir é"
    odd.mkdir()
    conf = fruix_workspace.write_config(source=odd, make="b'make", observers=["a'b"])
    config = load_config(conf)
    assert config.source == odd
    assert config.make == "b'make" and config.observers == ("a'b",)


def test_toml_values_round_trip():
    for value in ["plain", "it's", 'say "hi"', "back\\slash", "tab\there", "é", 3, 2.5, True,
                  ["x", "y'z"]]:
        assert tomllib.loads(f"v = {toml_value(value)}")["v"] == value
