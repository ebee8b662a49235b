"""Import of a result root over SSH: fruix vs OpenSSH tar pipe vs rsync vs per-file SFTP.

Side by side, in one run, against the same real OpenSSH sshd (the test kit's),
on loopback or on a shaped link:

* ``fruix``: :func:`fruix_core.transport.tarstream.fetch_tree` (connect, one
  tar stream, safe extraction, digest verification, atomic rename);
  ``fruix-zstd`` the same with ``compression="zstd"``;
* ``openssh-tar``: ``ssh HOST 'tar -C ROOT -cf - .' | tar -xf - -C DEST``
  (``openssh-tar-zstd``: ``tar --zstd`` on both ends);
* ``rsync``: ``rsync -a -e ssh HOST:ROOT/ DEST/``;
* ``sftp-per-file``: paramiko SFTP, one ``get`` per file (a naive importer).

Pairs, not a league: fruix is compared with each other method in its own
rounds, A and B alternating (A B, then B A, ...), each run into a fresh
directory; deleting the previous import and ``sync`` happen between runs,
untimed. Each pair's ratio is the ratio of its two medians. The machine is
shared with other work, so absolute seconds move between runs; ratios from
paired rounds are what to read. Host-side CPU time (this process and its
children: ssh, tar, rsync; not sshd's side) is recorded too.

The tree is the promotion benchmark's FreeBSD-shaped result root
(``benchmarks/promotion/generate.py``) at ``--scale`` (1.0 = 534 MiB, 31,090
files; its contents are random bytes, which zstd cannot shrink).
``--content host`` refills every file but the three key files with slices of
this machine's own ``/usr`` (ELF programs, libraries, compressed manual
pages: what a FreeBSD world is made of) for a realistic compression ratio.

``--link RATE`` (e.g. ``100mbit``, ``1gbit``) runs the whole comparison in a
private network namespace whose loopback is shaped with ``tc`` (token bucket);
it needs root and touches no other interface.

Usage::

    python benchmarks/ssh_import/bench.py [--scale 1.0] [--repeat 3] [--sftp-repeat 1]
        [--methods fruix,openssh-tar,rsync,sftp-per-file] [--content generated|host]
        [--link RATE] [--json FILE] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[2]))
sys.path.insert(0, str(HERE.parents[1] / "promotion"))

from generate import generate  # noqa: E402

from fruix_core.promotion.nar import tree_signature  # noqa: E402
from fruix_core.testkit.sshd import SshServer  # noqa: E402
from fruix_core.transport.ssh import connect  # noqa: E402
from fruix_core.transport.tarstream import fetch_tree, verify_result_root  # noqa: E402

MB = 1 << 20
KEY_FILES = ("artifacts/world/bin/sh", "artifacts/kernel/boot/kernel/kernel",
             "artifacts/bootloader/boot/loader")


def tree_bytes(root: Path) -> tuple[int, int]:
    """(regular-file bytes with hard links counted once, regular files) under ``root``."""
    total = files = 0
    seen: set[int] = set()
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                files += 1
                if st.st_ino not in seen:
                    seen.add(st.st_ino)
                    total += st.st_size
    return total, files


def host_pool(limit: int) -> bytes:
    """Up to ``limit`` bytes of this machine's real programs, libraries and manuals."""
    parts: list[bytes] = []
    size = 0
    for top in ("/usr/lib/x86_64-linux-gnu", "/usr/bin", "/usr/lib", "/usr/share/man"):
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                try:
                    if not stat.S_ISREG(os.lstat(path).st_mode):
                        continue
                    with open(path, "rb") as handle:
                        data = handle.read()
                except OSError:
                    continue
                parts.append(data)
                size += len(data)
                if size >= limit:
                    return b"".join(parts)[:limit]
    return b"".join(parts)


def refill_with_host_content(root: Path) -> None:
    """Rewrite every artifact file but the key files with slices of real host files."""
    pool = host_pool(256 * MB)
    offset = 0
    seen: set[int] = set()
    for dirpath, _dirnames, filenames in sorted(os.walk(root / "artifacts")):
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if not stat.S_ISREG(st.st_mode) or rel in KEY_FILES or st.st_ino in seen:
                continue
            seen.add(st.st_ino)
            size = st.st_size
            if offset + size > len(pool):
                offset = 0
            data = pool[offset:offset + size]
            while len(data) < size:
                data += pool[:size - len(data)]
            offset += size
            mode = stat.S_IMODE(st.st_mode)
            os.chmod(path, 0o600)
            path.write_bytes(data)
            os.chmod(path, mode)


# -- methods -------------------------------------------------------------------------------


