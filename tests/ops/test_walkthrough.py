"""The operator walkthrough in docs/operator/operations.rst runs as written.

Every ``$ `` line of its console blocks is run, in order, by ``sh`` in one
empty directory (the bundled sample base, the ``local`` executor, no config
file); each must exit 0, and the lines the docs show under it must appear in
its output, in order (``<...>`` is a placeholder, ``...`` lines left out,
spacing is not compared).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fruix_core.testkit import make_tree_writable

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operator" / "operations.rst"


def walkthrough() -> list[tuple[str, list[str]]]:
    """(command, expected output lines) of the walkthrough, in order."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("\nWalkthrough\n-----------\n", 1)[1]
    section = re.split(r"\n[^\n]+\n-{3,}\n", section, maxsplit=1)[0]
    steps: list[tuple[str, list[str]]] = []
    for block in re.findall(r"\.\. code-block:: console\n\n((?:    .*\n|\n)+)", section):
        for line in block.splitlines():
            line = line[4:]
            if line.startswith("$ "):
                steps.append((line[2:], []))
            elif line.strip():
                steps[-1][1].append(line)
    return steps


def _normal(line: str) -> str:
    return " ".join(line.split())


def _pattern(line: str, cwd: Path) -> re.Pattern[str]:
    parts = re.split(r"(<[a-z-]+>)", _normal(line).replace("<cwd>", "\0"))
    regex = "".join(".+?" if re.fullmatch(r"<[a-z-]+>", p) else re.escape(p) for p in parts)
    return re.compile(regex.replace(re.escape("\0"), re.escape(str(cwd))))


def _assert_shown(expected: list[str], output: str, cwd: Path, command: str) -> None:
    lines = [_normal(line) for line in output.splitlines()]
    at = 0
    for want in expected:
        if want.strip() == "...":
            continue
        pattern = _pattern(want, cwd)
        while at < len(lines) and not pattern.fullmatch(lines[at]):
            at += 1
        assert at < len(lines), f"{command!r}: no line like {want!r} (in order) in:\n{output}"
        at += 1


def test_the_walkthrough_has_the_commands_it_promises():
    commands = [command.split()[:3] for command, _ in walkthrough()]
    for wanted in (["fruix", "native-build", "run"], ["fruix", "native-build", "list"],
                   ["fruix", "native-build", "show"], ["fruix", "native-build", "logs"],
                   ["fruix", "store", "verify"], ["fruix", "store", "diff"],
                   ["fruix", "native-build", "report"], ["fruix", "native-build", "prune"],
                   ["fruix", "store", "gc"]):
        assert wanted in commands
    assert all(expected for _, expected in walkthrough()[1:])  # each shows what it prints


def test_the_walkthrough_runs_as_written(tmp_path: Path):
    cwd = tmp_path / "work"
    cwd.mkdir()
    bindir = str(Path(sys.executable).parent)  # where this environment's `fruix` is
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRUIX_")}
    env.update(PATH=os.pathsep.join([bindir, env.get("PATH", "/usr/bin:/bin")]),
               HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "config"),
               XDG_DATA_HOME=str(tmp_path / "data"))
    try:
        for command, expected in walkthrough():
            proc = subprocess.run(["sh", "-c", command], cwd=cwd, env=env, text=True,
                                  capture_output=True, timeout=600)
            assert proc.returncode == 0, f"{command!r} exited {proc.returncode}:\n{proc.stderr}"
            assert "Traceback" not in proc.stderr
            _assert_shown(expected, proc.stdout, cwd, command)
    finally:
        if (cwd / ".fruix").exists():
            make_tree_writable(cwd / ".fruix")


@pytest.mark.parametrize(("shown", "line", "matches"), [
    ("run <run-id>: ok (executor local)", "run 20260405T150359Z-1: ok (executor local)", True),
    ("run <run-id>: ok (executor local)", "run 20260405T150359Z: failed", False),
    ("checked 5 store objects: all clean", "checked   5 store objects:  all clean", True),
    ("a (b) [c]", "a (b) [c]", True),
])
def test_placeholders_and_spacing(shown: str, line: str, matches: bool, tmp_path: Path):
    assert bool(_pattern(shown, tmp_path).fullmatch(_normal(line))) is matches
