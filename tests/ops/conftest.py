"""Two real runs of the sample base sharing one store: the second built from a
source tree where two files were changed."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fruix_core.testkit import Workspace, copy_sample_source, make_tree_writable, run_cli

#: What the second run's source changes, and the world files that must change with it.
CHANGED_SOURCES = {"usr.bin/wc/wc.c": "./usr/bin/wc", "etc/motd": "./etc/motd"}


@dataclass(frozen=True)
class SampleRuns:
    workspace: Workspace
    config: Path
    first: dict[str, object]
    second: dict[str, object]

    def cli(self, *args: str, **kw: object):
        env = dict(os.environ, XDG_CONFIG_HOME=str(self.workspace.root / "no-user-config"))
        return run_cli(*args, "--config", str(self.config), cwd=self.workspace.root, env=env,
                       **kw)


def _edit(src: Path) -> None:
    wc = src / "usr.bin/wc/wc.c"
    text = wc.read_text()
    assert "usage: wc [-clw]" in text
    wc.write_text(text.replace("usage: wc [-clw]", "usage: wc [-c|-l|-w]"))
    motd = src / "etc/motd"
    motd.write_text(motd.read_text() + "A changed message of the day.\n")


@pytest.fixture(scope="session")
def sample_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SampleRuns]:
    root = tmp_path_factory.mktemp("ops")
    ws = Workspace(root / "fruix")
    ws.root.mkdir()
    first_src = copy_sample_source(root / "src-a", read_only=False)
    second_src = copy_sample_source(root / "src-b", read_only=False)
    _edit(second_src)
    docs = []
    for name, src in (("a.toml", first_src), ("b.toml", second_src)):
        config = ws.write_config(source=src, name=name)
        runs = SampleRuns(ws, config, {}, {})
        proc = runs.cli("native-build", "run", "--json")
        assert proc.returncode == 0, proc.stderr
        docs.append(json.loads(proc.stdout))
    try:
        yield SampleRuns(ws, ws.root / "b.toml", docs[0], docs[1])
    finally:
        make_tree_writable(ws.root)
