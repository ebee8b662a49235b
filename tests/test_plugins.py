"""Discovery through entry points, loading, failure isolation, and a real installed plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sysconfig
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

from fruix_core import hookimpl
from fruix_core.errors import ExitCode, PluginLoadError, UnknownPluginError
from fruix_core.plugins import discover, load_plugin, make_plugin_manager
from fruix_core.testkit import run_cli as fruix

REPO = Path(__file__).resolve().parents[1]


def write_fake_dist(root: Path, dist: str, module: str, source: str, entry_points: str) -> None:
    """A minimal installed distribution (module + .dist-info) on a path entry."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


@pytest.fixture
def fake_plugins(tmp_path, monkeypatch):
    root = tmp_path / "site"
    root.mkdir()
    write_fake_dist(root, "fruix-broken", "fruix_broken_plugin",
                    "raise ImportError('this plugin is broken on purpose')\n",
                    "[fruix.executors]\nbroken = fruix_broken_plugin:Executor\n")
    write_fake_dist(root, "fruix-echo", "fruix_echo_plugin", '''
        class Provider:
            """Echo guest provider for tests."""
        ''', "[fruix.guest_providers]\necho = fruix_echo_plugin:Provider\n")
    monkeypatch.syspath_prepend(str(root))
    return root


def test_discover_lists_installed_plugins_with_metadata():
    infos = {i.name: i for i in discover()}
    local = infos["local"]
    assert local.kind == "executor" and local.error is None
    assert local.distribution == "fruix-executor-local" and local.version
    assert local.description.startswith("Builds the native base on this machine")


def test_broken_plugin_is_reported_and_others_work(fake_plugins):
    infos = {i.name: i for i in discover()}
    assert "this plugin is broken on purpose" in infos["broken"].error
    assert infos["broken"].distribution == "fruix-broken"
    assert infos["local"].error is None
    assert infos["echo"].kind == "guest-provider" and infos["echo"].version == "1.2.3"
    with pytest.raises(PluginLoadError,
                       match=r"executor plugin 'broken' \(fruix-broken 1.2.3\) failed to load"):
        load_plugin("executor", "broken")
    assert load_plugin("executor", "local").name == "local"


def test_unknown_name_lists_what_is_installed():
    with pytest.raises(UnknownPluginError) as info:
        load_plugin("executor", "no-such-executor")
    assert "unknown executor 'no-such-executor'" in str(info.value)
    assert "local" in str(info.value)
    assert info.value.exit_code == ExitCode.USAGE


def test_blocked_plugins_are_hidden(monkeypatch):
    monkeypatch.setenv("FRUIX_BLOCK_PLUGINS", "local")
    assert "local" not in {i.name for i in discover()}
    with pytest.raises(UnknownPluginError):
        load_plugin("executor", "local")


