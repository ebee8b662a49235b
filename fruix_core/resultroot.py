"""The result root: one layout, written by every executor.

::

    <results>/<run-id>/
      status          running pid=<pid> host=<host> | ok | failed <phase>
      metadata        key=value lines
      promotion.scm   the promotion description
      logs/<phase>.log
      artifacts/world/ kernel/ headers/ bootloader/
    <results>/latest -> <run-id>     swapped atomically (new link + rename)

Run ids are UTC timestamps (``20260405T150359Z``), suffixed ``-1``, ``-2``, ...
on collision; a run id is reserved by creating its directory, so two
concurrent runs never share one.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import os
import posixpath
import shutil
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from fruix_core.environment import policy_description
from fruix_core.errors import PromotionInputError, RunNotFoundError, StoreError
from fruix_core.model import (
    ARTIFACT_KINDS,
    ArtifactEntry,
    BuildPolicy,
    BuildRequest,
    PreparedEnv,
    Promotion,
    StagedArtifacts,
)
from fruix_core.profile import KEY_FILES, BuildPaths, artifact_split, make_configuration_policy

__all__ = [
    "ResultRoot",
    "RunStatus",
    "build_metadata",
    "build_promotion",
    "key_file_digests",
    "list_runs",
    "new_run_id",
    "resolve_run",
    "stage_trees",
    "staged_artifacts",
    "swap_latest",
    "tree_size",
]

LATEST = "latest"


@dataclass(frozen=True, slots=True)
class RunStatus:
    """The parsed ``status`` file."""

    state: str  # running | ok | failed | missing
    phase: str | None = None
    pid: int | None = None
    host: str | None = None
    stale: bool = False

    def __str__(self) -> str:
        if self.state == "failed" and self.phase:
            return f"failed ({self.phase})"
        if self.state == "running" and self.stale:
            return "stale (running, but its process is gone)"
        return self.state


def _utc_stamp(now: _dt.datetime | None = None) -> str:
    now = now or _dt.datetime.now(_dt.UTC)
    return now.strftime("%Y%m%dT%H%M%SZ")


def new_run_id(results_dir: Path, now: _dt.datetime | None = None) -> str:
    """Reserve and return a fresh run id under ``results_dir``."""
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = _utc_stamp(now)
    for n in range(0, 10_000):
        candidate = stamp if n == 0 else f"{stamp}-{n}"
        try:
            (results_dir / candidate).mkdir()
        except FileExistsError:
            continue
        return candidate
    raise StoreError(f"{results_dir}: cannot allocate a run id for {stamp}")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        # Paths from a non-UTF-8 file system name are kept byte for byte.
        with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:  # a full disk leaves no half-written temporary file behind
            tmp.unlink()
        except OSError:
            pass
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ResultRoot:
    """One run's result root on the local filesystem."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def artifacts(self) -> Path:
        return self.path / "artifacts"

    @property
    def promotion_file(self) -> Path:
        return self.path / "promotion.scm"

    @property
    def metadata_file(self) -> Path:
        return self.path / "metadata"

    def log_path(self, phase: str) -> Path:
        return self.logs / f"{phase}.log"

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self.set_running()

    # -- status -------------------------------------------------------------------

    def set_running(self) -> None:
        _write_atomic(self.path / "status",
                      f"running pid={os.getpid()} host={socket.gethostname()}\n")

    def set_ok(self) -> None:
        _write_atomic(self.path / "status", "ok\n")

    def set_failed(self, phase: str) -> None:
        _write_atomic(self.path / "status", f"failed {phase}\n")

    def record_failure(self, phase: str) -> None:
        """Leave ``failed <phase>`` unless a failure is already recorded; never raises.

        Used on every way out of a run that did not finish, so a result root
        never keeps saying ``running`` (or ``ok``) after one.
        """
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            if self.status().state != "failed":
                try:
                    self.set_failed(phase)
                except OSError:
                    # A full disk has no room for a new file; the old status file's own
                    # block takes the shorter text in place.
                    self._overwrite_status(f"failed {phase}\n")
        except OSError as exc:
            import structlog

            structlog.get_logger(__name__).error(
                "cannot record failure", result_root=str(self.path), error=str(exc))

    def _overwrite_status(self, text: str) -> None:
        fd = os.open(self.path / "status", os.O_WRONLY | os.O_NOFOLLOW)
        try:
            data = text.encode("utf-8", "surrogateescape")
            if os.fstat(fd).st_size < len(data):
                raise OSError(errno.ENOSPC, "no room to record the failure in place")
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)

    def status(self) -> RunStatus:
        try:
            text = (self.path / "status").read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return RunStatus("missing")
        words = text.split()
        if not words:
            return RunStatus("missing")
        state = words[0]
        if state == "failed":
            return RunStatus("failed", phase=words[1] if len(words) > 1 else None)
        if state == "running":
            fields = dict(w.split("=", 1) for w in words[1:] if "=" in w)
            pid = int(fields["pid"]) if fields.get("pid", "").isdigit() else None
            host = fields.get("host")
            stale = bool(pid and host == socket.gethostname() and not _pid_alive(pid))
            return RunStatus("running", pid=pid, host=host, stale=stale)
        return RunStatus(state)

    # -- metadata -------------------------------------------------------------------

    def write_metadata(self, values: Mapping[str, object]) -> None:
        lines = []
        for key, value in values.items():
            text = str(value)
            if "\n" in text or "=" in key:
                raise PromotionInputError(f"metadata {key!r}: value must be one line")
            lines.append(f"{key}={text}\n")
        _write_atomic(self.metadata_file, "".join(lines))

    def record_promotion(self, bundle: Path, artifacts: Mapping[str, Path]) -> bool:
        """Add what a promotion published to ``metadata``: ``bundle=`` and ``artifact_<kind>=``.

        Bookkeeping after the store holds the objects: a result root that
        cannot be written (another user's, a full disk) is logged, not fatal.

        :returns: whether it was recorded.
        """
        if self.metadata_file.is_symlink() or not self.metadata_file.is_file():
            return False  # a result root without metadata does not get one now
        values = self.read_metadata()
        values["bundle"] = os.fsdecode(bundle)
        values.update({f"artifact_{kind}": os.fsdecode(path) for kind, path in artifacts.items()})
        try:
            self.write_metadata(values)
        except (OSError, PromotionInputError) as err:
            import structlog

            structlog.get_logger(__name__).warning(
                "the promotion is not recorded in the result root", result_root=str(self.path),
                error=str(err))
            return False
        return True

    def read_metadata(self) -> dict[str, str]:
        try:
            text = self.metadata_file.read_text(encoding="utf-8", errors="surrogateescape")
        except FileNotFoundError:
            return {}
        out: dict[str, str] = {}
        for line in text.splitlines():
            if "=" in line:
                key, value = line.split("=", 1)
                out[key] = value
        return out


