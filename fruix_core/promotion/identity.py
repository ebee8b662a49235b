"""Store object identity: what goes into a name, and how it is hashed.

An *identity document* is an S-expression; its canonical one-line form
(:func:`~fruix_core.promotion.sexp.dumps_compact`, ASCII) is hashed with
SHA-256 and the first 40 hex digits prefix the object name.

Artifact identity (what was built and how, plus the content)::

    (fruix-native-artifact-identity
      (format-version 1)
      (kind "world")
      (base (name "freebsd") (version "15.0-STABLE") (arch "amd64") (kernconf "GENERIC"))
      (source-signature "sha256:...")
      (build-policy (phases "buildworld" ...) (environment-policy "...") (make "bmake")
                    (make-configuration ("SRCCONF" "/dev/null") ("__MAKE_CONF" "sha256:...")
                                        ("SRC_ENV_CONF" "/dev/null")))
      (executor "local")
      (executor-version "0.1.0")
      (tree-signature "sha256:<hex>")
      (manifest-sha256 "<hex>"))

Run id, host names, closure and profile paths, timestamps, result-root
paths and ``-j`` (the build machine's, not the build's) are deliberately
absent, so reproducible runs share artifact objects.
Bundle identity carries the run's provenance and the artifact store paths::

    (fruix-native-build-result-identity
      (format-version 1)
      (version "15.0-STABLE")
      (artifacts ("world" "/frx/store/...") ("kernel" "...") ("headers" "...")
                 ("bootloader" "..."))
      (run-id "...") (guest-host-name "...") (closure-path "..." or #f)
      (development-profile-path "..." or #f) (executor "local") (executor-version "0.1.0")
      (jobs 8))

Names: ``<h40>-fruix-native-<kind>-<version>-<executor>`` and
``<h40>-fruix-native-build-result-<version>-<executor>``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

from fruix_core.model import ARTIFACT_KINDS, Promotion
from fruix_core.promotion.schema import FORMAT_VERSION
from fruix_core.promotion.sexp import Datum, Symbol, dumps_compact

__all__ = [
    "ARTIFACT_IDENTITY_FORM",
    "BUNDLE_IDENTITY_FORM",
    "HASH_LENGTH",
    "artifact_identity",
    "artifact_name",
    "bundle_identity",
    "bundle_name",
    "identity_hash",
    "store_path_text",
]

ARTIFACT_IDENTITY_FORM = "fruix-native-artifact-identity"
BUNDLE_IDENTITY_FORM = "fruix-native-build-result-identity"
#: Hex digits of the identity hash that prefix a store name.
HASH_LENGTH = 40


def identity_hash(document: Datum) -> str:
    """First 40 hex digits of SHA-256 over the canonical one-line form of ``document``."""
    text = dumps_compact(document).encode("ascii")
    return hashlib.sha256(text).hexdigest()[:HASH_LENGTH]


def artifact_identity(promotion: Promotion, kind: str, tree_signature: str,
                      manifest_sha256: str) -> list[Datum]:
    """The identity document of one artifact (see the module docstring)."""
    s = Symbol
    base, policy = promotion.base, promotion.policy
    return [
        s(ARTIFACT_IDENTITY_FORM),
        [s("format-version"), FORMAT_VERSION],
        [s("kind"), kind],
        [s("base"), [s("name"), base.name], [s("version"), base.version],
         [s("arch"), base.arch], [s("kernconf"), base.kernconf]],
        [s("source-signature"), promotion.source.signature],
        [s("build-policy"), [s("phases"), *policy.phases],
         [s("environment-policy"), policy.environment_policy], [s("make"), policy.make],
         [s("make-configuration"), *[[k, v] for k, v in policy.make_configuration]]],
        [s("executor"), promotion.executor],
        [s("executor-version"), promotion.executor_version],
        [s("tree-signature"), "sha256:" + tree_signature],
        [s("manifest-sha256"), manifest_sha256],
    ]


def store_path_text(path: str | os.PathLike[str] | bytes) -> str:
    """How a store path is written in identity documents and metadata.

    Its bytes decoded as UTF-8 when they are UTF-8 (the common case, ASCII
    included); otherwise each byte as the character of the same number
    (Latin-1), so any path the file system accepts can be recorded and Guile
    reads it. :func:`fruix store verify <fruix_core.promotion.verify.verify>`
    applies the same function to the symlinks it finds.
    """
    raw = os.fsencode(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def artifact_name(document: Datum, kind: str, version: str, executor: str) -> str:
    """``<h40>-fruix-native-<kind>-<version>-<executor>`` for an identity document."""
    return f"{identity_hash(document)}-fruix-native-{kind}-{version}-{executor}"


def bundle_identity(promotion: Promotion, artifacts: Mapping[str, str]) -> list[Datum]:
    """The identity document of a run's result bundle.

    :param artifacts: kind -> absolute store path of the artifact object.
    """
    s = Symbol
    links: list[Datum] = [s("artifacts")]
    links.extend([kind, artifacts[kind]] for kind in ARTIFACT_KINDS if kind in artifacts)
    return [
        s(BUNDLE_IDENTITY_FORM),
        [s("format-version"), FORMAT_VERSION],
        [s("version"), promotion.base.version],
        links,
        [s("run-id"), promotion.run_id],
        [s("guest-host-name"), promotion.guest_host_name],
        [s("closure-path"), promotion.closure_path or False],
        [s("development-profile-path"), promotion.development_profile_path or False],
        [s("executor"), promotion.executor],
        [s("executor-version"), promotion.executor_version],
        [s("jobs"), promotion.policy.jobs],
    ]


def bundle_name(document: Datum, version: str, executor: str) -> str:
    """``<h40>-fruix-native-build-result-<version>-<executor>``."""
    return f"{identity_hash(document)}-fruix-native-build-result-{version}-{executor}"
