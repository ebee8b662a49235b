from __future__ import annotations

from pathlib import Path

import pytest

from fruix_core.config import SCHEMA, Key, find_config_file, load_config, read_section
from fruix_core.errors import ConfigError, ExitCode


def test_defaults_without_any_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    config = load_config()
    assert config.file is None
    assert config.executor == "local" and config.guest == ""
    assert config.store == tmp_path / ".fruix" / "store"
    assert config.results == tmp_path / ".fruix" / "results"
    assert config.base.version == "15.0-STABLE" and config.base.kernconf == "GENERIC"
    assert config.source is None and config.promote is True
    assert config.effective_jobs >= 1


def test_lookup_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    xdg = tmp_path / "xdg"
    (xdg / "fruix").mkdir(parents=True)
    (xdg / "fruix" / "config.toml").write_text('[build]\njobs = 3\n')
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    assert load_config().jobs == 3
    (tmp_path / "fruix.toml").write_text('[build]\njobs = 4\n')
    assert load_config().jobs == 4
    explicit = tmp_path / "other.toml"
    explicit.write_text('[build]\njobs = 5\n')
    assert load_config(explicit).jobs == 5
    assert find_config_file(explicit) == explicit


def test_relative_paths_are_relative_to_the_file(tmp_path, monkeypatch):
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    conf = conf_dir / "fruix.toml"
    conf.write_text('[paths]\nstore = "s"\n[build]\nsource = "../src"\n')
    monkeypatch.chdir(tmp_path)
    config = load_config(conf)
    assert config.store == conf_dir / "s"
    assert config.source == conf_dir / ".." / "src"
    # A default never depends on the working directory once a file is used.
    assert config.results == conf_dir / ".fruix" / "results"
    assert config.build_root == conf_dir / ".fruix" / "build"


def test_a_user_config_puts_nothing_in_the_working_directory(tmp_path, monkeypatch):
    xdg = tmp_path / "xdg"
    (xdg / "fruix").mkdir(parents=True)
    (xdg / "fruix" / "config.toml").write_text("[build]\njobs = 2\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config()
    assert config.base_dir == xdg / "fruix" / ".fruix"
    for path in (config.store, config.results, config.build_root):
        assert path.is_relative_to(xdg / "fruix"), path


def test_paths_base_xdg_and_explicit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    conf = tmp_path / "etc" / "fruix.toml"
    conf.parent.mkdir()
    conf.write_text('[paths]\nbase = "xdg"\nresults = "/srv/results"\n')
    config = load_config(conf)
    assert config.store == tmp_path / "data" / "fruix" / "store"
    assert config.build_root == tmp_path / "data" / "fruix" / "build"
    assert config.results == Path("/srv/results")  # an explicit path wins
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert load_config(conf).store == tmp_path / "home" / ".local/share/fruix/store"
    conf.write_text('[paths]\nbase = "../var/fruix"\n')
    config = load_config(conf)
    assert config.store == tmp_path / "etc" / ".." / "var" / "fruix" / "store"


@pytest.mark.parametrize(("value", "expected"), [
    ("0", 0), ("1024", 1024), ('"512M"', 512 << 20), ('"20G"', 20 << 30), ('"1.5K"', 1536),
    ('"2GiB"', 2 << 30), ('"auto"', None)])
def test_min_free_sizes(tmp_path, value, expected):
    conf = tmp_path / "fruix.toml"
    conf.write_text(f"[paths]\nmin_free = {value}\n")
    assert load_config(conf).min_free == expected


@pytest.mark.parametrize("value", ['"lots"', "-1", '"G"', '"-5M"', '"nanG"'])
def test_a_bad_min_free_names_the_key(tmp_path, value):
    conf = tmp_path / "fruix.toml"
    conf.write_text(f"[paths]\nmin_free = {value}\n")
    with pytest.raises(ConfigError, match="paths.min_free"):
        load_config(conf)


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ('[build]\njobs = "two"\n', "build.jobs", "expected an integer"),
        ('[build]\njobs = true\n', "build.jobs", "boolean"),
        ('[build]\nexecutr = "local"\n', "build.executr", "unknown key"),
        ('[bulid]\n', "bulid", "unknown table"),
        ('[build]\njobs = -1\n', "build.jobs", "0 (all CPUs) or more"),
        ('[base]\nversion = "15.0 STABLE"\n', "base.version", "without spaces"),
        ('[build]\nphase_timeout = -5\n', "build.phase_timeout", "no limit"),
        ('[executors]\nlocal = 3\n', "executors.local", "expected a table"),
        ('build = 1\n', "build", "expected a table"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, text, key, fragment):
    conf = tmp_path / "bad.toml"
    conf.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(conf)
    message = str(info.value)
    assert str(conf) in message and f"'{key}'" in message and fragment in message
    assert info.value.exit_code == ExitCode.USAGE


def test_malformed_toml(tmp_path):
    conf = tmp_path / "broken.toml"
    conf.write_text("[build\njobs = 2\n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(conf)
    assert str(conf) in str(info.value)


def test_missing_explicit_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_plugin_tables_pass_through_and_validate(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('[guests.ssh]\nhost = "h"\nport = 2222\n[executors.local]\n')
    config = load_config(conf)
    assert config.guest_settings("ssh") == {"host": "h", "port": 2222}
    assert config.executor_settings("local") == {}
    schema = {"host": Key(str, ""), "port": Key(int, 22)}
    assert read_section(config.guest_settings("ssh"), schema, file=config.file,
                        prefix="guests.ssh") == {"host": "h", "port": 2222}
    with pytest.raises(ConfigError, match="'guests.ssh.hots'"):
        read_section({"hots": "x"}, schema, file=config.file, prefix="guests.ssh")


def test_every_core_key_is_documented():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "operator" / "config.rst").read_text()
    for table, keys in SCHEMA.items():
        assert f"[{table}]" in doc
        for name in keys:
            assert f"``{name}``" in doc, f"{table}.{name} is not documented"


def test_an_unreadable_user_config_directory_is_one_clear_error(tmp_path):
    import subprocess
    import sys

    from fruix_core.testkit import require_tool

    require_tool("setpriv", "util-linux")
    home = tmp_path / "home"
    (home / "fruix").mkdir(parents=True)
    (home / "fruix" / "config.toml").write_text("[build]\n")
    home.chmod(0o700)  # root's: "nobody" may not look inside
    work = tmp_path / "work"
    work.mkdir(mode=0o777)
    work.chmod(0o777)
    tmp_path.chmod(0o755)
    code = ("import sys; from fruix_core.cli.main import main; "
            "sys.exit(main(['config', 'check']))")
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           sys.executable, "-c", code], cwd=work, capture_output=True,
                          text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "XDG_CONFIG_HOME": str(home)})
    assert proc.returncode == 2, proc.stderr
    assert "internal error" not in proc.stderr and proc.stderr.count("\n") == 1
    assert str(home / "fruix" / "config.toml") in proc.stderr
    assert "Permission denied" in proc.stderr


def test_a_config_that_is_not_utf8_is_one_clear_error(tmp_path):
    from fruix_core.config import load_config
    from fruix_core.errors import ConfigError

    path = tmp_path / "fruix.toml"
    data = b'[build]\nexecutor = "caf\xe9"\n'
    path.write_bytes(data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    where = data.index(b"\xe9")
    assert str(path) in str(info.value) and f"not UTF-8 at byte {where}" in str(info.value)
