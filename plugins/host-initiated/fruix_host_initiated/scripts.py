"""The one-line sh scripts the host runs in the guest, and the parsing of their output.

Each script is plain POSIX sh that works with FreeBSD's base tools and with
the GNU tools of a test machine (``sha256 -q`` or ``sha256sum``; ``ls -iln``
columns are the same on both). They are kept on one line because the remote
wrapper must (see :func:`fruix_core.transport.ssh.remote_command`).
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Iterable

from fruix_core.api import (
    ARTIFACT_KINDS,
    KEY_FILES,
    LAYOUT_RELATIVE_PATH,
    BuildPaths,
    artifact_split,
)

__all__ = [
    "LAYOUT_BEGIN",
    "RC_MARKER",
    "detached_start_script",
    "detached_started_script",
    "detached_stop_script",
    "follow_script",
    "guest_path",
    "parse_probe",
    "parse_staging",
    "probe_script",
    "prepare_script",
    "staging_script",
    "swap_latest_script",
]

LAYOUT_BEGIN = "@@store-layout@@"
LAYOUT_MISSING = "@@store-layout-missing@@"
#: Directories of the development overlay and a file each must hold.
OVERLAY = (("usr/include", None), ("usr/share/mk", "sys.mk"))

_SHA256 = ('sha() { if command -v sha256 >/dev/null 2>&1; then sha256 -q "$1"; '
           'else sha256sum "$1" | cut -d " " -f 1; fi; }')


def guest_path(system_root: str, path: str) -> str:
    """Where the guest's ``path`` is, seen through its system root."""
    if system_root in ("", "/"):
        return path
    return posixpath.join(system_root, path.lstrip("/"))


def _q(value: str) -> str:
    return shlex.quote(value)


def probe_script(system_root: str, make: str, build_path: str) -> str:
    """Report host name, identity, overlay and tools, then the store layout file."""
    parts = ['echo "host=$(uname -n)"', 'echo "home=$HOME"', 'echo "user=$(id -un)"',
             # -j belongs to the guest: FreeBSD's sysctl, else POSIX getconf.
             'echo "ncpu=$(sysctl -n hw.ncpu 2>/dev/null || getconf _NPROCESSORS_ONLN '
             '2>/dev/null || echo 1)"']
    for rel, marker in OVERLAY:
        directory = guest_path(system_root, "/" + rel)
        test = (f"[ -f {_q(posixpath.join(directory, marker))} ]" if marker
                else f'[ -d {_q(directory)} ] && [ -n "$(ls -A {_q(directory)} 2>/dev/null)" ]')
        parts.append(f"if {test}; then echo overlay={rel}; fi")
    for tool in (make.split()[0], "cc"):
        parts.append(f"if PATH={_q(build_path)} command -v {_q(tool)} >/dev/null 2>&1; "
                     f"then echo tool={_q(tool)}; fi")
    layout = guest_path(system_root, "/" + LAYOUT_RELATIVE_PATH)
    parts.append(f"echo {LAYOUT_BEGIN}")
    parts.append(f"if [ -f {_q(layout)} ]; then cat {_q(layout)}; else echo {LAYOUT_MISSING}; fi")
    return "; ".join(parts)


def parse_probe(output: bytes) -> tuple[dict[str, list[str]], bytes | None]:
    """``({key: [values]}, layout bytes or None when the file is missing)``."""
    head, sep, layout = output.partition(LAYOUT_BEGIN.encode() + b"\n")
    facts: dict[str, list[str]] = {}
    for line in head.decode("utf-8", "replace").splitlines():
        key, eq, value = line.partition("=")
        if eq:
            facts.setdefault(key, []).append(value)
    if not sep or layout.strip() == LAYOUT_MISSING.encode():
        return facts, None
    return facts, layout


def prepare_script(source_dir: str, result_root: str, build_root: str, status: str, *,
                   fresh: bool) -> str:
    """Check the source tree, create the result root (status) and the build root."""
    makefile = posixpath.join(source_dir, "Makefile")
    parts = [
        f"if [ ! -r {_q(makefile)} ]; then echo 'source tree has no readable Makefile: '"
        f"{_q(makefile)}; exit 3; fi",
        "set -e",
    ]
    if fresh:
        parts.append(f"rm -rf {_q(build_root)} {_q(result_root)}")
    parts += [
        f"mkdir -p {_q(build_root)} {_q(posixpath.join(result_root, 'logs'))}",
        # Staging renames stage trees into the result root: a copy across file systems
        # (bsdinstall gives /var/tmp its own ZFS dataset) could not delete schg files.
        f"m1=$(df -P {_q(build_root)} | awk 'NR == 2 {{ print $6 }}')",
        f"m2=$(df -P {_q(result_root)} | awk 'NR == 2 {{ print $6 }}')",
        f'if [ "$m1" != "$m2" ]; then echo "build root {build_root} (on $m1) and result '
        f'root {result_root} (on $m2) are on different file systems; staging must be a '
        f'rename"; exit 3; fi',
        f"printf '%s\\n' {_q(status)} > {_q(posixpath.join(result_root, 'status'))}",
    ]
    return "; ".join(parts)


