"""The JSON Schema files of the ``--json`` documents, and the docs' examples against them."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from fruix_core.schemas import SCHEMAS, load_schema, validate_document

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_each_schema_is_a_valid_schema_naming_itself(name: str):
    schema = load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["schema"] == {"const": name}
    assert schema["$id"].endswith(name)


def test_every_schema_file_is_listed():
    files = {p.name for p in resources.files("fruix_core.schemas").iterdir()
             if p.name.endswith(".schema.json")}
    assert files == set(SCHEMAS.values())


def _examples() -> list[dict[str, object]]:
    text = (DOCS / "operator" / "operations.rst").read_text()
    blocks = re.findall(r"\.\. code-block:: json\n\n((?:   .*\n|\n)+)", text)
    return [json.loads("\n".join(line[3:] for line in block.splitlines())) for block in blocks]


def test_the_documented_examples_validate():
    examples = _examples()
    assert {e["schema"] for e in examples} == set(SCHEMAS)
    for example in examples:
        validate_document(example)


def test_a_document_that_does_not_fit_is_refused():
    with pytest.raises(jsonschema.ValidationError):
        validate_document({"schema": "fruix.error/1", "ok": False, "error": "x",
                           "exit_code": 7})
