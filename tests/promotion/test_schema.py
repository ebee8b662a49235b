"""promotion.scm <-> Promotion: round trip, Guile compatibility, strict refusals."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fruix_core.errors import MetadataError, PromotionInputError
from fruix_core.model import ARTIFACT_KINDS, ArtifactEntry
from fruix_core.promotion import promote
from fruix_core.promotion.schema import (
    dumps_promotion,
    loads_promotion,
    read_promotion,
    write_promotion,
)
from fruix_core.promotion.sexp import loads

from .conftest import sample_promotion
from .guile import describe_all, guile_describe, needs_guile


def full_promotion():
    entries = tuple(
        ArtifactEntry(kind=k, path=f"artifacts/{k}",
                      files=(("bin/sh", "0" * 64), ("caf\u00e9/x y", "f" * 64))
                      if k == "world" else ())
        for k in ARTIFACT_KINDS)
    return sample_promotion(artifacts=entries, guest_host_name="h\u00f6st",
                            development_profile_path="/frx/store/cccc-profile")


def test_round_trip(tmp_path: Path) -> None:
    promotion = full_promotion()
    path = tmp_path / "promotion.scm"
    write_promotion(promotion, path)
    assert read_promotion(path) == promotion
    assert path.read_text("ascii") == dumps_promotion(promotion)
    assert [p.name for p in tmp_path.iterdir()] == ["promotion.scm"]


def test_optional_paths_are_false() -> None:
    promotion = sample_promotion(closure_path=None, development_profile_path=None,
                                 artifacts=full_promotion().artifacts)
    text = dumps_promotion(promotion)
    assert "(closure-path #f)" in text
    assert loads_promotion(text) == promotion


@needs_guile
def test_guile_reads_the_written_promotion(tmp_path: Path) -> None:
    path = tmp_path / "promotion.scm"
    write_promotion(full_promotion(), path)
    assert guile_describe(path) == describe_all(loads(path.read_bytes()))


def test_dumps_is_deterministic() -> None:
    assert dumps_promotion(full_promotion()) == dumps_promotion(full_promotion())


def _edit(old: str, new: str) -> str:
    text = dumps_promotion(full_promotion())
    assert old in text, old
    return text.replace(old, new, 1)


@pytest.mark.parametrize("old, new, message", [
    ("(fruix-native-build-promotion", "(other-form", "unknown top-level form"),
    ("(executor \"local\")", "(executor \"local\") (colour \"red\")", "unknown field 'colour'"),
    ("(executor \"local\")", "(executor \"local\") (executor \"x\")", "given twice"),
    ("(executor \"local\")", "", "missing field 'executor'"),
    ("(executor \"local\")", "(executor local)", "must be a string"),
    ("(executor \"local\")", "(executor \"lo cal/../x\")", "must match"),
    ("(format-version 1)", "(format-version 2)", "format 1 only"),
    ("(jobs 2)", "(jobs \"2\")", "must be an integer"),
    ("(jobs 2)", "(jobs -1)", "between"),
    ("(path \"artifacts/world\")", "(path \"/etc\")", "is absolute"),
    ("(path \"artifacts/world\")", "(path \"artifacts/../../x\")", "'..' component"),
    ("(file \"bin/sh\"", "(file \"../../etc/passwd\"", "'..' component"),
    ("(file \"bin/sh\"", "(file \"/bin/sh\"", "is absolute"),
    ("(kind \"kernel\")", "(kind \"firmware\")", "unknown kind"),
    ("(kind \"kernel\")", "(kind \"world\")", "given twice"),
    ('"' + "0" * 64 + '"', '"' + "0" * 63 + 'Z"', "64 lower-case hex"),
    ("(closure-path \"/frx", "(closure-path \"frx", "absolute path"),
    ("(run-id \"run-0001\")", "(run-id \"run\\n0001\")", "control characters"),
])
def test_refusals_name_the_problem(old: str, new: str, message: str) -> None:
    with pytest.raises(MetadataError, match=re.escape(message)) as info:
        loads_promotion(_edit(old, new), source="promotion.scm")
    assert info.value.file == "promotion.scm"
    assert info.value.line is not None


def test_error_line_points_at_the_form() -> None:
    text = _edit("(jobs 2)", "(jobs two)")
    line = next(n for n, row in enumerate(text.splitlines(), 1) if "(jobs two)" in row)
    with pytest.raises(MetadataError) as info:
        loads_promotion(text, source="p.scm")
    assert info.value.line == line


def test_trailing_form_is_refused() -> None:
    with pytest.raises(MetadataError, match="after the promotion"):
        loads_promotion(dumps_promotion(full_promotion()) + "(extra)\n")


def test_writer_refuses_invalid_promotions(tmp_path: Path) -> None:
    bad = replace(full_promotion(), executor="bad name")
    with pytest.raises(MetadataError):
        write_promotion(bad, tmp_path / "promotion.scm")
    assert not (tmp_path / "promotion.scm").exists()


# -- fuzzing: malformed promotion.scm gives a clear error and writes nothing --

_VALID = dumps_promotion(full_promotion())
_JUNK = st.text(alphabet='()"#.\';|\\ \nabcxyz019-', min_size=1, max_size=6)


@st.composite
def mutated(draw) -> str:
    text = _VALID
    for _ in range(draw(st.integers(1, 3))):
        start = draw(st.integers(0, len(text)))
        end = draw(st.integers(start, min(len(text), start + 12)))
        text = text[:start] + draw(st.one_of(st.just(""), _JUNK)) + text[end:]
    return text


@settings(max_examples=1000, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(text=mutated())
def test_fuzzed_promotion_is_refused_cleanly(result_root: Path, tmp_path: Path,
                                             text: str) -> None:
    try:
        loads_promotion(text, source="promotion.scm")
    except MetadataError as err:
        assert str(err).startswith("promotion.scm")
    else:
        return  # the mutation happened to stay valid (a changed string, a comment)
    (result_root / "promotion.scm").write_text(text)
    store = tmp_path / "fuzz-store"
    with pytest.raises(PromotionInputError):
        promote(result_root, store)
    assert not store.exists()