def staging_script(paths: BuildPaths, result_root: str,
                   kinds: Iterable[str] = ARTIFACT_KINDS) -> str:
    """Split the stages into ``artifacts/<kind>`` like :func:`fruix_core.resultroot.stage_trees`,
    then print ``digest <kind> <file> <sha256>`` and ``size <kind> <bytes>`` lines.
    """
    artifacts = posixpath.join(result_root, "artifacts")
    stages = {"world": paths.stage_world, "kernel": paths.stage_kernel}
    parts = ["set -e", _SHA256, f"rm -rf {_q(artifacts)}", f"mkdir -p {_q(artifacts)}"]
    # The stages' METALOGs (-DNO_ROOT installs) go to <result root>/metalog, like
    # fruix_core.promotion.metalog.stage_metalogs.
    metalog_dir = posixpath.join(result_root, "metalog")
    for stage, metalog in (("world", paths.metalog_world), ("kernel", paths.metalog_kernel)):
        target = posixpath.join(metalog_dir, f"{stage}.METALOG")
        parts.append(f"if [ -f {_q(metalog)} ] && [ ! -L {_q(metalog)} ]; then "
                     f"mkdir -p {_q(metalog_dir)}; mv -f {_q(metalog)} {_q(target)}; fi")
    for rule in sorted(artifact_split(), key=lambda r: r.subtree == ""):
        stage = stages[rule.stage]
        dest = posixpath.join(artifacts, rule.kind)
        if rule.subtree:
            src = posixpath.join(stage, rule.subtree)
            target = posixpath.join(dest, rule.subtree)
            parts.append(f"if [ -e {_q(src)} ] || [ -L {_q(src)} ]; then "
                         f"mkdir -p {_q(posixpath.dirname(target))}; mv {_q(src)} {_q(target)}; "
                         f"else mkdir -p {_q(dest)}; fi")
        else:
            parts.append(f"if [ -e {_q(stage)} ]; then mv {_q(stage)} {_q(dest)}; "
                         f"else mkdir -p {_q(dest)}; fi")
            for excluded in rule.exclude:
                leftover = posixpath.join(dest, excluded)
                parts.append(f"if [ -d {_q(leftover)} ] && [ ! -L {_q(leftover)} ]; then "
                             f"rmdir {_q(leftover)} 2>/dev/null || true; fi")
    for kind in kinds:
        dest = posixpath.join(artifacts, kind)
        for rel in KEY_FILES.get(kind, ()):
            path = posixpath.join(dest, rel)
            parts.append(f"if [ -f {_q(path)} ] && [ ! -L {_q(path)} ]; then "
                         f"echo \"digest {kind} {rel} $(sha {_q(path)})\"; fi")
        # Regular-file bytes, hard links counted once (like resultroot.tree_size).
        parts.append(f"echo \"size {kind} $(find {_q(dest)} -type f -exec ls -iln {{}} + "
                     f"| awk 'seen[$1]++ == 0 {{t += $6}} END {{print t + 0}}')\"")
    return "; ".join(parts)


def parse_staging(output: bytes, kinds: Iterable[str] = ARTIFACT_KINDS
                  ) -> tuple[dict[str, tuple[tuple[str, str], ...]], dict[str, int]]:
    """``(key_files, sizes)`` from :func:`staging_script` output, in ``KEY_FILES`` order."""
    digests: dict[tuple[str, str], str] = {}
    sizes: dict[str, int] = {}
    for line in output.decode("utf-8", "replace").splitlines():
        words = line.split()
        if len(words) == 4 and words[0] == "digest" and len(words[3]) == 64:
            digests[(words[1], words[2])] = words[3].lower()
        elif len(words) == 3 and words[0] == "size" and words[2].isdigit():
            sizes[words[1]] = int(words[2])
    key_files = {kind: tuple((rel, digests[(kind, rel)]) for rel in KEY_FILES.get(kind, ())
                             if (kind, rel) in digests) for kind in kinds}
    return key_files, sizes


def swap_latest_script(results_dir: str, run_id: str) -> str:
    """Point ``<results>/latest`` at ``run_id`` atomically (new link, then rename)."""
    tmp = posixpath.join(results_dir, ".latest.tmp-fruix")
    latest = posixpath.join(results_dir, "latest")
    # mv must replace the link itself, not move into the directory it points to.
    return (f"rm -f {_q(tmp)}; ln -s {_q(run_id)} {_q(tmp)}; "
            f'case "$(uname)" in *BSD|DragonFly|Darwin) mv -hf {_q(tmp)} {_q(latest)} ;; '
            f"*) mv -Tf {_q(tmp)} {_q(latest)} ;; esac")


