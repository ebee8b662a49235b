"""Import of a result root from a loopback sshd: fruix vs OpenSSH tar pipe vs per-file SFTP.

Side by side, in one run, against the same real OpenSSH sshd (the test kit's):

* ``fruix``: :func:`fruix_core.transport.tarstream.fetch_tree` (connect, one
  tar stream, safe extraction, digest verification, atomic rename);
* ``openssh-tar``: ``ssh HOST tar -C ROOT -cf - . | tar -xf - -C DEST``;
* ``sftp-per-file``: paramiko SFTP, one ``get`` per file (what a naive
  importer does).

The tree is the promotion benchmark's FreeBSD-shaped result root
(``benchmarks/promotion/generate.py``), at ``--scale`` (1.0 = ~550 MB,
~35,000 entries). Each method runs ``--repeat`` times, interleaved, into a
fresh directory; the median time counts. Then the per-phase orchestration
overhead: one command over the open fruix session vs ``ssh HOST CMD`` (new connection each time, as
scripts do).

Usage::

    python benchmarks/ssh_import/bench.py [--scale 0.25] [--repeat 3] [--workdir DIR]
        [--markdown benchmarks/ssh_import/RESULTS.md]
"""

from __future__ import annotations

import argparse
import os
import platform
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


def tree_bytes(root: Path) -> tuple[int, int]:
    """(regular-file bytes with hard links counted once, entries) under ``root``."""
    total = entries = 0
    seen: set[int] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        entries += len(dirnames) + len(filenames)
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode) and st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_size
    return total, entries


def run_fruix(server: SshServer, source: Path, dest: Path) -> None:
    with connect(server.guest()) as session:
        fetch_tree(session, str(source), dest, verify=verify_result_root, progress=False)


def run_openssh(server: SshServer, source: Path, dest: Path) -> None:
    dest.mkdir()
    remote = shlex.join(["tar", "-C", str(source), "-cf", "-", "."])
    ssh = shlex.join([*server.ssh_command(), remote])
    subprocess.run(f"{ssh} | tar -xf - -C {shlex.quote(str(dest))}", shell=True, check=True)


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


def time_it(action: Callable[[], None]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def rm(path: Path) -> None:
    if path.exists():
        for dirpath, dirnames, _files in os.walk(path):
            for name in dirnames:
                full = os.path.join(dirpath, name)
                if not os.path.islink(full):
                    os.chmod(full, 0o755)
        shutil.rmtree(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.25)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20, help="commands for the overhead test")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--dest-dir", type=Path, default=None,
                        help="where imports are written (default: the workdir)")
    parser.add_argument("--no-sftp", action="store_true")
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fruix-ssh-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / f"result-root-{args.scale:g}"
    if not (source / "status").exists():
        rm(source)
        print(f"generating result root at scale {args.scale:g} ...", flush=True)
        generate(source, scale=args.scale)
    size, entries = tree_bytes(source)
    expected = tree_signature(source)
    print(f"tree: {size / MB:.1f} MiB in {entries} entries", flush=True)

    methods: dict[str, Callable[[SshServer, Path, Path], None]] = {
        "fruix": run_fruix, "openssh-tar": run_openssh}
    if not args.no_sftp:
        methods["sftp-per-file"] = run_sftp
    samples: dict[str, list[float]] = {name: [] for name in methods}
    with SshServer(workdir / "sshd") as server:
        for round_ in range(args.repeat):
            for name, method in methods.items():
                if name == "sftp-per-file" and round_ > 0 and max(samples[name]) > 60:
                    continue  # one slow round is enough
                dest = (args.dest_dir or workdir) / f"dest-{name}"
                rm(dest)
                os.sync()  # let the previous round's deletions settle before timing
                seconds = time_it(lambda m=method, d=dest: m(server, source, d))
                if round_ == 0 and tree_signature(dest) != expected:
                    raise SystemExit(f"{name}: imported tree differs from the source")
                samples[name].append(seconds)
                print(f"  {name:14s} round {round_ + 1}: {seconds:7.3f} s "
                      f"({size / MB / seconds:7.1f} MiB/s)", flush=True)
                rm(dest)
                os.sync()

        with connect(server.guest()) as session:
            env = {"PATH": "/bin:/usr/bin"}
            session.run(["true"], env=env)
            fruix_call = statistics.median(time_it(lambda: session.run(["true"], env=env))
                                           for _ in range(args.calls))
        ssh_call = statistics.median(time_it(lambda: subprocess.run(
            [*server.ssh_command(), "true"], check=True)) for _ in range(args.calls))
    # Medians, as every benchmark of the project reports.
    best = {name: statistics.median(values) for name, values in samples.items() if values}

    rate = {name: size / MB / seconds for name, seconds in best.items()}
    lines = [
        "# SSH import benchmark",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, {platform.system()} {platform.release()}; "
        f"OpenSSH sshd on loopback (test kit).",
        f"Tree: promotion benchmark result root at scale {args.scale:g}: "
        f"{size / MB:.1f} MiB in {entries} entries. Medians of {args.repeat} interleaved "
        "rounds (SFTP: the rounds that fit in a minute).",
        "",
        "| method | seconds | MiB/s | fruix speed-up |",
        "|---|---:|---:|---:|",
    ]
    for name, seconds in best.items():
        lines.append(f"| {name} | {seconds:.3f} | {rate[name]:.1f} | "
                     f"{seconds / best['fruix']:.2f}x |")
    lines += [
        "",
        f"- fruix vs OpenSSH tar pipe: **{rate['fruix'] / rate['openssh-tar']:.2f}x** "
        "throughput (target >= 1.0x).",
    ]
    if "sftp-per-file" in rate:
        lines.append(f"- fruix vs per-file SFTP: **{rate['fruix'] / rate['sftp-per-file']:.1f}x**"
                     " throughput (target >= 15x).")
    lines += [
        f"- Orchestration overhead per phase: {fruix_call * 1000:.1f} ms for one command over "
        f"the open session vs {ssh_call * 1000:.1f} ms for `ssh HOST true` "
        f"({ssh_call / fruix_call:.1f}x; medians of {args.calls}).",
        "",
        "fruix's time includes connecting, the host-key check, safe extraction, the digest "
        "verification against promotion.scm and the atomic rename; OpenSSH's includes its "
        "connection and `tar -x`.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")
    if args.workdir is None:
        rm(workdir)


if __name__ == "__main__":
    main()