def test_cli_list_survives_a_broken_plugin(fake_plugins, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(fake_plugins))
    proc = fruix("executors", "list", "--json", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    listing = {d["name"]: d for d in json.loads(proc.stdout)["plugins"]}
    assert set(listing["local"]) >= {"name", "kind", "version", "distribution", "description"}
    assert "broken on purpose" in listing["broken"]["error"]
    assert "Traceback" not in proc.stderr
    human = fruix("executors", "list", cwd=tmp_path, env=env)
    assert human.returncode == 0 and "BROKEN" in human.stdout


class Spy:
    """Records the order of hook calls around the real executor (new-style wrappers)."""

    def __init__(self):
        self.calls = []

    @hookimpl(wrapper=True)
    def fruix_prepare_env(self, request):
        self.calls.append(("fruix_prepare_env", request.run_id))
        return (yield)

    @hookimpl(wrapper=True)
    def fruix_run_phase(self, request, env, phase):
        self.calls.append(("fruix_run_phase", phase.name))
        result = yield
        assert result.phase == phase.name
        return result

    @hookimpl(wrapper=True)
    def fruix_stage_artifacts(self, request, env):
        self.calls.append(("fruix_stage_artifacts", env.result_root))
        return (yield)

    @hookimpl(wrapper=True)
    def fruix_emit_promotion(self, request, env, staged):
        self.calls.append(("fruix_emit_promotion", tuple(staged.kinds)))
        return (yield)


def test_hooks_called_in_order_with_the_right_data(toy_source, fruix_workspace):
    from fruix_local import LocalExecutor

    from fruix_core.config import load_config
    from fruix_core.runner import run_build

    config = load_config(fruix_workspace.write_config(source=toy_source))
    spy = Spy()
    # make_plugin_manager is what the runner uses; check the spy composes with an executor.
    pm = make_plugin_manager(LocalExecutor(), spy)
    assert len(pm.pm.get_plugins()) == 2
    outcome = run_build(config, promote=False, extra_plugins=(spy,))
    names = [c[0] for c in spy.calls]
    assert names == ["fruix_prepare_env"] + ["fruix_run_phase"] * 5 + [
        "fruix_stage_artifacts", "fruix_emit_promotion"]
    assert [c[1] for c in spy.calls[1:6]] == [
        "buildworld", "buildkernel", "installworld", "distribution", "installkernel"]
    assert spy.calls[0][1] == outcome.run_id
    assert spy.calls[-1][1] == ("world", "kernel", "headers", "bootloader")


def _site_packages() -> str:
    return sysconfig.get_paths()["purelib"]


def _build_wheel(dest: Path) -> Path:
    """Build the throwaway plugin's wheel by hand (a wheel is a zip with .dist-info)."""
    name, version = "fruix_throwaway", "0.0.1"
    files = {
        "fruix_throwaway/__init__.py": textwrap.dedent('''\
            """A throwaway executor distribution built by the test suite."""
            from fruix_local import LocalExecutor


            class ThrowawayExecutor(LocalExecutor):
                """Throwaway executor: the local build under another name."""

                name = "throwaway"
                version = "0.0.1"
            '''),
        f"{name}-{version}.dist-info/METADATA":
            f"Metadata-Version: 2.1\nName: fruix-throwaway\nVersion: {version}\n",
        f"{name}-{version}.dist-info/WHEEL":
            "Wheel-Version: 1.0\nGenerator: fruix-tests\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n",
        f"{name}-{version}.dist-info/entry_points.txt":
            "[fruix.executors]\nthrowaway = fruix_throwaway:ThrowawayExecutor\n",
    }
    record = f"{name}-{version}.dist-info/RECORD"
    files[record] = "".join(f"{p},,\n" for p in files) + f"{record},,\n"
    wheel = dest / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


@pytest.mark.slow
def test_installed_outside_plugin_is_discovered_and_selected(tmp_path, toy_source):
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    query = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = subprocess.run([python, "-c", query], capture_output=True, text=True,
                          check=True).stdout.strip()
    # The new environment sees this one's packages (core and local executor), nothing more.
    parent = f"import site; site.addsitedir({_site_packages()!r})\n"
    Path(site, "fruix-parent.pth").write_text(parent)
    wheel = _build_wheel(tmp_path)
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", str(wheel)],
                   check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    listing = subprocess.run([python, "-m", "fruix_core.cli.main", "executors", "list", "--json"],
                             cwd=tmp_path, env=env, capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    found = {d["name"]: d for d in json.loads(listing.stdout)["plugins"]}
    assert found["throwaway"]["distribution"] == "fruix-throwaway"
    assert found["throwaway"]["version"] == "0.0.1"

    conf = tmp_path / "fruix.toml"
    conf.write_text(f'[build]\nexecutor = "throwaway"\nsource = "{toy_source}"\npromote = false\n')
    run = subprocess.run([python, "-m", "fruix_core.cli.main", "native-build", "run", "--json"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["executor"] == "throwaway" and doc["status"] == "ok"
    assert (Path(doc["result_root"]) / "status").read_text() == "ok\n"
    assert "executor=throwaway" in (Path(doc["result_root"]) / "metadata").read_text()
    assert not list(REPO.glob("fruix_core/**/throwaway*"))  # no change to the core
