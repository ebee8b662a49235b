"""Operator configuration (TOML).

Looked up in order: ``--config FILE``; ``./fruix.toml``; the user's config
directory (``$XDG_CONFIG_HOME/fruix/config.toml``, else
``~/.config/fruix/config.toml``). Every key has a default, so no file at all
builds the bundled sample base with the ``local`` executor under ``./.fruix/``.
Relative paths in a file are relative to that file's directory.

The store, results and build directories default to one base directory
(:func:`base_directory`): ``paths.base`` when set (``"xdg"``:
``$XDG_DATA_HOME/fruix``), else ``.fruix`` beside the config file, else
``./.fruix`` when there is no config file at all. Once a config file is used,
no default depends on the working directory.

Plugins declare the keys of their own tables (``[executors.NAME]``,
``[guests.NAME]``, ``[observers.NAME]``) with :class:`Key`; the core checks
every such table against its plugin's schema before a run
(:func:`fruix_core.plugins.check_settings`, ``fruix config check``).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fruix_core.errors import ConfigError
from fruix_core.model import BaseMetadata

__all__ = ["Config", "Key", "base_directory", "find_config_file", "load_config", "parse_size",
           "read_section", "read_toml", "xdg_data_directory"]


@dataclass(frozen=True, slots=True)
class Key:
    """One documented config key: its type, default and meaning."""

    type: type | tuple[type, ...]
    default: Any
    help: str = ""


#: The core's keys, by table. docs/operator/config.rst documents each of them.
SCHEMA: dict[str, dict[str, Key]] = {
    "build": {
        "executor": Key(str, "local", "executor plugin that runs the build"),
        "guest": Key(str, "", "guest provider for in-guest executors ('' = none)"),
        "jobs": Key(int, 0, "make -j value; 0 = number of CPUs"),
        "source": Key(str, "", "source tree; '' = the bundled sample base"),
        "make": Key(str, "bmake", "BSD make command (FreeBSD installs make as bmake too)"),
        "phase_timeout": Key((int, float), 0, "seconds one phase may run; 0 = no limit"),
        "promote": Key(bool, True, "promote the result into the store after a run"),
        "keep_build_area": Key(bool, False,
                               "keep a successful run's build area (default: removed)"),
        "observers": Key(list, [], "observer plugins to tell about runs (e.g. ['command'])"),
        "srcconf": Key(str, "", "src.conf for the build (SRCCONF); '' = none (/dev/null)"),
        "make_conf": Key(str, "", "make.conf for the build (__MAKE_CONF); '' = none"),
        "src_env_conf": Key(str, "", "src-env.conf for the build (SRC_ENV_CONF); '' = none"),
    },
    "base": {
        "name": Key(str, "freebsd", "declared base name"),
        "version": Key(str, "15.0-STABLE", "declared base version"),
        "arch": Key(str, "amd64", "declared architecture"),
        "kernconf": Key(str, "GENERIC", "kernel configuration (KERNCONF)"),
    },
    "paths": {
        "base": Key(str, "", "base directory of the defaults below ('' = .fruix beside the "
                    "config file, or ./.fruix without one; 'xdg' = $XDG_DATA_HOME/fruix)"),
        "store": Key(str, "", "store directory ('' = <base>/store; operators: /frx/store)"),
        "results": Key(str, "", "directory of result roots ('' = <base>/results)"),
        "build_root": Key(str, "", "heavy object/stage work area ('' = <base>/build)"),
        "min_free": Key((int, str), "auto", "free space a run needs on each file system it "
                        "writes (bytes, or '20G'); 'auto' = the last successful run's sizes"),
    },
}

PLUGIN_TABLES = ("executors", "guests", "observers")


@dataclass(frozen=True, slots=True)
class Config:
    """The effective configuration of one invocation."""

    file: str | None = None
    executor: str = "local"
    guest: str = ""
    jobs: int = 0
    source: Path | None = None
    make: str = "bmake"
    phase_timeout: float | None = None
    promote: bool = True
    keep_build_area: bool = False
    #: Declared make configuration files: (variable, path), e.g. ("SRCCONF", "/etc/x.conf").
    make_configuration: tuple[tuple[str, str], ...] = ()
    base: BaseMetadata = field(default_factory=BaseMetadata)
    store: Path = Path(".fruix/store")
    results: Path = Path(".fruix/results")
    build_root: Path = Path(".fruix/build")
    #: The base directory the path defaults derive from (see :func:`base_directory`).
    base_dir: Path = Path(".fruix")
    #: Free bytes a run needs on each file system it writes; ``None``: from the last run.
    min_free: int | None = None
    executors: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    guests: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    observers: tuple[str, ...] = ()
    observer_tables: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def effective_jobs(self) -> int:
        return self.jobs if self.jobs > 0 else (os.cpu_count() or 1)

    def executor_settings(self, name: str) -> Mapping[str, Any]:
        return self.executors.get(name, {})

    def guest_settings(self, name: str) -> Mapping[str, Any]:
        return self.guests.get(name, {})

    def observer_settings(self, name: str) -> Mapping[str, Any]:
        return self.observer_tables.get(name, {})

    def plugin_tables(self, table: str) -> Mapping[str, Mapping[str, Any]]:
        """The ``[table.NAME]`` sections of ``executors``, ``guests`` or ``observers``."""
        return {"executors": self.executors, "guests": self.guests,
                "observers": self.observer_tables}[table]


def _is_file(path: Path) -> bool:
    """Whether ``path`` is a file; a place we may not look into is a clear error."""
    try:
        return path.is_file()
    except OSError as exc:
        raise ConfigError(f"cannot look for the config file: {exc.strerror}",
                          file=path) from None


def find_config_file(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The config file to read, or ``None`` when there is none."""
    if explicit is not None:
        path = Path(explicit)
        if not _is_file(path):
            raise ConfigError("config file not found", file=path)
        return path
    local = Path("fruix.toml")
    if _is_file(local):
        return local
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    user = Path(base) / "fruix" / "config.toml"
    return user if _is_file(user) else None


