"""What a run's artifacts are built from, recorded when it starts and checked on ``--resume``.

A resumed run continues the phases of the first attempt: its build area
holds objects made from one source tree, one base declaration, one make,
one build profile, one environment policy and one set of pinned make
configuration files. Resuming with any of them changed would record a run
that was never built. So each run records them (``config_*`` keys of its
metadata, and their digest ``config_digest``), and ``--resume`` refuses a
configuration whose digest differs, naming each component that changed.

The source tree is identified cheaply: its path and the SHA-256 of its
identity files (``Makefile``, ``Makefile.inc1``, ``sys/conf/newvers.sh``) and,
in a git work tree, the checked-out commit. Its full tree signature is
recorded by the executor once the build environment is prepared
(``source_signature``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

from fruix_core.config import Config
from fruix_core.environment import ENVIRONMENT_POLICY
from fruix_core.profile import PHASES, make_configuration_policy

__all__ = ["IDENTITY_FILES", "configuration_identity", "identity_changes"]

#: Files of a FreeBSD source tree that say which tree and which version it is.
IDENTITY_FILES = ("Makefile", "Makefile.inc1", "sys/conf/newvers.sh")

#: Component key -> how the refusal names it.
LABELS = {
    "config_source": "source",
    "config_source_files": "source identity files",
    "config_base": "base",
    "config_make": "make",
    "config_profile": "build profile",
    "config_environment_policy": "environment policy",
    "config_make_configuration": "pinned make configuration",
}


def _git_commit(source: Path) -> str:
    """The commit a git work tree has checked out ('' when it is none or unreadable)."""
    git = source / ".git"
    try:
        head = (git / "HEAD").read_text(encoding="utf-8").strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        loose = git / ref
        if loose.is_file():
            return loose.read_text(encoding="utf-8").strip()
        for line in (git / "packed-refs").read_text(encoding="utf-8").splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        return ""
    return ""


def _source_files_digest(source: Path) -> str:
    digest = hashlib.sha256()
    for rel in IDENTITY_FILES:
        try:
            content = (source / rel).read_bytes()
        except OSError:
            continue
        digest.update(f"{rel}\0{len(content)}\0".encode())
        digest.update(content)
    commit = _git_commit(source)
    if commit:
        digest.update(f"git\0{commit}".encode())
    return "sha256:" + digest.hexdigest()


def _profile_digest() -> str:
    text = repr([(p.name, p.target, p.variables, p.environment, p.flags, p.parallel)
                 for p in PHASES])
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def configuration_identity(config: Config, source_dir: Path,
                           make_configuration: Iterable[tuple[str, bytes]]
                           ) -> dict[str, str]:
    """The ``config_*`` metadata of a run and their digest ``config_digest``.

    :param source_dir: the source tree the run builds (the sample base when
        none is configured).
    :param make_configuration: the declared make configuration files, as read
        for the run (:func:`~fruix_core.profile.read_make_configuration`).
    """
    base = config.base
    pinned = make_configuration_policy(make_configuration)
    values = {
        "config_source": str(source_dir),
        "config_source_files": _source_files_digest(source_dir),
        "config_base": f"{base.name} {base.version} {base.arch} {base.kernconf}",
        "config_make": config.make,
        "config_profile": _profile_digest(),
        "config_environment_policy": ENVIRONMENT_POLICY,
        "config_make_configuration": " ".join(f"{var}={value}" for var, value in pinned),
    }
    text = "".join(f"{key}={values[key]}\n" for key in sorted(values))
    return {"config_digest": "sha256:" + hashlib.sha256(text.encode()).hexdigest(), **values}


def identity_changes(recorded: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """What changed between a run's recorded identity and ``current``, one phrase each.

    Empty when the digests match, or when the run recorded none (a run from
    before identities were recorded is not checked).
    """
    if "config_digest" not in recorded or recorded["config_digest"] == current["config_digest"]:
        return []
    changes = [f"{label} changed: {recorded.get(key) or '(none)'} → {current[key]}"
               for key, label in LABELS.items() if recorded.get(key) != current.get(key)]
    return changes or ["configuration digest changed: "
                       f"{recorded['config_digest']} → {current['config_digest']}"]
