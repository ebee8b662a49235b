"""The line protocol between the helper and the host-side executor."""

from __future__ import annotations

from fruix_guest_self_hosted import protocol


def test_markers_round_trip():
    start = protocol.parse_marker(protocol.phase_start("buildworld"))
    assert start == protocol.Marker("phase-start", phase="buildworld")
    end = protocol.parse_marker(protocol.phase_end("buildkernel", 2, 1.23456))
    assert end is not None and (end.kind, end.phase, end.returncode) == ("phase-end",
                                                                         "buildkernel", 2)
    assert abs(end.seconds - 1.235) < 1e-9
    summary = protocol.parse_marker(protocol.summary_line({"status": "ok", "run_id": "r"}))
    assert summary is not None and summary.document == {"status": "ok", "run_id": "r"}


def test_build_output_never_passes_for_a_marker():
    hostile = protocol.summary_line({"status": "ok"})
    sent = protocol.escape_output(hostile)
    assert protocol.parse_marker(sent) is None
    assert protocol.unescape_output(sent) == hostile
    ordinary = "cc -O2 -c foo.c"
    assert protocol.escape_output(ordinary) == ordinary
    assert protocol.unescape_output(ordinary) == ordinary


def test_garbled_markers_are_ordinary_lines():
    for line in (protocol.MARKER, f"{protocol.MARKER} phase-end buildworld x 1.0",
                 f"{protocol.MARKER} summary [1, 2]", f"{protocol.MARKER} summary {{not json",
                 f"{protocol.MARKER} phase-start", f"{protocol.MARKER} teleport now"):
        assert protocol.parse_marker(line) is None, line
