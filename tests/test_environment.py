from __future__ import annotations

from fruix_core.environment import (
    BASE_PATH,
    ENVIRONMENT_POLICY,
    REMOVED,
    policy_description,
    sanitised_environment,
)

POLLUTED = {
    "PATH": "/tmp/evil:/usr/bin", "MAKEFLAGS": "-j99 -e", "CC": "false", "CXX": "false",
    "AR": "false", "RANLIB": "false", "NM": "false", "CPPFLAGS": "-DEVIL", "CFLAGS": "-O9",
    "CXXFLAGS": "-O9", "LDFLAGS": "-lnope", "FRUIX_DEVELOPMENT_PROFILE": "/frx/store/x",
    "FRUIX_CC": "clang", "HOME": "/root", "USER": "root", "LD_PRELOAD": "/evil.so",
}


def test_polluted_environment_is_reset():
    env = sanitised_environment(POLLUTED)
    assert env["PATH"] == BASE_PATH
    for name in REMOVED:
        assert name not in env
    assert not [k for k in env if k.startswith("FRUIX_")]
    assert env["HOME"] == "/root" and env["USER"] == "root"
    assert env["LC_ALL"] == "C" and env["TZ"] == "UTC"


def test_only_known_names_survive():
    env = sanitised_environment({"RANDOM_TOOL_VAR": "1", "HOME": "/h"})
    assert set(env) == {"HOME", "PATH", "LC_ALL", "LANG", "TZ"}


def test_policy_is_described():
    desc = policy_description()
    assert desc["environment_policy"] == ENVIRONMENT_POLICY
    assert desc["environment_path"] == BASE_PATH
