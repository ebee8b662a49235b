"""structlog output: JSON lines on request, secrets never rendered."""

from __future__ import annotations

import json

from fruix_core.logconfig import REDACTED, redact_secrets
from fruix_core.testkit import run_cli


def test_json_log_lines(fruix_workspace, toy_source):
    conf = fruix_workspace.write_config(source=toy_source, promote=False)
    proc = run_cli("--log-format", "json", "--log-level", "info", "native-build", "run",
                   "--config", str(conf), "--json", cwd=fruix_workspace.root)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.strip()]
    names = [e["event"] for e in events]
    assert "run started" in names and "run finished" in names
    phases = [e["phase"] for e in events if e["event"] == "phase finished"]
    assert phases == ["buildworld", "buildkernel", "installworld", "distribution",
                      "installkernel"]
    assert all("timestamp" in e and "level" in e for e in events)
    assert json.loads(proc.stdout)["status"] == "ok"  # stdout stays one document


def test_secret_keys_are_redacted():
    event = {"event": "login", "password": "hunter2", "api_token": "t0k", "user": "root",
             "Credentials_file": "/etc/secret"}
    out = redact_secrets(None, "info", dict(event))
    assert out["password"] == REDACTED and out["api_token"] == REDACTED
    assert out["Credentials_file"] == REDACTED
    assert out["user"] == "root"
    assert "hunter2" not in json.dumps(out)
