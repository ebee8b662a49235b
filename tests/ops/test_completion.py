"""``fruix completion bash|zsh``: scripts generated from the parser (shtab), used by real shells."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fruix_core.testkit import require_tool


def _script(shell: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "fruix_core.cli.main", "completion", shell],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _bash_complete(script: Path, words: list[str], cwd: Path) -> list[str]:
    """What bash's completion function offers for ``words`` (the last one being typed)."""
    bash = require_tool("bash", "bash")
    quoted = " ".join(f"'{w}'" for w in words)
    program = (f"source '{script}'; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
               f"_shtab_fruix fruix '{words[-1]}' '{words[-2]}'; "
               'printf "%s\\n" "${COMPREPLY[@]}"')
    proc = subprocess.run([bash, "--norc", "--noprofile", "-c", program], cwd=cwd,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line]


def test_bash_completes_commands_options_and_directories(tmp_path: Path):
    script = tmp_path / "fruix.bash"
    script.write_text(_script("bash"))
    assert "complete -o bashdefault -F _shtab_fruix fruix" in script.read_text()
    top = set(_bash_complete(script, ["fruix", ""], tmp_path))
    assert {"executors", "native-build", "store", "completion"} <= top
    assert _bash_complete(script, ["fruix", "native-build", "re"], tmp_path) == ["report"]
    assert set(_bash_complete(script, ["fruix", "native-build", "l"], tmp_path)) == {
        "list", "logs"}
    assert _bash_complete(script, ["fruix", "store", "diff", "--st"], tmp_path) == ["--store"]
    (tmp_path / "stores" / "main").mkdir(parents=True)
    (tmp_path / "stores" / "a-file").write_text("")
    assert _bash_complete(script, ["fruix", "store", "diff", "--store", "stores/"],
                          tmp_path) == ["stores/main"]
    assert _bash_complete(script, ["fruix", "completion", "z"], tmp_path) == ["zsh"]


def test_zsh_script_parses_and_registers_for_fruix(tmp_path: Path):
    zsh = require_tool("zsh", "zsh")
    functions = tmp_path / "site-functions"
    functions.mkdir()
    script = functions / "_fruix"  # where the docs say to put it: a directory in $fpath
    script.write_text(_script("zsh"))
    text = script.read_text()
    assert text.startswith("#compdef fruix")
    for spec in ("report) _arguments", "logs) _arguments", "diff) _arguments",
                 '"--store[store directory]:DIR:_files -/"',
                 '"--config[config file'):
        assert spec in text
    syntax = subprocess.run([zsh, "-n", str(script)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    registered = subprocess.run(
        [zsh, "-f", "-c", f"fpath=({functions} $fpath); autoload -Uz compinit; "
                          "compinit -u -D; print -r -- ${_comps[fruix]}"],
        capture_output=True, text=True, timeout=60, env={"HOME": str(tmp_path),
                                                        "PATH": "/usr/bin:/bin"})
    assert registered.returncode == 0, registered.stderr
    assert registered.stdout.strip() == "_fruix"
