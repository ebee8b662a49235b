"""``fruix native-build report``: the static status page, rendered by a real Chromium."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fruix_core.errors import ExitCode
from fruix_core.schemas import validate_document
from fruix_core.testkit import Workspace, require_tool

from .conftest import CHANGED_SOURCES, SampleRuns

#: Appended to a copy of the page: record each bar segment's rendered width.
MEASURE = """<script>
for (const el of document.querySelectorAll('.seg, .bar')) {
  el.setAttribute('data-px', el.getBoundingClientRect().width);
}
document.body.setAttribute('data-measured', 'yes');
</script>"""


def _fruix(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fruix_core.cli.main", *args],
                          capture_output=True, text=True, timeout=60)


class _Elements(HTMLParser):
    """Every element's tag and attributes, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))


def _render(page: Path, tmp_path: Path) -> tuple[list[tuple[str, dict[str, str]]], str]:
    """Load ``page`` in headless Chromium; the DOM's elements after layout, and its text."""
    chromium = require_tool("chromium", "chromium")
    measured = page.with_name("measured.html")
    measured.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1400,1000"]
    dom = subprocess.run([*args, "--dump-dom", measured.as_uri()], capture_output=True,
                         text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = tmp_path / "report.png"
    done = subprocess.run([*args, f"--screenshot={shot}", page.as_uri()], capture_output=True,
                          timeout=120)
    assert done.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    parser = _Elements()
    parser.feed(dom.stdout)
    return parser.elements, dom.stdout


def _write_run(results: Path, run_id: str, status: str, metadata: dict[str, object],
               logs: dict[str, float]) -> Path:
    """A result root; ``logs``: phase -> seconds after the run id's time it was last written."""
    root = results / run_id
    (root / "logs").mkdir(parents=True)
    (root / "status").write_text(status + "\n")
    (root / "metadata").write_text("".join(f"{k}={v}\n" for k, v in metadata.items()))
    start = dt.datetime.strptime(run_id, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC).timestamp()
    for phase, offset in logs.items():
        log = root / "logs" / f"{phase}.log"
        log.write_text(f"{phase} output\n")
        os.utime(log, (start + offset, start + offset))
    return root


def _timed(run_id: str, seconds: dict[str, float], **extra: object) -> dict[str, object]:
    """Metadata with the runner's timing keys (started, phase_<p>_started/_finished/_seconds)."""
    start = dt.datetime.strptime(run_id, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    meta: dict[str, object] = {"run_id": run_id, "started": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                               "phases": ",".join(seconds), **extra}
    at = start
    for phase, secs in seconds.items():
        meta[f"phase_{phase}_started"] = at.strftime("%Y-%m-%dT%H:%M:%SZ")
        at += dt.timedelta(seconds=secs)
        meta[f"phase_{phase}_finished"] = at.strftime("%Y-%m-%dT%H:%M:%SZ")
        meta[f"phase_{phase}_seconds"] = secs
    meta["run_seconds"] = sum(seconds.values())
    return meta


def test_timeline_bars_are_as_wide_as_the_phases_took(fruix_workspace: Workspace,
                                                      tmp_path: Path):
    ws = fruix_workspace
    config = ws.write_config()
    ws.store.mkdir()
    timed = {"buildworld": 30.0, "buildkernel": 10.0, "installworld": 20.0,
             "distribution": 5.0, "installkernel": 5.0}
    _write_run(ws.results, "20260101T100000Z", "ok",
               _timed("20260101T100000Z", timed, executor="local", size_world=123456),
               {p: 0 for p in timed})
    # Written before the runner kept timings: the log files' times tell the story.
    _write_run(ws.results, "20260101T110000Z", "ok",
               {"run_id": "20260101T110000Z", "executor": "host-initiated",
                "phases": ",".join(timed)},
               {"buildworld": 40, "buildkernel": 60})
    _write_run(ws.results, "20260101T120000Z", "failed buildworld",
               _timed("20260101T120000Z", {"buildworld": 14.0},
                      executor="<script>alert('x')</script>", host_name="guest<b>1</b>"),
               {"buildworld": 0})
    out = tmp_path / "page"
    proc = _fruix("native-build", "report", "-o", str(out), "--json", "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    validate_document(doc)
    assert [r["run_id"] for r in doc["runs"]] == ["20260101T120000Z", "20260101T110000Z",
                                                  "20260101T100000Z"]
    fallback = doc["runs"][1]
    assert [(p["name"], p["seconds"], p["timing"]) for p in fallback["phases"]] == [
        ("buildworld", 40.0, "log-times"), ("buildkernel", 20.0, "log-times")]

    elements, text = _render(Path(doc["page"]), tmp_path)
    assert ("body", {"data-measured": "yes"}) in elements
    scripts = [attrs for tag, attrs in elements if tag == "script"]
    assert len(scripts) == 1  # ours; the hostile executor name stayed text
    assert "&lt;script&gt;alert('x')&lt;/script&gt;" in text and "guest&lt;b&gt;1" in text
    bars = [float(a["data-px"]) for t, a in elements if t == "div" and a.get("class") == "bar"]
    segs = [(a["data-phase"], float(a["data-seconds"]), float(a["data-px"]))
            for t, a in elements if t == "div" and "seg" in a.get("class", "").split()]
    assert len(bars) == 3 and len(set(bars)) == 1
    longest = 70.0  # the first run: 30 + 10 + 20 + 5 + 5 seconds
    assert [s[:2] for s in segs] == [
        ("buildworld", 14.0),
        ("buildworld", 40.0), ("buildkernel", 20.0),
        *timed.items()]
    for phase, seconds, px in segs:
        assert px == pytest.approx(seconds / longest * bars[0], abs=1.0), (phase, seconds)
    assert segs[3][2] == pytest.approx(3 * segs[4][2], abs=1.5)  # 30 s against 10 s


def test_the_page_of_real_runs_shows_status_artifacts_logs_and_changes(
        sample_runs: SampleRuns, tmp_path: Path):
    out = tmp_path / "status page"
    proc = sample_runs.cli("native-build", "report", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    page = out / "index.html"
    assert proc.stdout.strip().startswith(f"wrote {page}")
    elements, text = _render(page, tmp_path)
    first, second = str(sample_runs.first["run_id"]), str(sample_runs.second["run_id"])
    rows = {a["data-run-id"]: a for t, a in elements if t == "tr" and "data-run-id" in a}
    assert rows[first]["data-status"] == "ok" and rows[second]["data-status"] == "ok"
    for path in [*sample_runs.second["artifacts"].values(), sample_runs.second["bundle"]]:
        assert str(path) in text
    assert "2 paths differ: 0 added" in text
    for changed in CHANGED_SOURCES.values():
        assert f"<code>{changed}</code>" in text
    # The runner's own timing keys give the bars; each segment as wide as its phase took.
    doc = json.loads(sample_runs.cli("native-build", "report", "-o", str(out), "--json").stdout)
    validate_document(doc)
    timed = {r["run_id"]: r for r in doc["runs"]}[second]
    assert [p["timing"] for p in timed["phases"]] == ["metadata"] * 5
    longest = max(max(r["seconds"] or 0, sum(p["seconds"] or 0 for p in r["phases"]))
                  for r in doc["runs"])
    bar = next(float(a["data-px"]) for t, a in elements if a.get("class") == "bar")
    for _tag, seg in (e for e in elements if "seg" in e[1].get("class", "").split()):
        assert float(seg["data-px"]) == pytest.approx(
            float(seg["data-seconds"]) / longest * bar, abs=1.0)
    links = [a["href"] for t, a in elements if t == "a" and a.get("class") == "log"]
    assert len(links) >= 10
    for href in links:
        target = (out / urllib.parse.unquote(href)).resolve()
        assert target.is_file() and target.suffix == ".log"
        assert not href.startswith("/")  # relative: the page and results move together

    # Fewer runs shown: the second run is still compared with the first, now off the page.
    listed = [r["run_id"] for r in json.loads(
        sample_runs.cli("native-build", "list", "--json").stdout)["runs"]]
    limit = len(listed) - listed.index(first) - 1
    narrow = sample_runs.cli("native-build", "report", "-o", str(tmp_path / "narrow"),
                             "--limit", str(limit), "--json")
    assert narrow.returncode == 0, narrow.stderr
    runs = {r["run_id"]: r for r in json.loads(narrow.stdout)["runs"]}
    assert first not in runs and runs[second]["diff"]["changed"] == 2
    bad = sample_runs.cli("native-build", "report", "--limit", "0", "--json")
    assert bad.returncode == ExitCode.USAGE and json.loads(bad.stdout)["exit_code"] == 2


def test_report_errors_are_one_document(fruix_workspace: Workspace, tmp_path: Path):
    config = fruix_workspace.write_config()
    blocked = tmp_path / "file"
    blocked.write_text("not a directory\n")
    proc = _fruix("native-build", "report", "-o", str(blocked / "x"), "--json",
                  "--config", str(config))
    assert proc.returncode == ExitCode.INFRASTRUCTURE
    doc = json.loads(proc.stdout)
    validate_document(doc)
    assert "cannot write the report" in doc["error"] and "Traceback" not in proc.stderr
    empty = _fruix("native-build", "report", "-o", str(tmp_path / "e"), "--config", str(config))
    assert empty.returncode == 0 and "No runs yet." in (tmp_path / "e/index.html").read_text()


def test_non_utf8_and_hostile_names_stay_text(tmp_path: Path):
    # A results directory whose name is not UTF-8 (Linux and FreeBSD allow any byte but
    # "/" and NUL), and a stray run directory named to break a page or a terminal.
    base = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9"))
    results = base / "results"
    meta = _timed("20260101T100000Z", {"buildworld": 3.0}, executor="local")
    _write_run(results, "20260101T100000Z", "ok", meta, {"buildworld": 0})
    (results / "x\x1b]0;pwned\x07<i>").mkdir()
    config = base / "fruix.toml"  # relative paths: from the config file's directory
    config.write_text('[paths]\nresults = "results"\nstore = "store"\n')
    out = tmp_path / "page"
    proc = subprocess.run([sys.executable, "-m", "fruix_core.cli.main", "native-build", "report",
                           "-o", str(out), "--json", "--config", str(config)],
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    validate_document(doc)
    assert {r["run_id"] for r in doc["runs"]} == {"20260101T100000Z", "x\\x1b]0;pwned\\x07<i>"}
    page = (out / "index.html").read_bytes()
    assert b"\x1b" not in page and b"<i>" not in page and b"&lt;i&gt;" in page
    elements, _text = _render(out / "index.html", tmp_path)
    href = next(a["href"] for t, a in elements if t == "a" and a.get("class") == "log")
    assert "%E9" in href
    target = os.path.join(os.fsencode(str(out)), urllib.parse.unquote_to_bytes(href))
    assert open(target, "rb").read() == b"buildworld output\n"