def run_fruix(server: SshServer, source: Path, dest: Path, compression: str = "none") -> None:
    with connect(server.guest()) as session:
        fetch_tree(session, str(source), dest, verify=verify_result_root, progress=False,
                   compression=compression)


def run_openssh(server: SshServer, source: Path, dest: Path, zstd: bool = False) -> None:
    dest.mkdir()
    flag = ["--zstd"] if zstd else []
    remote = shlex.join(["tar", *flag, "-C", str(source), "-cf", "-", "."])
    ssh = shlex.join([*server.ssh_command(), remote])
    local = shlex.join(["tar", *flag, "-xf", "-", "-C", str(dest)])
    subprocess.run(f"{ssh} | {local}", shell=True, check=True)


def run_rsync(server: SshServer, source: Path, dest: Path) -> None:
    *ssh, host = server.ssh_command()
    subprocess.run(["rsync", "-a", "-e", shlex.join(ssh), f"{host}:{source}/", f"{dest}/"],
                   check=True)


def run_sftp(server: SshServer, source: Path, dest: Path) -> None:
    with connect(server.guest()) as session:
        sftp = session.client.open_sftp()
        try:
            _sftp_copy(sftp, str(source), dest)
        finally:
            sftp.close()


def _sftp_copy(sftp, remote: str, local: Path) -> None:  # type: ignore[no-untyped-def]
    local.mkdir()
    for attr in sftp.listdir_attr(remote):
        child = f"{remote}/{attr.filename}"
        target = local / attr.filename
        mode = attr.st_mode or 0
        if stat.S_ISDIR(mode):
            _sftp_copy(sftp, child, target)
        elif stat.S_ISLNK(mode):
            os.symlink(sftp.readlink(child), target)
        else:
            sftp.get(child, str(target))
            os.chmod(target, stat.S_IMODE(mode))


METHODS: dict[str, Callable[[SshServer, Path, Path], None]] = {
    "fruix": run_fruix,
    "fruix-zstd": lambda s, src, d: run_fruix(s, src, d, "zstd"),
    "openssh-tar": run_openssh,
    "openssh-tar-zstd": lambda s, src, d: run_openssh(s, src, d, zstd=True),
    "rsync": run_rsync,
    "sftp-per-file": run_sftp,
}
TOOLS = {"openssh-tar": "ssh", "openssh-tar-zstd": "zstd", "rsync": "rsync"}


# -- timing --------------------------------------------------------------------------------


def rm(path: Path) -> None:
    if path.exists():
        for dirpath, dirnames, _files in os.walk(path):
            for name in dirnames:
                full = os.path.join(dirpath, name)
                if not os.path.islink(full):
                    os.chmod(full, 0o755)
        shutil.rmtree(path)


def cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def measure(name: str, server: SshServer, source: Path, dest: Path, expected: str | None,
            ) -> tuple[float, float]:
    """(wall seconds, host CPU seconds) of one import into a fresh ``dest``."""
    rm(dest)
    os.sync()  # the previous run's deletions and writes settle before timing
    cpu_before, started = cpu(), time.perf_counter()
    METHODS[name](server, source, dest)
    wall, used = time.perf_counter() - started, cpu() - cpu_before
    if expected is not None and tree_signature(dest) != expected:
        raise SystemExit(f"{name}: imported tree differs from the source")
    rm(dest)
    os.sync()
    return wall, used


