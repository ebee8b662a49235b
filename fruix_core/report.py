"""``fruix native-build report``: a static build status page of recent runs.

One self-contained HTML file (styles inline, no script, no network), written
atomically to ``<DIR>/index.html`` so a browser refreshing it never sees half
a page. Per run: status (with the failed phase), executor and version, guest
host, start and duration, a timeline bar whose segments are as wide as each
phase took (one scale for all runs on the page, so bars compare), artifact
sizes and store paths, links to the phase logs (relative to the page), and
what changed since the previous successful run (:mod:`fruix_core.promotion.diff`).

The page is rendered by Jinja2 with autoescaping on: every value from a
result root or the store is text, never markup.
"""

from __future__ import annotations

import datetime as _dt
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from fruix_core.errors import FruixError, StoreError
from fruix_core.model import ARTIFACT_KINDS
from fruix_core.promotion.display import shown
from fruix_core.resultroot import list_runs
from fruix_core.runrecord import RunRecord, duration_text, iso_time, read_run, size_text

__all__ = ["ReportOutcome", "build_report", "render_report", "write_report"]

log = structlog.get_logger(__name__)

PAGE = "index.html"
DEFAULT_LIMIT = 20


@dataclass(frozen=True, slots=True)
class ReportOutcome:
    """What :func:`write_report` wrote."""

    page: Path
    runs: tuple[dict[str, Any], ...]


def _href(page_dir: Path, target: Path) -> str:
    """A relative URL to ``target``: its bytes percent-encoded (a non-UTF-8 name too)."""
    rel = os.fsencode(os.path.relpath(target, page_dir))
    return urllib.parse.quote(rel.replace(os.fsencode(os.sep), b"/"), safe="/._-~")


def _text(value: str | os.PathLike[str] | None) -> str | None:
    """A value from a result root or the store as printable text (see ``shown``)."""
    return shown(value) if value is not None else None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _run_entry(record: RunRecord, page_dir: Path, bundle: Path | None,
               artifacts: Mapping[str, Path]) -> dict[str, Any]:
    meta = record.metadata
    phases = [{"name": p.name, "seconds": p.seconds, "duration": duration_text(p.seconds),
               "started": iso_time(p.started), "finished": iso_time(p.finished), "timing": p.timing,
               "log": _text(p.log), "href": _href(page_dir, p.log) if p.log else None}
              for p in record.phases]
    sizes = {k: _int(meta.get(f"size_{k}")) for k in ARTIFACT_KINDS}
    return {
        "run_id": shown(record.run_id),
        "status": record.state,
        "failed_phase": _text(record.status.phase),
        "executor": _text(meta.get("executor")),
        "executor_version": _text(meta.get("executor_version")),
        "guest": _text(meta.get("guest") or meta.get("guest_host_name")
                       or meta.get("host_name")),
        "started": iso_time(record.started),
        "seconds": record.seconds,
        "duration": duration_text(record.seconds),
        "result_root": shown(record.root.path),
        "phases": phases,
        "bundle": _text(bundle),
        "artifacts": [{"kind": k, "size": sizes.get(k), "size_text": size_text(sizes.get(k)),
                       "path": _text(artifacts.get(k))}
                      for k in ARTIFACT_KINDS if k in artifacts or sizes.get(k) is not None],
        "diff": None,
    }


def _diff_summary(old: Path, new: Path,
                  cache: dict[Path, Any]) -> dict[str, Any] | None:
    from fruix_core.promotion.diff import DiffSide, bundle_objects, diff_sides

    try:
        a = DiffSide(old.name, "bundle", old, bundle_objects(old))
        b = DiffSide(new.name, "bundle", new, bundle_objects(new))
        found = diff_sides(a, b, cache)
    except FruixError as err:
        log.warning("no diff for the report", old=shown(old), new=shown(new), error=str(err))
        return None
    changed = [{"artifact": c.artifact, "path": c.path, "change": c.change,
                "aspects": list(c.aspects)} for c in found.changes[:50]]
    return {**found.summary(), "line": found.summary_line(), "paths": changed,
            "more": max(0, len(found.changes) - 50)}


def build_report(results: Path, store: Path, page_dir: Path,
                 limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
    """The page's data: the newest ``limit`` runs, newest first.

    Each successful promoted run is compared with the successful promoted run
    before it, which may be older than the runs shown.
    """
    from fruix_core.promotion.diff import bundle_objects, bundle_of_run, bundles_by_run

    index = bundles_by_run(store)
    records = [read_run(root) for root in list_runs(results)]  # oldest first
    bundles: list[Path | None] = []
    for record in records:
        try:
            bundles.append(bundle_of_run(store, record.run_id, record.metadata, index))
        except FruixError:
            bundles.append(None)
    first_shown = max(0, len(records) - limit) if limit > 0 else 0
    entries: list[dict[str, Any]] = []
    cache: dict[Path, Any] = {}
    previous_ok: Path | None = None
    for number, (record, bundle) in enumerate(zip(records, bundles, strict=True)):
        ok = bundle is not None and record.state == "ok"
        if number >= first_shown:
            artifacts: Mapping[str, Path] = {}
            if bundle is not None:
                try:
                    artifacts = bundle_objects(bundle)
                except FruixError:
                    artifacts = {}
            entry = _run_entry(record, page_dir, bundle, artifacts)
            if ok and previous_ok is not None and bundle is not None:
                entry["diff"] = _diff_summary(previous_ok, bundle, cache)
            entries.append(entry)
        if ok:
            previous_ok = bundle
    entries.reverse()
    # One scale for every bar: the longest run (or sum of phases, if that is longer) fills it.
    longest = max((max(e["seconds"] or 0.0, sum(p["seconds"] or 0.0 for p in e["phases"]))
                   for e in entries), default=0.0)
    for entry in entries:
        for phase in entry["phases"]:
            share = (phase["seconds"] or 0.0) / longest * 100 if longest > 0 else 0.0
            phase["width"] = f"{share:.4f}"
    return entries


def render_report(entries: list[dict[str, Any]], *, results: Path, store: Path,
                  generated: _dt.datetime | None = None) -> str:
    """The HTML text of the page for ``entries`` (see :func:`build_report`)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("fruix_core", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    from fruix_core.__about__ import __version__

    when = generated or _dt.datetime.now(_dt.UTC)
    counts = {state: sum(1 for e in entries if e["status"] == state)
              for state in ("ok", "failed", "running", "stale")}
    return env.get_template("report.html.j2").render(
        runs=entries, results=shown(results), store=shown(store), counts=counts,
        generated=iso_time(when), version=__version__)


def write_report(results: Path, store: Path, out_dir: Path,
                 limit: int = DEFAULT_LIMIT) -> ReportOutcome:
    """Render the page of ``results`` into ``out_dir/index.html`` (atomically).

    :raises StoreError: when ``out_dir`` cannot be written.
    """
    out_dir = out_dir.absolute()
    entries = build_report(results.absolute(), store.absolute(), out_dir, limit)
    text = render_report(entries, results=results.absolute(), store=store.absolute())
    page = out_dir / PAGE
    tmp = out_dir / f".{PAGE}.tmp-{os.getpid()}"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, page)
    except OSError as err:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise StoreError(f"cannot write the report to {shown(out_dir)}: "
                         f"{err.strerror or err}") from None
    return ReportOutcome(page, tuple(entries))