def _type_name(expected: type | tuple[type, ...]) -> str:
    types = expected if isinstance(expected, tuple) else (expected,)
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             dict: "a table", list: "an array"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _check(value: Any, key: Key, *, file: str | None, name: str) -> Any:
    expected = key.type if isinstance(key.type, tuple) else (key.type,)
    # bool is an int in Python; TOML keeps them apart, so do we.
    if isinstance(value, bool) and bool not in expected:
        raise ConfigError(f"expected {_type_name(key.type)}, got a boolean", file=file, key=name)
    if not isinstance(value, expected):
        raise ConfigError(f"expected {_type_name(key.type)}, got {type(value).__name__}",
                          file=file, key=name)
    return value


def read_section(section: Mapping[str, Any], schema: Mapping[str, Key], *,
                 file: str | None, prefix: str) -> dict[str, Any]:
    """Validate one table against ``schema``: types checked, unknown keys refused.

    :returns: every key of ``schema`` with its value or default.
    :raises ConfigError: naming ``file`` and ``prefix.key``.
    """
    if not isinstance(section, Mapping):
        raise ConfigError("expected a table", file=file, key=prefix)
    for name in section:
        if name not in schema:
            known = ", ".join(sorted(schema)) or "none"
            raise ConfigError(f"unknown key (known: {known})", file=file, key=f"{prefix}.{name}")
    out: dict[str, Any] = {}
    for name, key in schema.items():
        if name in section:
            out[name] = _check(section[name], key, file=file, name=f"{prefix}.{name}")
        else:
            out[name] = key.default
    return out


def _resolve(value: str, anchor: Path) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else anchor / path


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a TOML file; unreadable or malformed files raise :class:`ConfigError` naming it."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=os.fspath(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not valid TOML: not UTF-8 at byte {exc.start}",
                          file=os.fspath(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=os.fspath(path)) from None


#: Multipliers of the ``paths.min_free`` suffixes (binary: ``1K`` = 1024 bytes).
_SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: int | str, *, file: str | None, key: str) -> int | None:
    """Bytes of a size setting (``1073741824``, ``"512M"``, ``"20G"``); ``None`` for ``"auto"``."""
    if isinstance(value, int):
        if value < 0:
            raise ConfigError("must be 0 or more bytes", file=file, key=key)
        return value
    text = value.strip().upper().removesuffix("IB").removesuffix("B")
    if value.strip() == "auto":
        return None
    number, suffix = text, ""
    if text and text[-1] in _SIZE_SUFFIXES:
        number, suffix = text[:-1], text[-1]
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if not number or amount < 0 or amount != amount:
        raise ConfigError(f"expected a size such as 20G, 512M or a number of bytes, or 'auto'; "
                          f"got {value!r}", file=file, key=key)
    return int(amount * _SIZE_SUFFIXES[suffix])