# -- detached phases: a build that outlives the SSH connection ------------------------
#
# A phase can run detached from the session that started it: in its own session and
# process group (FreeBSD's daemon(8), else setsid), stdin from /dev/null, output
# appended to <dir>/<name>.log, its pid in <name>.pid and, when it ends, its exit
# status in <name>.rc (written to a temporary name, then renamed). The host follows
# the log by byte offset (follow_script) and can reconnect after a dropped connection
# and go on from the bytes it has; detached_stop_script stops the process group.


#: The line ``follow_script`` ends with once the phase has ended: ``@@fruix-rc@@ <status>``.
RC_MARKER = "@@fruix-rc@@"


def _detached_files(run_dir: str, name: str) -> tuple[str, str, str]:
    base = posixpath.join(run_dir, name)
    return f"{base}.log", f"{base}.pid", f"{base}.rc"


def detached_start_script(command: str, run_dir: str, name: str) -> str:
    """Start the one-line sh ``command`` detached; prints ``pid <N>``.

    :param command: a POSIX sh script (one line), e.g. from
        :func:`fruix_core.transport.ssh.shell_script`.
    """
    log, pid, rc = _detached_files(run_dir, name)
    inner = (f"echo $$ > {_q(pid)}; ( {command} ) >> {_q(log)} 2>&1 < /dev/null; "
             f"echo $? > {_q(rc + '.tmp')}; mv -f {_q(rc + '.tmp')} {_q(rc)}")
    return (f"mkdir -p {_q(run_dir)} && rm -f {_q(rc)} {_q(pid)} && : > {_q(log)} && "
            "if command -v daemon >/dev/null 2>&1; then "
            f"daemon -f sh -c {_q(inner)}; "
            f"else setsid sh -c {_q(inner)} < /dev/null > /dev/null 2>&1 & fi; "
            f"n=0; while [ ! -s {_q(pid)} ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done; "
            f'echo "pid $(cat {_q(pid)})"')


def detached_started_script(run_dir: str, name: str) -> str:
    """Print ``started`` when a detached phase ``name`` was started under ``run_dir``."""
    _log, pid, _rc = _detached_files(run_dir, name)
    return f"if [ -s {_q(pid)} ]; then echo started; else echo absent; fi"


def follow_script(run_dir: str, name: str, offset: int) -> str:
    """Print the log from byte ``offset`` as it grows; return once the exit status exists.

    The log is only appended to, so a host that counted the bytes it received
    reconnects with that count and loses nothing; the few bytes written after
    the last poll come with :func:`follow_script` run again once ``.rc`` exists
    (it then prints the rest and ``@@fruix-rc@@ <status>`` on a line of its own).
    """
    log, pid, rc = _detached_files(run_dir, name)
    start = int(offset) + 1
    return (f"if [ -f {_q(rc)} ]; then tail -c +{start} {_q(log)}; "
            f'echo; echo "{RC_MARKER} $(cat {_q(rc)})"; exit 0; fi; '
            # $$ in the watcher is this shell's pid, which exec makes tail's (and csh
            # would read the '!' of $! as a history event). A phase whose process is
            # gone without a status (the guest killed it) ends with status 255.
            f"( while [ ! -f {_q(rc)} ] && kill -0 $$ 2>/dev/null; do "
            f"p=$(cat {_q(pid)} 2>/dev/null); "
            f'if [ -n "$p" ]; then kill -0 "$p" 2>/dev/null || '
            f"{{ [ -f {_q(rc)} ] || echo 255 > {_q(rc)}; }}; fi; sleep 0.2; done; "
            "kill $$ 2>/dev/null ) & "
            f"exec tail -c +{start} -f {_q(log)}")


def detached_stop_script(run_dir: str, name: str, signal_name: str = "TERM") -> str:
    """Stop a detached phase's whole process group; its status becomes 128 + signal."""
    _log, pid, rc = _detached_files(run_dir, name)
    number = {"TERM": 15, "KILL": 9, "INT": 2}[signal_name]
    return (f"p=$(cat {_q(pid)} 2>/dev/null); "
            f'if [ -n "$p" ]; then g=$(ps -o pgid= -p "$p" | tr -d " "); '
            f'if [ -n "$g" ]; then kill -{signal_name} -"$g" 2>/dev/null; fi; fi; '
            f"if [ ! -f {_q(rc)} ]; then echo {128 + number} > {_q(rc)}; fi")
