"""Shared fixtures of the core's tests; most come from the plugin authors' kit
(:mod:`fruix_core.testkit`, loaded as a pytest plugin)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fruix_core.testkit import run_cli, write_plugin_dist

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def toy_source(fruix_toy_source: Path) -> Path:
    return fruix_toy_source


@pytest.fixture
def run_fruix():
    return run_cli


#: Deliberately broken executors, each a real distribution on sys.path (see broken_plugins).
HEADER = '''
import dataclasses
from pathlib import Path

from fruix_core.api import (
    PLUGIN_API_VERSION, EmittedResult, build_promotion, hookimpl, write_promotion)
from fruix_local import LocalExecutor
'''

#: name -> (class body); each becomes a LocalExecutor subclass in its own distribution.
BROKEN = {
    "returns-dict": '''
    @hookimpl
    def fruix_prepare_env(self, request):
        return {"build_root": "/tmp"}
''',
    "returns-none": '''
    @hookimpl
    def fruix_stage_artifacts(self, request, env):
        return None
''',
    "crashes": '''
    @hookimpl
    def fruix_run_phase(self, request, env, phase):
        return env.no_such_attribute
''',
    "extra-arg": '''
    @hookimpl
    def fruix_prepare_env(self, request, extra):
        return None
''',
    "impostor": '''
    @hookimpl
    def fruix_emit_promotion(self, request, env, staged):
        promotion = dataclasses.replace(build_promotion(request, env, staged), executor="local")
        write_promotion(promotion, Path(env.result_root) / "promotion.scm")
        return EmittedResult(result_root=Path(env.result_root), promotion=promotion)
''',
    "old-version": '''
    @hookimpl
    def fruix_emit_promotion(self, request, env, staged):
        promotion = build_promotion(request, env, staged, "0.0.1")
        write_promotion(promotion, Path(env.result_root) / "promotion.scm")
        return EmittedResult(result_root=Path(env.result_root), promotion=promotion)
''',
    "other-root": '''
    @hookimpl
    def fruix_emit_promotion(self, request, env, staged):
        other = request.results_dir / "elsewhere"
        other.mkdir(exist_ok=True)
        promotion = build_promotion(request, env, staged)
        write_promotion(promotion, other / "promotion.scm")
        return EmittedResult(result_root=other, promotion=promotion)
''',
    "api-99": '''
    fruix_plugin_api = 99
''',
    "no-api": '''
    fruix_plugin_api = None
''',
}


def _module(name: str) -> str:
    return "fruix_test_" + name.replace("-", "_")


@pytest.fixture
def broken_plugins(tmp_path_factory, monkeypatch):
    site = tmp_path_factory.mktemp("site")
    for name, body in BROKEN.items():
        source = HEADER + f'''

class Executor(LocalExecutor):
    """Deliberately broken executor: {name}."""

    fruix_plugin_api = PLUGIN_API_VERSION
''' + body
        write_plugin_dist(site / name, f"fruix-test-{name}", _module(name), source,
                          f"[fruix.executors]\n{name} = {_module(name)}:Executor\n")
        monkeypatch.syspath_prepend(str(site / name))
    yield site
    for name in BROKEN:
        sys.modules.pop(_module(name), None)