def xdg_data_directory() -> Path:
    """``$XDG_DATA_HOME/fruix``, by default ``~/.local/share/fruix``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                           "share")
    return Path(base) / "fruix"


def base_directory(value: str, config_dir: Path | None) -> Path:
    """The directory the store, results and build defaults live in.

    :param value: ``paths.base``: ``""`` (the default), ``"xdg"``, or a path
        (relative to the config file's directory).
    :param config_dir: the config file's directory; ``None`` without a file.
    :returns: ``value`` resolved; else ``.fruix`` beside the config file; else
        ``./.fruix`` in the working directory (no config file at all).
    """
    if value == "xdg":
        return xdg_data_directory()
    if value:
        return _resolve(value, config_dir if config_dir is not None else Path.cwd())
    return (config_dir if config_dir is not None else Path.cwd()) / ".fruix"


def load_config(explicit: str | os.PathLike[str] | None = None) -> Config:
    """Find, parse and validate the configuration.

    :raises ConfigError: unreadable file, TOML syntax error, unknown table or
        key, wrong type, invalid value; the message names the file and key.
    """
    path = find_config_file(explicit)
    data: dict[str, Any] = {}
    file: str | None = None
    anchor = Path.cwd()
    if path is not None:
        file = str(path)
        data = read_toml(path)
        anchor = path.resolve().parent
    for table in data:
        if table not in SCHEMA and table not in PLUGIN_TABLES:
            known = ", ".join(sorted([*SCHEMA, *PLUGIN_TABLES]))
            raise ConfigError(f"unknown table (known: {known})", file=file, key=table)
    values = {t: read_section(data.get(t, {}), SCHEMA[t], file=file, prefix=t) for t in SCHEMA}
    plugin_tables: dict[str, dict[str, Mapping[str, Any]]] = {}
    for table in PLUGIN_TABLES:
        raw = data.get(table, {})
        if not isinstance(raw, Mapping):
            raise ConfigError("expected a table of tables", file=file, key=table)
        for name, section in raw.items():
            if not isinstance(section, Mapping):
                raise ConfigError("expected a table", file=file, key=f"{table}.{name}")
        plugin_tables[table] = {name: dict(section) for name, section in raw.items()}

    build, base, paths = values["build"], values["base"], values["paths"]
    if build["jobs"] < 0:
        raise ConfigError("must be 0 (all CPUs) or more", file=file, key="build.jobs")
    if build["phase_timeout"] < 0:
        raise ConfigError("must be 0 (no limit) or more", file=file, key="build.phase_timeout")
    if not build["executor"]:
        raise ConfigError("must name an executor", file=file, key="build.executor")
    if not build["make"].strip():
        raise ConfigError("must name a make command", file=file, key="build.make")
    for key in ("name", "version", "arch", "kernconf"):
        value = base[key]
        if not value or any(c.isspace() or c in "/\\\"'" for c in value):
            raise ConfigError("must be a non-empty word without spaces, quotes or slashes",
                              file=file, key=f"base.{key}")
    observers = build["observers"]
    if not all(isinstance(n, str) and n for n in observers):
        raise ConfigError("must be a list of observer names", file=file, key="build.observers")
    # Values from a file are relative to the file; defaults live in one base directory.
    base_dir = base_directory(paths["base"], anchor if path is not None else None)
    defaults = {"store": "store", "results": "results", "build_root": "build"}

    def path_of(key: str) -> Path:
        value = paths[key]
        return _resolve(value, anchor) if value else base_dir / defaults[key]

    min_free = parse_size(paths["min_free"], file=file, key="paths.min_free")

    source = _resolve(build["source"], anchor) if build["source"] else None
    declared = tuple((variable, str(_resolve(build[key], anchor)))
                     for key, variable in (("srcconf", "SRCCONF"), ("make_conf", "__MAKE_CONF"),
                                           ("src_env_conf", "SRC_ENV_CONF"))
                     if build[key])
    return Config(
        file=file,
        executor=build["executor"],
        guest=build["guest"],
        jobs=build["jobs"],
        source=source,
        make=build["make"],
        phase_timeout=float(build["phase_timeout"]) or None,
        promote=build["promote"],
        keep_build_area=build["keep_build_area"],
        make_configuration=declared,
        base=BaseMetadata(name=base["name"], version=base["version"], arch=base["arch"],
                          kernconf=base["kernconf"]),
        store=path_of("store"),
        results=path_of("results"),
        build_root=path_of("build_root"),
        base_dir=base_dir,
        min_free=min_free,
        executors=plugin_tables["executors"],
        guests=plugin_tables["guests"],
        observers=tuple(observers),
        observer_tables=plugin_tables["observers"],
    )
