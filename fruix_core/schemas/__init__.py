"""JSON Schema files of the ``--json`` documents (draft 2020-12).

Every document names its shape in ``"schema"`` (``"fruix.store-diff/1"``);
the file ``<name>-<version>.schema.json`` here describes it. A version
changes only when a key is removed or changes meaning; keys may be added.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

__all__ = ["SCHEMAS", "load_schema", "validate_document"]

#: ``"schema"`` value -> file name.
SCHEMAS = {
    "fruix.error/1": "error-1.schema.json",
    "fruix.run/1": "run-1.schema.json",
    "fruix.run-list/1": "run-list-1.schema.json",
    "fruix.run-record/1": "run-record-1.schema.json",
    "fruix.promote/1": "promote-1.schema.json",
    "fruix.prune/1": "prune-1.schema.json",
    "fruix.report/1": "report-1.schema.json",
    "fruix.store-diff/1": "store-diff-1.schema.json",
    "fruix.store-verify/1": "store-verify-1.schema.json",
    "fruix.store-gc/1": "store-gc-1.schema.json",
    "fruix.store-pin/1": "store-pin-1.schema.json",
    "fruix.store-roots/1": "store-roots-1.schema.json",
    "fruix.plugin-list/1": "plugin-list-1.schema.json",
    "fruix.executor-check/1": "executor-check-1.schema.json",
    "fruix.config-check/1": "config-check-1.schema.json",
    "fruix.guest-release/1": "guest-release-1.schema.json",
    "fruix.plan/1": "plan-1.schema.json",
}


def load_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of the document kind ``name`` (``"fruix.store-diff/1"``)."""
    text = resources.files(__name__).joinpath(SCHEMAS[name]).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def validate_document(document: dict[str, Any]) -> None:
    """Check ``document`` against the schema its ``"schema"`` key names.

    :raises jsonschema.ValidationError: when it does not fit.
    :raises KeyError: when it names no known schema.
    """
    import jsonschema

    jsonschema.validate(document, load_schema(document["schema"]),
                        cls=jsonschema.Draft202012Validator)