def swap_latest(results_dir: Path, run_id: str) -> None:
    """Point ``<results>/latest`` at ``run_id`` atomically (new link, then rename)."""
    tmp = results_dir / f".{LATEST}.tmp-{os.getpid()}"
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    os.symlink(run_id, tmp)
    os.replace(tmp, results_dir / LATEST)


def resolve_run(results_dir: Path, run_id: str) -> ResultRoot:
    """The result root of ``run_id`` (``latest`` allowed)."""
    if "/" in run_id or run_id in ("", ".", ".."):
        raise RunNotFoundError(f"invalid run id '{run_id}'")
    path = results_dir / run_id
    if run_id == LATEST and path.is_symlink():
        path = results_dir / os.readlink(path)
    if not path.is_dir():
        raise RunNotFoundError(f"no run '{run_id}' in {results_dir}")
    return ResultRoot(path)


def list_runs(results_dir: Path) -> list[ResultRoot]:
    """Result roots under ``results_dir``, oldest first."""
    if not results_dir.is_dir():
        return []
    roots = [ResultRoot(p) for p in results_dir.iterdir()
             if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")]
    return sorted(roots, key=lambda r: r.run_id)


# -- staging --------------------------------------------------------------------------


def _move_tree(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``: a rename, or a copy keeping hard links across filesystems."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(src, dst)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    links: dict[tuple[int, int], Path] = {}
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        target_dir = dst / rel
        target_dir.mkdir(parents=True, exist_ok=True)
        shutil.copystat(dirpath, target_dir)
        linked_dirs = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        for name in [*filenames, *linked_dirs]:
            s = Path(dirpath) / name
            t = target_dir / name
            st = os.lstat(s)
            if os.path.islink(s):
                os.symlink(os.readlink(s), t)
            elif st.st_nlink > 1 and (st.st_dev, st.st_ino) in links:
                os.link(links[(st.st_dev, st.st_ino)], t)
            else:
                shutil.copy2(s, t, follow_symlinks=False)
                links[(st.st_dev, st.st_ino)] = t
    shutil.rmtree(src)


def stage_trees(paths: BuildPaths, artifacts_dir: Path) -> None:
    """Split the world and kernel stages into ``artifacts/<kind>`` (see :func:`artifact_split`).

    Subtrees are moved (renamed) out of the stage, so the result root holds
    the only copy; ``artifacts_dir`` must not exist yet or be empty.
    """
    stages = {"world": Path(paths.stage_world), "kernel": Path(paths.stage_kernel)}
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    from fruix_core.promotion.metalog import stage_metalogs

    stage_metalogs(paths, artifacts_dir.parent)  # METALOGs go to <result root>/metalog
    rules = artifact_split()
    # Cut the sub-artifacts (headers, bootloader) out first, then move what is left.
    for rule in sorted(rules, key=lambda r: r.subtree == ""):
        stage = stages[rule.stage]
        dest = artifacts_dir / rule.kind
        if rule.subtree:
            src = stage / rule.subtree
            if not src.exists():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            _move_tree(src, dest / rule.subtree)
        else:
            if not stage.exists():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            _move_tree(stage, dest)
            for excluded in rule.exclude:
                # Empty parents (usr/ after usr/include left) stay: FreeBSD has them too.
                leftover = dest / excluded
                if leftover.is_dir() and not any(leftover.iterdir()):
                    leftover.rmdir()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def key_file_digests(artifact_dir: Path, kind: str) -> tuple[tuple[str, str], ...]:
    """``((relative path, sha256 hex), ...)`` of the kind's key files that exist."""
    out = []
    for rel in KEY_FILES.get(kind, ()):
        path = artifact_dir / rel
        if path.is_file() and not path.is_symlink():
            out.append((rel, _sha256(path)))
    return tuple(out)


def tree_size(path: Path) -> int:
    """Bytes of regular files under ``path`` (hard links counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            if not os.path.islink(os.path.join(dirpath, name)):
                total += st.st_size
    return total


def staged_artifacts(result_root: Path, kinds: Iterable[str] = ARTIFACT_KINDS) -> StagedArtifacts:
    """Describe ``<result_root>/artifacts`` as :class:`StagedArtifacts` (digests, sizes)."""
    kinds = tuple(kinds)
    base = result_root / "artifacts"
    return StagedArtifacts(
        result_root=str(result_root), kinds=kinds,
        key_files={k: key_file_digests(base / k, k) for k in kinds},
        sizes={k: tree_size(base / k) for k in kinds},
    )


# -- descriptions ----------------------------------------------------------------------


def build_promotion(request: BuildRequest, env: PreparedEnv, staged: StagedArtifacts,
                    executor_version: str | None = None) -> Promotion:
    """The promotion description every executor emits for a finished run.

    The executor's name and version are the core's (``request.executor`` and
    ``request.executor_version``: the entry point and its distribution); the
    core refuses a ``promotion.scm`` naming others.
    """
    return Promotion(
        executor=request.executor,
        executor_version=request.executor_version if executor_version is None
        else executor_version,
        run_id=request.run_id,
        guest_host_name=env.host_name,
        base=request.base,
        source=env.source,
        policy=BuildPolicy(phases=tuple(p.name for p in request.phases),
                           jobs=env.jobs or request.jobs,
                           environment_policy=request.environment_policy, make=request.make,
                           make_configuration=make_configuration_policy(
                               request.make_configuration)),
        artifacts=tuple(ArtifactEntry(kind=k, path=f"artifacts/{k}", files=staged.key_files[k])
                        for k in staged.kinds),
        closure_path=env.closure_path,
        development_profile_path=env.development_profile_path,
    )


def build_metadata(request: BuildRequest, env: PreparedEnv, staged: StagedArtifacts | None,
                   executor_version: str | None = None) -> dict[str, object]:
    """The ``metadata`` key=value lines for a run (partial while it runs)."""
    version = request.executor_version if executor_version is None else executor_version
    values: dict[str, object] = {
        "run_id": request.run_id,
        "executor": request.executor,
        "executor_version": version,
        "build_jobs": env.jobs or request.jobs,
        "make": request.make,
        "base_name": request.base.name,
        "base_version": request.base.version,
        "base_arch": request.base.arch,
        "kernconf": request.base.kernconf,
        "source_store": env.source.path,
        "source_signature": env.source.signature,
        "build_root": env.build_root,
        "result_root": env.result_root,
        "host_name": env.host_name,
        "phases": ",".join(p.name for p in request.phases),
    }
    values.update(policy_description())
    for variable, pinned in make_configuration_policy(request.make_configuration):
        values[f"pinned_{variable.strip('_').lower()}"] = pinned
    # The seed helper's keys, next to ours.
    values["helper_version"] = version
    values["status_value"] = "ok" if staged is not None else "running"
    values["latest_link"] = posixpath.join(posixpath.dirname(env.result_root), "latest")
    values["latest_target"] = request.run_id
    if staged is not None:
        values["result_root_size"] = sum(staged.sizes.values())
        if os.path.isdir(env.build_root):  # only where the build root is on this machine
            values["build_root_size"] = tree_size(Path(env.build_root))
        for kind in staged.kinds:
            if kind in staged.sizes:
                values[f"size_{kind}"] = staged.sizes[kind]
            for rel, digest in staged.key_files.get(kind, ()):
                values[f"sha256_{kind}_{rel.replace('/', '_')}"] = digest
    return values