def time_call(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def shaped(args: argparse.Namespace) -> int:
    """Run this benchmark again inside a private netns whose loopback is shaped."""
    namespace = f"fruix-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        run = ["ip", "netns", "exec", namespace]
        subprocess.run([*run, "ip", "link", "set", "lo", "up"], check=True)
        subprocess.run([*run, "tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate",
                        args.link, "burst", "1mb", "latency", "50ms"], check=True)
        argv = [a for a in sys.argv[1:]]
        return subprocess.run([*run, sys.executable, str(HERE), *argv, "--inside-link"],
                              check=False).returncode
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3, help="rounds per pair")
    parser.add_argument("--sftp-repeat", type=int, default=1, help="rounds of the SFTP pair")
    parser.add_argument("--methods", default="fruix,openssh-tar,rsync,sftp-per-file")
    parser.add_argument("--baseline", default="fruix", help="the A of every pair")
    parser.add_argument("--content", choices=("generated", "host"), default="generated")
    parser.add_argument("--link", default=None, help="shape loopback to RATE (tc), in a netns")
    parser.add_argument("--inside-link", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--calls", type=int, default=0,
                        help="also time N commands over the open session vs `ssh HOST true`")
    args = parser.parse_args()
    if args.link and not args.inside_link:
        raise SystemExit(shaped(args))

    methods = args.methods.split(",")
    for name in methods:
        if name not in METHODS:
            parser.error(f"unknown method {name!r}; known: {', '.join(METHODS)}")
        if name in TOOLS and shutil.which(TOOLS[name]) is None:
            parser.error(f"{name} needs {TOOLS[name]} installed")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fruix-ssh-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / f"result-root-{args.scale:g}-{args.content}"
    if not (source / "status").exists():
        rm(source)
        print(f"generating result root at scale {args.scale:g} ...", flush=True)
        generate(source, scale=args.scale)
        if args.content == "host":
            refill_with_host_content(source)
    size, files = tree_bytes(source)
    expected = tree_signature(source)
    packed = len(subprocess.run(f"tar -C {shlex.quote(str(source))} -cf - . | zstd -3 -c",
                                shell=True, capture_output=True, check=True).stdout)
    print(f"tree: {size / MB:.1f} MiB in {files} files; zstd -3 ratio "
          f"{size / packed:.2f}", flush=True)

    base = args.baseline
    others = [m for m in methods if m != base]
    pairs: dict[str, dict[str, list[tuple[float, float]]]] = {}
    load_before = os.getloadavg()
    with SshServer(workdir / "sshd") as server:
        with connect(server.guest()) as session:
            cipher = session.transport.remote_cipher
        checked: set[str] = set()
        for other in others:
            rounds = args.sftp_repeat if other == "sftp-per-file" else args.repeat
            samples: dict[str, list[tuple[float, float]]] = {base: [], other: []}
            for round_ in range(rounds):
                order = (base, other) if round_ % 2 == 0 else (other, base)
                for name in order:
                    dest = workdir / f"dest-{name}"
                    wall, used = measure(name, server, source, dest,
                                         expected if name not in checked else None)
                    checked.add(name)
                    samples[name].append((wall, used))
                    print(f"  {base} vs {other}, round {round_ + 1}: {name:16s} "
                          f"{wall:7.2f} s  (host CPU {used:6.2f} s)", flush=True)
            pairs[other] = samples
        if args.calls:
            env = {"PATH": "/bin:/usr/bin"}
            with connect(server.guest()) as session:
                session.run(["true"], env=env)
                calls = [time_call(lambda: session.run(["true"], env=env))
                         for _ in range(args.calls)]
            ssh_calls = [time_call(lambda: subprocess.run([*server.ssh_command(), "true"],
                                                          check=True))
                         for _ in range(args.calls)]
            print(f"per-phase overhead: {statistics.median(calls) * 1000:.1f} ms over the "
                  f"open session vs {statistics.median(ssh_calls) * 1000:.1f} ms for "
                  f"`ssh HOST true` (medians of {args.calls})", flush=True)
    load_after = os.getloadavg()

    def med(values: list[tuple[float, float]], i: int) -> float:
        return statistics.median(v[i] for v in values)

    machine = (f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
               f"{platform.python_version()}, {platform.system()} {platform.release()}, "
               f"{subprocess.run(['ssh', '-V'], capture_output=True, text=True).stderr.strip()}"
               f", cipher {cipher}; load average {load_before[0]:.1f} before, "
               f"{load_after[0]:.1f} after")
    link = f"loopback shaped to {args.link} (tc tbf, own netns)" if args.link else "loopback"
    print(f"\nMachine: {machine}\nLink: {link}\nTree: scale {args.scale:g} "
          f"({args.content} content), {size / MB:.1f} MiB in {files} files\n")
    print(f"| {base} vs | rounds | {base} s | other s | time ratio {base}/other "
          f"| host CPU {base} s | host CPU other s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    report = []
    for other, samples in pairs.items():
        a, b = samples[base], samples[other]
        ratio = med(a, 0) / med(b, 0)
        print(f"| {other} | {len(a)} | {med(a, 0):.2f} | {med(b, 0):.2f} | **{ratio:.2f}x** "
              f"| {med(a, 1):.2f} | {med(b, 1):.2f} |")
        report.append({"other": other, "rounds": len(a), "base_seconds": [x[0] for x in a],
                       "other_seconds": [x[0] for x in b], "base_cpu": [x[1] for x in a],
                       "other_cpu": [x[1] for x in b], "ratio": ratio})
    if args.json:
        args.json.write_text(json.dumps({
            "machine": machine, "link": link, "scale": args.scale, "content": args.content,
            "bytes": size, "files": files, "zstd_ratio": size / packed, "baseline": base,
            "pairs": report}, indent=2) + "\n", encoding="utf-8")
    if args.workdir is None:
        rm(workdir)


if __name__ == "__main__":
    main()
